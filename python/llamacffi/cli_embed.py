"""``llamacffi embed``: embeddings of texts (arguments, or one per line of a file) as JSON or a NumPy ``.npy`` file,
written to standard output."""

from __future__ import annotations

import argparse
import json
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


def read_texts(args: argparse.Namespace) -> list[str]:
    """The TEXT arguments, or the non-blank lines of --file; blank or non-UTF-8 input is refused by name."""
    if args.file is not None and args.texts:
        raise ValueError("give texts as arguments or with --file, not both")
    if args.file is None:
        if not args.texts:
            raise ValueError("no text to embed: give TEXT arguments or --file")
        for i, text in enumerate(args.texts, 1):
            if not text.strip():
                raise ValueError(f"TEXT {i} is empty: nothing to embed")
            cli_args.check_utf8(f"TEXT {i}", text)
        return list(args.texts)
    if args.file == "-":
        if sys.stdin is None:
            raise OSError("standard input is closed: --file - reads the texts there")
        try:
            lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"--file -: {cli_args.not_utf8(exc)}") from None
    else:
        lines = cli_args.read_text("--file", args.file).splitlines()
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{args.file} holds no text to embed")
    return texts


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from . import Model, embedding

    if args.format == "npy" and args.pooling == "none":
        raise ValueError("--format npy writes one vector per text; use --format json with --pooling none")
    if args.format == "npy" and sys.stdout.isatty():
        raise ValueError("--format npy writes binary data: redirect it to a file or a pipe")
    texts = read_texts(args)
    path = models.fetch(args.model, progress=True) if args.model in models.KNOWN else None
    if path is None:
        from .service import LlamaCppService

        path = LlamaCppService().resolve(args.model)
    with cli_args.log_held():
        model = Model.load(path, n_gpu_layers=args.gpu_layers)
    with model:
        vectors = embedding.embed(
            model,
            texts,
            pooling=args.pooling,
            normalize=not args.no_normalize,
            batch_tokens=args.batch_tokens,
            truncate=args.truncate,
            n_threads=args.threads,
        )
    if args.format == "npy":
        assert isinstance(vectors, np.ndarray)
        np.save(sys.stdout.buffer, vectors, allow_pickle=False)
        sys.stdout.flush()
        return 0
    data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
    json.dump({"object": "list", "model": args.model, "data": data}, sys.stdout)
    sys.stdout.write("\n")
    return 0
