"""Command-line options that several commands share (generate, chat, bench, info, embed, serve), defined once, and
the helpers behind them; and the flags that the library's and the service's messages are rewritten to name."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import models
from .chat import check_variables
from .errors import InvalidArgumentError
from .jsontypes import JSON

MODEL_HELP = (
    f"a .gguf path, provider:user/repo:file under $MODELS_PATH, or a known name ({', '.join(models.KNOWN)}); "
    f"default {models.DEFAULT}"
)


def add_model(p: argparse.ArgumentParser) -> None:
    """``-m/--model``: the model id, the default small model when omitted."""
    p.add_argument("-m", "--model", default=models.DEFAULT, help=f"model id: {MODEL_HELP}")


class _NotAnOption(argparse.Action):
    """An option string refused by name: argparse would otherwise read it as the start of a longer single-dash
    option (``-n 4`` as ``-ngl 4``), which ``allow_abbrev=False`` does not prevent."""

    def __init__(self, option_strings: list[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        given = self.option_strings[0]
        longer = sorted(o for o in parser._option_string_actions if o.startswith(given) and o != given)
        parser.error(f"{given} is not an option of this command (did you mean {' or '.join(longer)}?)")


def refuse_prefixes(p: argparse.ArgumentParser) -> None:
    """Make ``-n`` an error on a parser that has ``-ngl`` or ``-np`` but no ``-n`` of its own; call it once the
    parser has all its options."""
    if "-n" not in p._option_string_actions and any(o.startswith("-n") for o in p._option_string_actions):
        p.add_argument("-n", action=_NotAnOption, dest=argparse.SUPPRESS)


def add_compute(p: argparse.ArgumentParser, huge_pages: bool = True) -> None:
    """``-t/--threads``, ``-ngl/--gpu-layers`` and (unless told not to) ``--huge-pages``."""
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all available)")
    p.add_argument(
        "-ngl",
        "--gpu-layers",
        type=int,
        default=-1,
        help="layers to offload to a GPU (default -1: all, when the build has a GPU backend; 0: none)",
    )
    if huge_pages:
        p.add_argument(
            "--huge-pages",
            action="store_true",
            help="read the weights into memory backed by huge pages instead of mapping the file (Linux)",
        )


def add_placement(p: argparse.ArgumentParser) -> None:
    """``--rpc`` and ``--tensor-split``, for the commands that load a model."""
    p.add_argument(
        "--rpc",
        action="append",
        default=[],
        metavar="HOST:PORT[,...]",
        help="an RPC server ('llamacffi rpc-server') whose devices take the offloaded layers (-ngl); repeatable",
    )
    p.add_argument(
        "--tensor-split",
        default=None,
        metavar="SHARES",
        help="each offload device's share of the layers, e.g. 1,1 (default: by free memory)",
    )


def add_chat_template(p: argparse.ArgumentParser) -> None:
    """``--chat-template`` and ``--chat-template-file``: a template instead of the model's own, as llama-server
    takes them."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME|JINJA",
        help="chat template instead of the model's own: a llama.cpp template name (chatml, gemma, ...) or Jinja text",
    )
    g.add_argument(
        "--chat-template-file", default=None, metavar="FILE", help="a Jinja chat template file, instead of the model's"
    )
    p.add_argument(
        "--chat-template-kwargs",
        default=None,
        metavar="JSON",
        help="more variables for a Jinja chat template, e.g. '{\"enable_thinking\": false}'",
    )


def chat_template(args: argparse.Namespace) -> str | None:
    """The template ``--chat-template`` or ``--chat-template-file`` gives, or None."""
    if args.chat_template_file is not None:
        return read_text("--chat-template-file", args.chat_template_file)
    template: str | None = args.chat_template
    if template is not None:
        check_utf8("--chat-template", template)
    return template


def chat_template_kwargs(args: argparse.Namespace) -> dict[str, JSON] | None:
    """The variables ``--chat-template-kwargs`` gives (a JSON object, checked before anything loads), or None."""
    text: str | None = args.chat_template_kwargs
    if text is None:
        return None
    check_utf8("--chat-template-kwargs", text)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"--chat-template-kwargs: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--chat-template-kwargs: must be a JSON object, got {text!r}")
    try:
        return check_variables(value)
    except InvalidArgumentError as exc:
        raise ValueError(f"--chat-template-kwargs: {exc}") from None


def rpc_list(values: Sequence[str] | None) -> list[str]:
    """``--rpc`` values (repeatable, each a comma-separated list of host:port, as llama.cpp's own tools take)."""
    return [e.strip() for v in values or () for e in v.split(",") if e.strip()]


def split_list(text: str | None) -> tuple[float, ...] | None:
    """``--tensor-split 3,1``: each device's share."""
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.replace("/", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tensor-split takes numbers separated by commas, got {text!r}") from None


def read_text(flag: str, path: str) -> str:
    """The UTF-8 text of the file an option names; errors say which option and which file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{flag} {path}: {not_utf8(exc)}") from None
    except OSError as exc:
        raise OSError(f"{flag} {path}: {exc.strerror or exc}") from None


def check_utf8(what: str, text: str) -> None:
    """Refuse text from the command line that is not UTF-8 (Python keeps such bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: not UTF-8 text") from None


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where bytes that should be UTF-8 are not, in a few words."""
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def log_held() -> Iterator[None]:
    """Hold back llama.cpp's log lines while a model loads: they are shown when the block succeeds and dropped when
    it raises, since the error then quotes what they say (the command's one line stays one line)."""
    logger = logging.getLogger("llamacffi")
    held = _Held()
    logger.addHandler(held)
    try:
        yield
    finally:
        logger.removeHandler(held)
    for record in held.records:  # reached only without an exception
        logger.handle(record)


# The service's and the library's names for what the command line sets, as the flags the user typed.
_FLAGS = {
    "max_tokens": "--max-tokens",
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "repeat_penalty": "--repeat-penalty",
    "seed": "--seed",
    "stop_sequences": "--stop",
    "system": "--system",
    "grammar": "--grammar",
    "json_schema": "--json-schema",
    "context_size": "--ctx-size",
    "parallel": "--parallel",
    "max_queue": "--max-queue",
    "threads": "--threads",
    "gpu_layers": "--gpu-layers",
    "rpc_servers": "--rpc",
    "tensor_split": "--tensor-split",
    "huge_pages": "--huge-pages",
    "n_threads": "--threads",
    "batch_tokens": "--batch-tokens",
    "port": "--port",
    "chat_template": "--chat-template",
    "chat_template_kwargs": "--chat-template-kwargs",
}
_FIELD = re.compile(r"\b(?:GenerationOptions|ModelConfig|LocalBackendConfig|LlamaCppSpecificConfig)\.(\w+)")
_LEADING = re.compile(r"^(\w+)(?= must be )")  # the library's messages start with the argument's name
_HINTS = (
    (", or set truncate_prompt=True", ""),  # no flag sets it
    ("pass truncate=True", "pass --truncate"),
)


def flag_words(message: str, command: str) -> str:
    """``message`` with the fields and keyword arguments it names written as ``command``'s flags."""
    message = _FIELD.sub(lambda m: _FLAGS.get(m.group(1), m.group(0)), message)
    message = _LEADING.sub(lambda m: _FLAGS.get(m.group(1), m.group(0)), message)
    for hint, flag in _HINTS:
        message = message.replace(hint, flag)
    return message.replace(" or parallel", " or --parallel" if command == "serve" else "")
