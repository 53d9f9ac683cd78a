"""Configuration dataclasses and enums of the service; validated on construction, convertible to dict and JSON."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import TypeVar

from .. import chat, limits, placement, validate
from ..errors import InvalidArgumentError
from ..jsontypes import JSON, JSONObject
from .errors import InvalidConfigError

T = TypeVar("T", bound="_Config")


class BackendType(str, enum.Enum):
    LLAMA_CPP = "llama_cpp"


class ModelType(str, enum.Enum):
    TEXT_TO_TEXT = "text_to_text"
    TEXT_EMBEDDING = "text_embedding"


def _fail(cls: type, field: str, why: str, value: object) -> InvalidConfigError:
    return InvalidConfigError(f"{cls.__name__}.{field}: {why} (got {value!r})", field=f"{cls.__name__}.{field}")


class _Config:
    """dict/JSON conversion shared by the configuration classes."""

    def to_dict(self) -> JSONObject:
        out: JSONObject = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Config) else list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls: type[T], data: JSONObject) -> T:
        if not isinstance(data, dict):
            raise InvalidConfigError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(map(repr, set(data) - set(names)))
        if unknown:
            raise InvalidConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, object] = dict(data)
        for name, value in data.items():
            nested = _NESTED.get((cls.__name__, name))
            if nested is not None and isinstance(value, dict):
                kwargs[name] = nested.from_dict(value)
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        if not isinstance(text, (str, bytes, bytearray)):
            raise InvalidConfigError(f"{cls.__name__}: expected JSON text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer too long to convert, deep nesting
            raise InvalidConfigError(f"{cls.__name__}: invalid JSON: {exc}") from None
        return cls.from_dict(data)

    def _fail(self, name: str, requirement: str, value: object) -> InvalidConfigError:
        return _fail(type(self), name, f"must be {requirement}", value)

    def _int(self, name: str, lo: int, hi: int | None = None, allow_none: bool = False) -> None:
        v = getattr(self, name)
        if v is None and allow_none:
            return
        validate.as_int(name, v, lo, hi, exact=True, fail=self._fail)

    def _float(self, name: str, lo: float, hi: float, lo_open: bool = False) -> None:
        validate.as_real(name, getattr(self, name), lo, hi, lo_open=lo_open, exact=True, fail=self._fail)

    def _bool(self, name: str) -> None:
        validate.as_bool(name, getattr(self, name), fail=self._fail)


NUMA = limits.NUMA_STRATEGIES


@dataclasses.dataclass(frozen=True)
class LlamaCppSpecificConfig(_Config):
    """llama.cpp-only settings: memory mapping (None: unless ``huge_pages``), page locking, huge pages for the
    weights (Linux; faster tokens, see ``Model.load``), NUMA strategy (applied once per process)."""

    use_mmap: bool | None = None
    use_mlock: bool = False
    huge_pages: bool = False
    numa_strategy: str | None = None

    def __post_init__(self) -> None:
        validate.as_optional_bool("use_mmap", self.use_mmap, fail=self._fail)
        self._bool("use_mlock")
        self._bool("huge_pages")
        if self.huge_pages and self.use_mmap:
            raise _fail(type(self), "huge_pages", limits.HUGE_PAGES_WITH_MMAP, self.huge_pages)
        if self.numa_strategy is not None:
            validate.one_of("numa_strategy", self.numa_strategy, NUMA, fold_case=True, fail=self._fail)


@dataclasses.dataclass(frozen=True)
class LocalBackendConfig(_Config):
    """How the local backend runs: CPU threads (None: all available); GPU offload of ``gpu_layers`` (-1: all) when
    ``use_gpu`` and the build has a GPU backend that finds a device (a CPU build ignores it).

    ``rpc_servers``: ``"host:port"`` of ``llamacffi rpc-server`` processes; their devices take the offloaded layers
    (``gpu_layers`` of them, the rest stay on this machine's CPU), shared by ``tensor_split`` (one share per device)
    or by free memory. A text model with RPC servers runs in a worker process of its own (a server that dies ends
    that process's requests with an error, not this process); ``rpc_timeout``: seconds it may stay silent with
    requests under way, or while loading, before it is presumed stuck and stopped."""

    threads: int | None = None
    use_gpu: bool = True
    gpu_layers: int = -1
    llama_cpp: LlamaCppSpecificConfig = dataclasses.field(default_factory=LlamaCppSpecificConfig)
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] | None = None
    rpc_timeout: float = limits.RPC_STALL_TIMEOUT

    def __post_init__(self) -> None:
        self._int("threads", 1, limits.MAX_THREADS, allow_none=True)
        self._bool("use_gpu")
        self._int("gpu_layers", -1, limits.MAX_GPU_LAYERS)
        for name in ("rpc_servers", "tensor_split"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        try:
            placement.check(tensor_split=self.tensor_split, rpc_servers=self.rpc_servers)
        except ValueError as exc:
            field = "tensor_split" if "tensor_split" in str(exc) else "rpc_servers"
            raise _fail(type(self), field, str(exc), getattr(self, field)) from None
        self._float("rpc_timeout", 0.0, 1e6, lo_open=True)
        if not isinstance(self.llama_cpp, LlamaCppSpecificConfig):
            raise _fail(type(self), "llama_cpp", "must be a LlamaCppSpecificConfig", self.llama_cpp)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
    """Per-model settings. ``context_size``: tokens per request (prompt + output); ``parallel``: requests decoded
    together; ``max_queue``: requests that may wait beyond those. A context above what the model was trained for
    warns, or raises with ``strict_context``. ``truncate_prompt`` keeps the end of a prompt that does not fit (an
    embedding model keeps the start of a text, and its end-of-text token).
    ``chat_template``: a llama.cpp template name (``"chatml"``, ``"gemma"``, ...) or template text, instead of the
    model's own; ``chat_template_kwargs``: more variables for a Jinja template, as llama-server's
    (``{"enable_thinking": False}``), which a chat's own override. ``flash_attn``: flash attention on or off; None
    lets llama.cpp choose (on where the backend supports it, as on CPU). ``batch_window``: seconds; requests that
    arrive within it of one another start in one step (the engine waits until none has arrived for that long, at
    most ``limits.BATCH_WINDOW_HOLDS`` windows and never more than a fifth of a recent step, before it admits them),
    so a burst of clients does not wait behind the prompt of the first; 0 admits at once. ``prompt_cache_mib``:
    host memory for prompts the slots let go of (their sequence's memory, restored when a request shares more of it
    than any slot does); 0 keeps none."""

    context_size: int = 2048
    batch_size: int = 512
    parallel: int = 4
    max_queue: int = 1024
    strict_context: bool = False
    truncate_prompt: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, JSON] | None = None
    flash_attn: bool | None = None
    batch_window: float = 0.005
    prompt_cache_mib: int = limits.PROMPT_CACHE_MIB

    def __post_init__(self) -> None:
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template):
            raise _fail(type(self), "chat_template", "must be None or a non-empty str", self.chat_template)
        if self.chat_template is not None and ("\0" in self.chat_template or not _encodable(self.chat_template)):
            raise _fail(
                type(self),
                "chat_template",
                "must be text without NUL characters or lone surrogates",
                self.chat_template,
            )
        if self.chat_template_kwargs is not None:
            try:
                variables = chat.check_variables(self.chat_template_kwargs)
            except InvalidArgumentError as exc:
                raise _fail(type(self), "chat_template_kwargs", str(exc), self.chat_template_kwargs) from None
            object.__setattr__(self, "chat_template_kwargs", variables)  # a copy: later changes to the dict do nothing
        self._int("context_size", limits.CONTEXT_SIZE_MIN, limits.CONTEXT_SIZE_MAX)
        self._int("batch_size", 1, limits.BATCH_SIZE_MAX)
        self._int("parallel", 1, limits.PARALLEL_MAX)
        if self.context_size * self.parallel > limits.MAX_CTX:  # Context's limit on n_ctx, which is their product
            raise _fail(
                type(self),
                "context_size",
                f"times parallel ({self.parallel}) must be at most {limits.MAX_CTX}",
                self.context_size,
            )
        if self.batch_size < self.parallel:  # every step decodes a token of each of up to `parallel` requests
            raise _fail(type(self), "batch_size", f"must be at least parallel ({self.parallel})", self.batch_size)
        self._int("max_queue", 0)
        self._bool("strict_context")
        self._bool("truncate_prompt")
        if self.flash_attn is not None:
            self._bool("flash_attn")
        self._float("batch_window", 0.0, limits.BATCH_WINDOW_MAX)
        self._int("prompt_cache_mib", 0, limits.PROMPT_CACHE_MIB_MAX)


@dataclasses.dataclass(frozen=True)
class GenerationOptions(_Config):
    """One request's options. ``temperature=0`` is greedy. ``raw=True`` completes the prompt text as is; otherwise
    ``system`` and the prompt go through the model's chat template. ``logit_bias``: ``{token_id: bias}`` added to
    the logits before sampling (``-100`` all but bans a token, ``100`` all but forces it). ``grammar`` (GBNF text,
    start rule ``root``) or ``json_schema`` (a dict or JSON text, compiled here by
    :func:`llamacffi.grammar.from_json_schema`; what it cannot enforce raises naming the keyword's pointer)
    constrains the output; at most one of them. ``preserved_tokens``: texts of special tokens that the output
    writes out where the model generates them (llama-server's term: the markers of a chat template's tool calls,
    such as Mistral's ``[TOOL_CALLS]``, which would otherwise render as nothing)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    stop_sequences: tuple[str, ...] = ()
    system: str | None = None
    raw: bool = False
    logit_bias: dict[int, float] | None = dataclasses.field(default=None, hash=False)
    grammar: str | None = None
    json_schema: JSONObject | str | None = dataclasses.field(default=None, hash=False)
    preserved_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._int("max_tokens", 1, limits.MAX_NEW_TOKENS)
        self._float("temperature", 0.0, limits.TEMPERATURE_MAX)
        self._float("top_p", 0.0, 1.0, lo_open=True)
        self._int("top_k", 0)
        self._float("min_p", 0.0, 1.0)
        self._float("repeat_penalty", 0.0, limits.PENALTY_MAX, lo_open=True)
        self._float("frequency_penalty", -limits.PENALTY_MAX, limits.PENALTY_MAX)
        self._float("presence_penalty", -limits.PENALTY_MAX, limits.PENALTY_MAX)
        self._int("penalty_last_n", -1, limits.PENALTY_WINDOW_MAX)
        self._int("seed", 0, limits.SEED_MAX, allow_none=True)
        stops = self.stop_sequences
        if not isinstance(stops, (list, tuple, set, frozenset)) or not all(isinstance(s, str) and s for s in stops):
            raise _fail(type(self), "stop_sequences", "must be a list, tuple or set of non-empty strings", stops)
        object.__setattr__(self, "stop_sequences", tuple(stops))
        kept = self.preserved_tokens
        if (
            not isinstance(kept, (list, tuple, set, frozenset))
            or len(kept) > limits.PRESERVED_TOKENS_MAX
            or not all(isinstance(t, str) and 0 < len(t) <= limits.TOKEN_TEXT_MAX and _encodable(t) for t in kept)
        ):
            raise _fail(
                type(self),
                "preserved_tokens",
                f"must be at most {limits.PRESERVED_TOKENS_MAX} texts of special tokens, in UTF-8",
                kept,
            )
        object.__setattr__(self, "preserved_tokens", tuple(kept))
        if self.system is not None and not isinstance(self.system, str):
            raise _fail(type(self), "system", "must be a str or None", self.system)
        self._bool("raw")
        if self.logit_bias is not None:
            object.__setattr__(self, "logit_bias", _bias(self.logit_bias))
        self._check_constraint()

    def _check_constraint(self) -> None:
        if self.grammar is not None:
            if self.json_schema is not None:
                raise _fail(
                    type(self),
                    "grammar",
                    "and json_schema exclude each other: give one",
                    self.grammar[:80] if isinstance(self.grammar, str) else self.grammar,
                )
            if (
                not isinstance(self.grammar, str)
                or not self.grammar.strip()
                or "\0" in self.grammar
                or not _encodable(self.grammar)
            ):
                raise _fail(
                    type(self), "grammar", "must be non-empty GBNF text, in UTF-8 without NUL characters", self.grammar
                )
        if self.json_schema is not None:
            if not isinstance(self.json_schema, (dict, str)):
                raise _fail(type(self), "json_schema", "must be a dict or JSON text", self.json_schema)
            from ..grammar import SchemaError, from_json_schema

            try:
                from_json_schema(self.json_schema)
            except SchemaError as exc:
                raise InvalidConfigError(
                    f"GenerationOptions.json_schema: {exc}", field="GenerationOptions.json_schema"
                ) from exc

    @property
    def constraint_field(self) -> str | None:
        """The field whose grammar constrains the output, for errors that llama.cpp's grammar raises; None if free."""
        if self.json_schema is not None:
            return "GenerationOptions.json_schema"
        return "GenerationOptions.grammar" if self.grammar is not None else None

    def grammar_text(self) -> str | None:
        """The GBNF text constraining the output: ``grammar``, or ``json_schema`` compiled (cached); None if free."""
        if self.json_schema is not None:
            from ..grammar import from_json_schema

            return from_json_schema(self.json_schema)
        return self.grammar


def _bias(value: object) -> dict[int, float]:
    """``{token_id: bias}`` with int ids >= 0 (decimal strings too, as JSON keys are) and biases in [-100, 100]."""
    if not isinstance(value, dict):
        raise _fail(GenerationOptions, "logit_bias", "must be a dict of token id to bias", value)
    out: dict[int, float] = {}
    for key, bias in value.items():
        token = int(key) if isinstance(key, str) and key.isdecimal() and len(key) < 10 else key
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < 1 << 31:
            raise _fail(GenerationOptions, "logit_bias", "keys must be token ids (ints >= 0)", key)
        if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not -100.0 <= bias <= 100.0:
            raise _fail(
                GenerationOptions, "logit_bias", f"the bias of token {token} must be a number in [-100, 100]", bias
            )
        out[token] = float(bias)
    return out


_NESTED: dict[tuple[str, str], type[_Config]] = {("LocalBackendConfig", "llama_cpp"): LlamaCppSpecificConfig}
