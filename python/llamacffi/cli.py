"""The ``llamacffi`` command: generate, chat, models, info, bench, embed, serve, rpc-server.

Errors print one line, ``llamacffi: error: ...``, and exit 1; a usage error (an unknown option, a value of the wrong
type) prints argparse's usage and exits 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from . import cli_args, cli_embed, models

if TYPE_CHECKING:  # the service is imported by the commands that use it: the others start faster
    from .service import GenerationOptions, LlamaCppTextModel


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _model_args(p: argparse.ArgumentParser, ctx_size: bool = True) -> None:
    cli_args.add_model(p)
    if ctx_size:
        p.add_argument("-c", "--ctx-size", type=int, default=2048, help="context size per request (default 2048)")
    cli_args.add_compute(p)
    cli_args.add_placement(p)


def _sampling_args(p: argparse.ArgumentParser, system_in: argparse._ActionsContainer | None = None) -> None:
    p.add_argument("-n", "--max-tokens", type=int, default=256)
    p.add_argument("--temperature", "--temp", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop sequence, taken as typed (repeatable; a newline in bash: $'\\n')",
    )
    (system_in or p).add_argument("--system", default=None, help="system prompt (through the chat template)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llamacffi", description="Text generation with llama.cpp from Python.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a completion to stdout")
    g.add_argument("prompt", nargs="+")
    templated = g.add_mutually_exclusive_group()
    templated.add_argument("--raw", action="store_true", help="complete the prompt text as is (no chat template)")
    constraint = g.add_mutually_exclusive_group()
    constraint.add_argument(
        "--json-schema",
        default=None,
        metavar="JSON|FILE",
        help="constrain the output to JSON valid under this schema (JSON text, else a file)",
    )
    constraint.add_argument("--grammar", default=None, metavar="FILE", help="constrain the output to this GBNF grammar")
    _model_args(g)
    cli_args.add_chat_template(g)
    _sampling_args(g, system_in=templated)
    c = sub.add_parser("chat", help="interactive chat (history through the chat template)")
    _model_args(c)
    cli_args.add_chat_template(c)
    _sampling_args(c)
    m = sub.add_parser("models", help="list or fetch models")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="models under $MODELS_PATH and the known models")
    pull = msub.add_parser("pull", help="fetch a known model into the cache")
    pull.add_argument("name", choices=sorted(models.KNOWN))
    i = sub.add_parser("info", help="build, backends and devices; with -m, the model's metadata")
    i.add_argument("-m", "--model", default=None)
    i.add_argument("-ngl", "--gpu-layers", type=int, default=-1, help="layers the -m model offloads (default -1: all)")
    i.add_argument("--json", action="store_true")
    i.add_argument(
        "--rpc", action="append", default=[], metavar="HOST:PORT[,...]", help="also list this RPC server's devices"
    )
    b = sub.add_parser("bench", help="quick prompt-processing and generation speed")
    _model_args(b, ctx_size=False)  # its context is what -p and -g need
    b.add_argument("-p", "--n-prompt", type=_positive, default=128)
    b.add_argument("-g", "-n", "--n-gen", type=_positive, default=32)  # -n: llama-bench's name
    cli_embed.add_parser(sub)
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs llamacffi[server])")
    _serve_arguments(s)
    r = sub.add_parser("rpc-server", help="serve this build's devices to other hosts over llama.cpp's RPC protocol")
    r.add_argument("--host", default="127.0.0.1", help="IPv4 address to listen on (default 127.0.0.1: this machine)")
    r.add_argument("--port", type=int, default=50052, help="port (default 50052; 0: a free one, printed)")
    r.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    r.add_argument("--cache", default=None, metavar="DIR", help="keep received tensors here for faster reloads")
    r.add_argument(
        "--device",
        action="append",
        default=None,
        metavar="NAME",
        help="a device to serve (repeatable; default: the GPUs, else the CPU; names as 'llamacffi info' lists them)",
    )
    r.add_argument("--allow-remote", action="store_true", help="listen on an address other machines can reach")
    for command in sub.choices.values():
        cli_args.refuse_prefixes(command)
    return ap


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    try:
        from .server.main import add_arguments
    except ImportError:  # without the server extra: its options are let through, and the command says what to install
        p.set_defaults(server_missing=True)
        return
    add_arguments(p)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.main import run
    except ImportError as exc:
        raise ImportError(
            f"llamacffi serve needs the server extra ({exc.name} is missing): pip install 'llamacffi[server]'"
        ) from None
    return run(args)


def _service_model(args: argparse.Namespace, parallel: int = 1):  # type: ignore[no-untyped-def]
    from .service import LlamaCppService, LlamaCppSpecificConfig, LocalBackendConfig, ModelConfig

    if args.model in models.KNOWN and not models.is_cached(args.model):
        print(f"llamacffi: fetching {args.model} ({models.KNOWN[args.model].description})", file=sys.stderr)
        models.fetch(args.model, progress=True)
    llama_cpp = LlamaCppSpecificConfig(huge_pages=args.huge_pages)
    svc = LlamaCppService(
        LocalBackendConfig(
            threads=args.threads,
            use_gpu=args.gpu_layers != 0,
            gpu_layers=args.gpu_layers,
            llama_cpp=llama_cpp,
            rpc_servers=tuple(cli_args.rpc_list(args.rpc)),
            tensor_split=cli_args.split_list(args.tensor_split),
        )
    )
    templated = hasattr(args, "chat_template")
    config = ModelConfig(
        context_size=args.ctx_size,
        parallel=parallel,
        chat_template=cli_args.chat_template(args) if templated else None,
        chat_template_kwargs=cli_args.chat_template_kwargs(args) if templated else None,
    )
    with cli_args.log_held():
        return svc, svc.load_model(args.model, config=config)


def _constraint(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(grammar, json_schema)`` from --grammar FILE and --json-schema JSON|FILE."""
    grammar = schema = None
    if getattr(args, "grammar", None) is not None:
        grammar = cli_args.read_text("--grammar", args.grammar)
    given = getattr(args, "json_schema", None)
    if given is not None:
        schema = _schema_text(given)
    return grammar, schema


def _schema_text(given: str) -> str:
    """--json-schema's value: JSON text as it is, else the text of the file it names."""
    try:
        json.loads(given)
    except ValueError as exc:
        if given.lstrip().startswith(("{", "[")) and not os.path.isfile(given):
            raise ValueError(f"--json-schema: not valid JSON: {exc}") from None
        return cli_args.read_text("--json-schema", given)
    return given


def _options(args: argparse.Namespace, raw: bool = False) -> GenerationOptions:
    from .service import GenerationOptions

    grammar, schema = _constraint(args)
    for stop in args.stop:
        if not stop:
            raise ValueError("--stop: an empty stop sequence would end every reply before it starts")
        cli_args.check_utf8("--stop", stop)
    return GenerationOptions(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
        stop_sequences=tuple(args.stop),
        system=args.system,
        raw=raw,
        grammar=grammar,
        json_schema=schema,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = " ".join(args.prompt)
    if not prompt.strip():
        raise ValueError("the prompt is empty: give the text to complete or answer")
    cli_args.check_utf8("prompt", prompt)
    opts = _options(args, raw=args.raw)
    svc, model = _service_model(args)
    last = ""
    with svc, model:
        for chunk in model.generate_stream(prompt, opts):
            sys.stdout.write(chunk)
            sys.stdout.flush()
            last = chunk or last
        if not last.endswith("\n"):  # a reply cut at --max-tokens: the shell prompt starts on a line of its own
            sys.stdout.write("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .service import InvalidConfigError

    opts = _options(args)
    svc, model = _service_model(args)
    history: list[tuple[str, str]] = []
    with svc, model:
        for text in _messages():
            history.append(("user", text))
            refused = f"that message alone does not fit the context of {args.ctx_size} tokens (-c)"
            try:
                stream = _fitting_stream(model, history, opts)
            except InvalidConfigError as exc:  # this message's own fault: the session goes on without it
                stream, refused = None, f"that message was not sent: {cli_args.flag_words(str(exc), 'chat')}"
            if stream is None:
                history.pop()
                print(f"llamacffi: {refused}", file=sys.stderr)
                continue
            reply = []
            for chunk in stream:
                reply.append(chunk)
                sys.stdout.write(chunk)
                sys.stdout.flush()
            sys.stdout.write("\n")
            history.append(("assistant", "".join(reply)))
    return 0


def _messages() -> Iterator[str]:
    """Chat's messages, one per line of standard input, until its end or /exit; a line that is not UTF-8 is
    reported and skipped."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.buffer.readline()
        if not line:
            return
        try:
            text = line.decode("utf-8").rstrip("\n")
        except UnicodeDecodeError as exc:
            print(f"llamacffi: that message was not sent: {cli_args.not_utf8(exc)}", file=sys.stderr)
            continue
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            return
        yield text


def _fitting_stream(
    model: LlamaCppTextModel, history: list[tuple[str, str]], opts: GenerationOptions
) -> Iterator[str] | None:
    """The reply's stream, after dropping the oldest exchanges the context cannot hold; None, with the history
    untouched, when even the last message alone does not fit."""
    from .service import ContextOverflowError

    for start in range(0, len(history), 2):  # history: user, assistant, ..., user
        try:
            stream = model.chat_stream(history[start:], opts)
        except ContextOverflowError:
            continue
        if start:
            del history[:start]
            print(f"llamacffi: ({start // 2} of the oldest exchanges were dropped to fit the context)", file=sys.stderr)
        return stream
    return None


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "pull":
        path = models.fetch(args.name, progress=True)
        print(path)
        return 0
    from .service import LlamaCppService

    root = models.models_path()
    if root is not None and not root.is_dir():
        print(f"llamacffi: warning: $MODELS_PATH {root} is not a folder: only known models are listed", file=sys.stderr)
    for model_id in LlamaCppService().list_available_models():
        note = ""
        if model_id in models.KNOWN:
            note = "cached" if models.is_cached(model_id) else "not downloaded (llamacffi models pull " + model_id + ")"
        print(f"{model_id}\t{note}".rstrip())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import Model, system_info

    info: dict[str, object] = system_info(cli_args.rpc_list(args.rpc))
    if args.model:
        from .service import LlamaCppService

        path = LlamaCppService().resolve(args.model)
        with cli_args.log_held():
            m = Model.load(path, n_gpu_layers=args.gpu_layers)
        with m:
            info["model"] = {
                "path": str(path),
                "description": m.description,
                "n_params": m.n_params,
                "size": m.size,
                "n_ctx_train": m.n_ctx_train,
                "n_embd": m.n_embd,
                "n_layer": m.n_layer,
                "offloaded_layers": m.offloaded_layers,
                "n_vocab": m.vocab.n_tokens,
                "chat_template": m.chat_template is not None,
                "metadata": m.metadata,
            }
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for key, value in info.items():
            if key == "rpc_devices" and isinstance(value, list):
                print(f"{key}:" + ("" if value else " none"))
                for d in value:
                    if "error" in d:
                        print(f"  {d['endpoint']}: {d['error']}")
                    else:
                        print(
                            f"  {d['name']} at {d['endpoint']}: {d['memory_free'] >> 20} MiB free of "
                            f"{d['memory_total'] >> 20} MiB"
                        )
            elif isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {_one_line(v) if not isinstance(v, dict) else ''}")
                    if isinstance(v, dict):
                        for kk, vv in v.items():
                            print(f"    {kk}: {_one_line(vv)[:100]}")
            else:
                print(f"{key}: {value}")
    return 0


def _one_line(value: object) -> str:
    """A metadata value on one line of the indented listing (a chat template holds newlines)."""
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    from . import Batch, Context, InvalidArgumentError, Model

    path = models.fetch(args.model, progress=True) if args.model in models.KNOWN else None
    if path is None:
        from .service import LlamaCppService

        path = LlamaCppService().resolve(args.model)
    split = cli_args.split_list(args.tensor_split)
    rpc = cli_args.rpc_list(args.rpc) or None
    with cli_args.log_held():
        model = Model.load(
            path, n_gpu_layers=args.gpu_layers, huge_pages=args.huge_pages, rpc_servers=rpc, tensor_split=split
        )
    with model:
        if args.n_prompt + args.n_gen >= model.n_ctx_train:
            raise InvalidArgumentError(
                f"-p {args.n_prompt} and -g {args.n_gen} need {args.n_prompt + args.n_gen + 1} positions, but "
                f"{path.name} was trained for {model.n_ctx_train}"
            )
        rng = np.random.default_rng(0)
        prompt = rng.integers(0, model.vocab.n_tokens, args.n_prompt, dtype=np.int32)
        n_ctx = args.n_prompt + args.n_gen + 1
        with Context(model, n_ctx=n_ctx, n_batch=max(args.n_prompt, 1), n_threads=args.threads) as ctx:
            ctx.decode(Batch.from_tokens(prompt[:8]))  # warm-up
            ctx.memory.clear()
            t0 = time.perf_counter()
            ctx.decode(Batch.from_tokens(prompt))
            pp = args.n_prompt / (time.perf_counter() - t0)
            token, pos = int(np.argmax(ctx.logits())), args.n_prompt
            t0 = time.perf_counter()
            for _ in range(args.n_gen):
                ctx.decode_token(token, pos)
                pos += 1
                token = int(np.argmax(ctx.logits()))
            tg = args.n_gen / (time.perf_counter() - t0)
        huge = f"  huge pages: {model.huge_page_bytes >> 20} MiB" if args.huge_pages else ""
    print(f"model: {path.name}  threads: {args.threads or 'all'}{huge}")
    print(f"pp{args.n_prompt}: {pp:8.1f} tokens/s")
    print(f"tg{args.n_gen}: {tg:8.1f} tokens/s")
    return 0


def cmd_rpc_server(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from . import rpc

    if args.host == "localhost":
        args.host = "127.0.0.1"
    if not rpc.is_loopback(args.host) and not args.allow_remote:
        raise ValueError(
            f"refusing to listen on {args.host}, an address other machines can reach: {rpc.SECURITY_WARNING}. "
            f"Pass --allow-remote to do it anyway"
        )
    if not rpc.is_loopback(args.host):
        print(f"llamacffi: warning: {rpc.SECURITY_WARNING}", file=sys.stderr)
    serving = rpc.start_server(args.host, args.port, threads=args.threads, cache_dir=args.cache, devices=args.device)
    version = ".".join(map(str, rpc.PROTOCOL))
    print(
        f"llamacffi rpc-server: listening on {serving.host}:{serving.port} (RPC protocol {version}; devices: "
        f"{', '.join(serving.devices)})",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while serving.thread.is_alive() and not stop.wait(0.5):
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    # llama.cpp's accept loop has no way out; the process ends it.
    os._exit(0 if stop.is_set() else 1)


COMMANDS = {
    "generate": cmd_generate,
    "chat": cmd_chat,
    "models": cmd_models,
    "info": cmd_info,
    "bench": cmd_bench,
    "embed": cli_embed.cmd_embed,
    "serve": cmd_serve,
    "rpc-server": cmd_rpc_server,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "server_missing", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")

    def warn(message: Warning | str, category: type[Warning], *rest: object, **kwargs: object) -> None:
        print(f"llamacffi: warning: {cli_args.flag_words(str(message), args.command)}", file=sys.stderr)

    previous, warnings.showwarning = warnings.showwarning, warn  # one line, like the errors
    try:
        if sys.stdout is None:  # started with its standard output closed
            raise OSError("standard output is closed: llamacffi writes its results there")
        if args.command == "chat" and sys.stdin is None:
            raise OSError("standard input is closed: chat reads its messages there")
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one clear line, no traceback
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"llamacffi: error: {cli_args.flag_words(message, args.command)}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
