"""Stop sequences over streamed text: nothing of a stop string is ever emitted."""

from __future__ import annotations


class StopMatcher:
    """Feed text chunks; get back what is safe to emit. Holds back only the longest tail that could still begin a
    stop string. ``stopped`` turns True at the first complete stop string (``matched``); the text before it has been
    emitted."""

    __slots__ = ("stops", "_held", "stopped", "matched")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.matched = next(s for s in self.stops if buf.find(s) == cut)
            self._held = ""
            return buf[:cut]
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The held-back text once generation ended without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
