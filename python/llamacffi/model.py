"""Model: a loaded GGUF model, its metadata and its vocabulary."""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from . import chat, gguf, hugepages, log, ownership, placement, rpc
from .backend import devices, ensure_backend, gpu_device_names
from .cbuffer import read_grown
from .errors import InvalidArgumentError, LlamaError, ModelLoadError
from .limits import HUGE_PAGES_WITH_MMAP, MAX_GPU_LAYERS
from .log import capture_problems
from .raw import CData, ffi, lib
from .validate import as_bool, as_int, as_optional_bool
from .vocab import Vocab

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from .embedding import Embeddings, Pooling

ProgressCallback = Callable[[float], "bool | None"]


class _Progress:
    """Payload of the load-progress callback; keeps the exception the user's callback raised. llama.cpp calls it
    before each tensor's data is read, so the first call is where the weight buffers exist but are still unwritten:
    the moment to ask for huge pages."""

    def __init__(self, fn: ProgressCallback | None, huge: hugepages.HugePages | None) -> None:
        self.fn = fn
        self.huge = huge
        self.error: BaseException | None = None
        self.cancelled = False


@ffi.def_extern()  # type: ignore[untyped-decorator]
def llamacffi_progress_callback(progress: float, user_data: CData) -> bool:
    payload: _Progress = ffi.from_handle(user_data)
    try:
        if payload.huge is not None:
            payload.huge.advise()
        if payload.fn is None:
            return True
        keep_going = payload.fn(float(progress))
    except BaseException as exc:  # re-raised by Model.load once llama.cpp has returned
        payload.error = exc
        return False
    if keep_going is False:
        payload.cancelled = True
        return False
    return True


def _free_model(ptr: CData, _lib: CData = lib) -> None:
    # Default argument: keeps the library alive until this runs, even at interpreter shutdown.
    _lib.llama_model_free(ptr)


class Model:
    """A loaded model. Create with :meth:`load`; release with :meth:`close` or ``with``.

    What uses a model keeps it alive (its contexts, a grammar of a NativeSampler, a tokenize call under way):
    closing the model meanwhile defers the release until the last of them lets go. :attr:`owner` is the
    :class:`~llamacffi.ownership.Owner` of its pointer, for a new C object that keeps it (take a lease).
    """

    def __init__(self, ptr: CData, path: Path, vocab_only: bool = False, huge_pages: bool = False) -> None:
        self.owner = ownership.Owner(ptr, _free_model, "Model", "struct llama_model *")
        self.path = path
        self.vocab_only = vocab_only  # loaded without weights: a tokenizer, no Context
        self.huge_pages = huge_pages  # its weights were read into memory that asked for huge pages
        self._huge_ranges: list[hugepages.Range] = []
        self.devices: list[str] | None = None  # the devices it was loaded onto when given (None: llama.cpp's choice)
        self._offloaded = 0
        self._vocab = Vocab(self.owner, lib.llama_model_get_vocab(ptr))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        n_gpu_layers: int = -1,
        use_mmap: bool | None = None,
        use_mlock: bool = False,
        vocab_only: bool = False,
        huge_pages: bool = False,
        progress: ProgressCallback | None = None,
        devices: Sequence[str] | None = None,
        split_mode: str = "layer",
        main_gpu: int = 0,
        tensor_split: Sequence[float] | None = None,
        rpc_servers: Sequence[str] | None = None,
    ) -> Model:
        """Load a GGUF file.

        ``n_gpu_layers``: layers to offload to a GPU backend (-1, the default as in llama.cpp: all of them when the
        build has a GPU backend and finds a device; 0: none). ``use_mmap``: map the file (None: unless
        ``huge_pages``). ``huge_pages``: read the weights kept in CPU memory into memory backed by transparent huge
        pages where the system has them (Linux), which makes each token's pass over them faster (they go to plain
        memory, not to a GPU backend's pinned host buffer); :attr:`huge_page_bytes` tells how much it got.
        ``progress`` is called with the load progress in 0..1; returning ``False`` cancels the load
        (:class:`ModelLoadError`), an exception it raises is re-raised. :attr:`offloaded_layers` tells how many
        layers went to a GPU; the ``llamacffi`` logger says it at INFO level.

        Placement (:mod:`llamacffi.placement`): ``devices`` names the devices to offload to, in order (names as
        :func:`llamacffi.system_info` lists them; default: llama.cpp's choice); ``split_mode`` ``"layer"`` (layers
        across the devices), ``"row"`` (rows too, where the backend can) or ``"none"`` (all on ``main_gpu``, an
        index of the devices); ``tensor_split``: each device's share. ``rpc_servers``: ``"host:port"`` of
        ``llamacffi rpc-server`` processes whose devices join the model's (before the local GPUs unless ``devices``
        orders them); each is checked first and one that is down, busy or of another protocol version is a
        :class:`ModelLoadError` naming it. A server that dies while the model is in use aborts this process
        (llama.cpp's RPC client cannot recover): the service runs such models in a worker process.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be str or os.PathLike, not {type(path).__name__}")
        p = Path(path)
        gguf.check(p, bool(vocab_only))
        n_gpu_layers = as_int("n_gpu_layers", n_gpu_layers, -1, MAX_GPU_LAYERS)
        for name, flag in (("use_mlock", use_mlock), ("vocab_only", vocab_only), ("huge_pages", huge_pages)):
            as_bool(name, flag)
        use_mmap = as_optional_bool("use_mmap", use_mmap)
        if use_mmap is None:
            use_mmap = not huge_pages
        elif huge_pages and use_mmap:
            raise InvalidArgumentError(f"huge_pages {HUGE_PAGES_WITH_MMAP}")
        wanted = placement.check(devices, split_mode, main_gpu, tensor_split, rpc_servers)
        ensure_backend()
        place = None if wanted.default or vocab_only else placement.build(wanted)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = MAX_GPU_LAYERS if n_gpu_layers == -1 else n_gpu_layers
        params.load_mode = {
            (True, False): lib.LLAMA_LOAD_MODE_MMAP,
            (True, True): lib.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (False, False): lib.LLAMA_LOAD_MODE_NONE,
            (False, True): lib.LLAMA_LOAD_MODE_MLOCK,
        }[(bool(use_mmap), bool(use_mlock))]
        params.vocab_only = bool(vocab_only)
        params.no_host = bool(huge_pages)
        if place is not None:
            place.apply(params)
        payload = handle = None
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        huge = hugepages.HugePages() if huge_pages and not vocab_only else None
        if progress is not None or huge is not None:
            payload = _Progress(progress, huge)
            handle = ffi.new_handle(payload)
            params.progress_callback = lib.llamacffi_progress_callback
            params.progress_callback_user_data = handle
        with capture_problems() as problems:
            ptr = lib.llama_model_load_from_file(os.fsencode(p), params)
        if log.take_interrupt():
            if ptr != ffi.NULL:
                lib.llama_model_free(ptr)
            raise KeyboardInterrupt
        if payload is not None and payload.error is not None:
            if ptr != ffi.NULL:
                lib.llama_model_free(ptr)
            raise payload.error
        if ptr == ffi.NULL:
            if payload is not None and payload.cancelled:
                raise ModelLoadError(f"loading {p} was cancelled by the progress callback")
            reason = "; ".join(problems[:2]) or "the file is corrupt, truncated, or of an unsupported architecture"
            raise ModelLoadError(f"llama.cpp could not load {p}: {reason}")
        model = cls(ptr, p, bool(vocab_only), huge is not None)
        if place is not None:
            model.devices = place.device_names
            rpc.note_user(place.servers, model.owner)
        if huge is not None:
            model._huge_ranges = huge.collapse()
        if not vocab_only:
            model._offloaded = _note_offload(model, int(params.n_gpu_layers))
        return model

    # ---- lifetime ---------------------------------------------------------------------------------------------

    @property
    def ptr(self) -> CData:
        """The ``struct llama_model *`` (raises :class:`ClosedError` once closed)."""
        return self.owner.ptr

    @property
    def closed(self) -> bool:
        return self.owner.closed

    @property
    def _ptr(self) -> CData:
        """The pointer while the model is loaded, None once freed (a close waits for the contexts using it)."""
        return self.owner._ptr

    def close(self) -> None:
        """Release the model now, or when the last Context (or other holder) using it is freed. Idempotent."""
        self.owner.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.description
        return f"<llamacffi.Model {self.path.name!r} {state}>"

    # ---- properties -------------------------------------------------------------------------------------------

    @property
    def vocab(self) -> Vocab:
        """The model's vocabulary (borrowed: valid while the model is open)."""
        self.ptr
        return self._vocab

    @property
    def n_params(self) -> int:
        return int(lib.llama_model_n_params(self.ptr))

    @property
    def size(self) -> int:
        """Size of the weights in bytes."""
        return int(lib.llama_model_size(self.ptr))

    @property
    def huge_page_bytes(self) -> int:
        """Bytes of the memory this model's load mapped that huge pages back now; 0 unless loaded with
        ``huge_pages=True`` on a system that has them. Reads /proc/self/smaps."""
        self.ptr
        return hugepages.huge_bytes(self._huge_ranges) if self._huge_ranges else 0

    @property
    def offloaded_layers(self) -> int:
        """Layers whose weights a GPU backend holds, of the model's layers + 1 (llama.cpp counts the output layer
        as one, offloaded first): ``n_gpu_layers`` capped at that; 0 where the build has no GPU backend or finds no
        device, and for a ``vocab_only`` model."""
        self.ptr
        return self._offloaded

    @property
    def n_ctx_train(self) -> int:
        return int(lib.llama_model_n_ctx_train(self.ptr))

    @property
    def n_embd(self) -> int:
        return int(lib.llama_model_n_embd(self.ptr))

    @property
    def n_layer(self) -> int:
        return int(lib.llama_model_n_layer(self.ptr))

    @property
    def n_head(self) -> int:
        return int(lib.llama_model_n_head(self.ptr))

    @property
    def has_encoder(self) -> bool:
        return bool(lib.llama_model_has_encoder(self.ptr))

    @property
    def description(self) -> str:
        return _read_string(lambda buf, n: lib.llama_model_desc(self.ptr, buf, n))

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF key/value metadata, values as strings (arrays are summarised by llama.cpp)."""
        ptr = self.ptr
        out = {}
        for i in range(lib.llama_model_meta_count(ptr)):
            key = _read_string(functools.partial(lib.llama_model_meta_key_by_index, ptr, i))
            out[key] = _read_string(functools.partial(lib.llama_model_meta_val_str_by_index, ptr, i))
        return out

    def embed(
        self,
        texts: Sequence[str],
        *,
        pooling: Pooling | str | int | None = None,
        normalize: bool = True,
        batch_tokens: int | None = None,
        truncate: bool = False,
    ) -> Embeddings:
        """Embeddings of ``texts``: float32 ``(len(texts), dim)``, or with ``pooling="none"`` a list of one
        ``(tokens, dim)`` array per text. See :func:`llamacffi.embedding.embed`."""
        from . import embedding

        return embedding.embed(
            self, texts, pooling=pooling, normalize=normalize, batch_tokens=batch_tokens, truncate=truncate
        )

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template (Jinja source), or None."""
        t = lib.llama_model_chat_template(self.ptr, ffi.NULL)
        return None if t == ffi.NULL else ffi.string(t).decode("utf-8", "replace")

    def apply_chat_template(
        self,
        messages: Iterable[chat.Message],
        *,
        template: str | None = None,
        add_assistant: bool = True,
        tools: Sequence[Mapping[str, object]] | None = None,
        variables: Mapping[str, object] | None = None,
    ) -> str:
        """``messages`` (``(role, content)`` pairs or ``{"role", "content"}`` dicts) as this model expects them.

        ``template``: Jinja source or a llama.cpp template name; None uses the model's own, or llama.cpp's
        built-in one for its architecture when the file carries none (gemma). The template writes this model's BOS
        text only where the tokenizer does not add the token itself. ``tools``: the functions the model may call,
        for a template that describes them (:meth:`tool_syntax`). ``variables``: more for a Jinja template
        (``{"enable_thinking": False}``; :func:`llamacffi.chat.check_variables`). Raises
        :class:`~llamacffi.chat.ChatTemplateError` when there is none or it cannot be applied (see
        :func:`llamacffi.chat.apply_template`).
        """
        return chat.apply_template(
            self._template(template), messages, add_assistant, tools=tools, variables=variables, **self.chat_specials()
        )

    def tool_syntax(self, *, template: str | None = None) -> chat.ToolSyntax | None:
        """The tool-call syntax the chat template (``template``, else the model's own) teaches this model, when it
        is one this package reads (:func:`llamacffi.chat.tool_syntax`), else None."""
        try:
            chosen = self._template(template)
        except chat.ChatTemplateError:
            return None
        return chat.tool_syntax(chosen, **self.chat_specials())

    def thinks(self, *, template: str | None = None) -> bool:
        """Whether the chat template (``template``, else the model's own) writes this model's reasoning in
        ``<think>`` blocks, or others of :data:`llamacffi.chat.THINKING_TAGS`."""
        return self.thinking_tags(template=template) is not None

    def thinking_tags(self, *, template: str | None = None) -> chat.ThinkingTags | None:
        """The tags the chat template (``template``, else the model's own) writes this model's reasoning between
        (:func:`llamacffi.chat.thinking_tags`); None where it writes none."""
        try:
            return chat.thinking_tags(self._template(template))
        except chat.ChatTemplateError:
            return None

    def _template(self, template: str | None) -> str:
        if template is not None:
            return template
        found = self.chat_template or chat.builtin_template_for(self.metadata.get("general.architecture", ""))
        if found is None:
            raise chat.ChatTemplateError(
                f"{self.path.name} carries no chat template; pass template= (a llama.cpp "
                f"template name such as 'chatml', or template text)"
            )
        return found

    def chat_specials(self) -> chat.Specials:
        """The texts a Jinja chat template writes for ``bos_token`` and ``eos_token``: BOS is empty when the
        tokenizer adds it itself, so a prompt never starts with two."""
        vocab = self.vocab
        bos = "" if vocab.add_bos or vocab.bos < 0 else vocab.token_to_piece(vocab.bos, special=True).decode()
        eos = "" if vocab.eos < 0 else vocab.token_to_piece(vocab.eos, special=True).decode("utf-8", "replace")
        return {"bos_token": bos, "eos_token": eos}


def _note_offload(model: Model, n_gpu_layers: int) -> int:
    """How many layers llama.cpp offloaded (its own rule: the last ``n_gpu_layers`` of the repeating layers and the
    output layer, when it has a device to offload to), logged at INFO level."""
    ptr = model.ptr
    layers = int(lib.llama_model_n_layer(ptr)) + int(lib.llama_model_n_layer_nextn(ptr)) + 1
    if model.devices is None:
        gpus = gpu_device_names()
    else:  # the devices the load was given, but the CPU (an RPC server's devices are not in the local list)
        cpus = {str(d["name"]) for d in devices() if d["type"] == "cpu"}
        gpus = [name for name in model.devices if name not in cpus]
    offloaded = min(n_gpu_layers, layers) if gpus else 0
    where = f" to {', '.join(gpus)}" if offloaded else ""
    log.logger.info("loaded %s: offloaded %d/%d layers%s", model.path.name, offloaded, layers, where)
    return offloaded


def _read_string(fill: Callable[[CData, int], int], size: int = 256) -> str:
    """The text of a llama.cpp ``(buf, size) -> length`` function (snprintf-like)."""
    data = read_grown(fill, size, terminated=True, error=lambda _: LlamaError("llama.cpp could not read the value"))
    return data.decode("utf-8", "replace")
