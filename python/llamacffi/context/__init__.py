"""Context and what belongs to it: :mod:`.context` (lifetime, decoding, outputs), :mod:`.memory` (the KV memory),
:mod:`.state` (saved states), :mod:`.threads` (thread pools, timings, the exit hook), :mod:`.views` (logits views)."""

from ..limits import MAX_CTX, MAX_THREADS
from .context import Context
from .memory import Memory
from .threads import Perf, default_threads

__all__ = ["MAX_CTX", "MAX_THREADS", "Context", "Memory", "Perf", "default_threads"]
