"""The report of a benchmark run: :func:`rows` (each measurement with its ratios, target and status), its
:func:`markdown` and its :func:`chart`. Reads only the results JSON: re-rendering needs neither the compiled
extension nor the models."""

from __future__ import annotations

from .chart import chart
from .markdown import machine_line, markdown, offload_words
from .rows import rows

__all__ = ["chart", "machine_line", "markdown", "offload_words", "rows"]
