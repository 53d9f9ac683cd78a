"""Command-line options that several commands share (generate, chat, bench, info, embed, serve), defined once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import models

MODEL_HELP = (
    f"a .gguf path, provider:user/repo:file under $MODELS_PATH, or a known name ({', '.join(models.KNOWN)}); "
    f"default {models.DEFAULT}"
)


def add_model(p: argparse.ArgumentParser) -> None:
    """``-m/--model``: the model id, the default small model when omitted."""
    p.add_argument("-m", "--model", default=models.DEFAULT, help=f"model id: {MODEL_HELP}")


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
