"""Tool calls in an answer, read in the syntax the model was prompted with: the system message's JSON object
(:mod:`.structured`) or its chat template's own (:mod:`.hermes`)."""

from __future__ import annotations

import dataclasses

from ..chat import ToolSyntax
from ..jsontypes import JSONObject
from . import hermes, structured


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one request's answers make tool calls."""

    tools: structured.Tools
    syntax: ToolSyntax | None  # None: the JSON object the system message describes
    parallel: bool  # several calls in one answer (the template's syntax only)

    def read(self, text: str) -> tuple[str | None, list[JSONObject]]:
        """The answer's text (None when there is none beside its calls) and its calls."""
        if self.syntax == "hermes":
            return hermes.read(text, self.tools, self.parallel)
        call = structured.as_call(text, self.tools)
        return (text, []) if call is None else (None, [call])

    def held_from(self, text: str) -> int | None:
        """Where the text streamed so far may start a call, which is then held back until the answer ends (its
        length when nothing is held); None when the answer is text to its end, and nothing needs holding again."""
        if self.tools.forced() or not text.strip():
            return 0
        if self.syntax == "hermes":
            return hermes.held_from(text)
        return 0 if text.lstrip().startswith("{") else None
