"""``llamacffi embed``: embeddings of texts (arguments, or one per line of a file) as JSON or a NumPy ``.npy`` file,
written to standard output."""

from __future__ import annotations

import argparse
import json
import re
import sys

from . import cli_args, models

POOLINGS = ("none", "mean", "cls", "last", "rank")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the subcommand on the ``llamacffi`` parser's subparsers."""
    e = sub.add_parser(
        "embed",
        help="embeddings of texts, as JSON or .npy on stdout",
        description="Embed each TEXT (or each non-empty line of --file) with one vector per text.",
    )
    e.add_argument("texts", nargs="*", metavar="TEXT")
    e.add_argument("-f", "--file", default=None, help="read texts from this file, one per non-empty line ('-': stdin)")
    cli_args.add_model(e)
    e.add_argument(
        "--format",
        choices=("json", "npy"),
        default="json",
        help="json: an OpenAI-style list (default); npy: a float32 (n, dim) array",
    )
    e.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=None,
        help="how token vectors become one per text (default: the model's own, else mean); none gives "
        "every token's vector (json only)",
    )
    e.add_argument("--no-normalize", action="store_true", help="keep the vectors' lengths (default: unit length)")
    e.add_argument("--truncate", action="store_true", help="cut texts longer than the model's context")
    e.add_argument("--batch-tokens", type=int, default=None, help="tokens per decode (default 512)")
    cli_args.add_compute(e, huge_pages=False)


def read_texts(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The TEXT arguments, or the non-blank lines of --file, and what each is called in errors (``TEXT 2``, ``line
    7 of FILE``); blank or non-UTF-8 input is refused by name."""
    if args.file is not None and args.texts:
        raise ValueError("give texts as arguments or with --file, not both")
    if args.file is None:
        if not args.texts:
            raise ValueError("no text to embed: give TEXT arguments or --file")
        for i, text in enumerate(args.texts, 1):
            if not text.strip():
                raise ValueError(f"TEXT {i} is empty: nothing to embed")
            cli_args.check_utf8(f"TEXT {i}", text)
        return list(args.texts), [f"TEXT {i}" for i in range(1, len(args.texts) + 1)]
    if args.file == "-":
        if sys.stdin is None:
            raise OSError("standard input is closed: --file - reads the texts there")
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"--file -: {cli_args.not_utf8(exc)}") from None
    else:
        text = cli_args.read_text("--file", args.file)
    source = "standard input" if args.file == "-" else args.file
    # Lines end where an editor's do (\n, \r\n, \r): str.splitlines would also split a text at U+2028 or \f.
    numbered = [(n, line) for n, line in enumerate(re.split("\r\n|\r|\n", text), 1) if line.strip()]
    if not numbered:
        raise ValueError(f"{source} holds no text to embed")
    return [line for _, line in numbered], [f"line {n} of {source}" for n, _ in numbered]


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from . import Model, embedding

    if args.format == "npy" and args.pooling == "none":
        raise ValueError("--format npy writes one vector per text; use --format json with --pooling none")
    if args.format == "npy" and sys.stdout.isatty():
        raise ValueError("--format npy writes binary data: redirect it to a file or a pipe")
    texts, names = read_texts(args)
    path = models.fetch(args.model, progress=True) if args.model in models.KNOWN else None
    if path is None:
        from .service import LlamaCppService

        path = LlamaCppService().resolve(args.model)
    with cli_args.log_held():
        model = Model.load(path, n_gpu_layers=args.gpu_layers)
    with model:
        try:
            vectors = embedding.embed(
                model,
                texts,
                pooling=args.pooling,
                normalize=not args.no_normalize,
                batch_tokens=args.batch_tokens,
                truncate=args.truncate,
                n_threads=args.threads,
            )
        except embedding.TextError as exc:  # named as the user gave it, not by its place among the kept texts
            raise ValueError(f"{names[exc.index]} {exc.reason}") from None
    if args.format == "npy":
        assert isinstance(vectors, np.ndarray)
        np.save(sys.stdout.buffer, vectors, allow_pickle=False)
        sys.stdout.flush()
        return 0
    data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
    json.dump({"object": "list", "model": args.model, "data": data}, sys.stdout)
    sys.stdout.write("\n")
    return 0
