"""Tags in text that arrives in pieces: how much of a tag's start a piece may end with."""

from __future__ import annotations


def start_at_end(text: str, tag: str) -> int:
    """The length of the start of ``tag`` that ends ``text`` (0 when none does): text to hold until the next piece
    shows whether the tag follows."""
    return next((k for k in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:k])), 0)
