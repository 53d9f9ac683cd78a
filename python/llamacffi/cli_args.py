"""Command-line options that several commands share (generate, chat, bench, info, embed, serve), defined once."""

from __future__ import annotations

import argparse

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
