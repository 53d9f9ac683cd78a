"""The prompts of the serving benchmarks: one topic per client, so no two concurrent requests share a prompt.

Each conversation has a system message: a chat template that adds a default one when none is given (SmolLM2's
does, in llama-server's Jinja rendering) then renders the same tokens on every side."""

from __future__ import annotations

TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "the first snow",
    "a market in Lisbon",
    "a chess match",
    "a night train",
    "an old violin",
    "a desert well",
    "a paper boat",
    "a city garden",
    "a broken clock",
    "a mountain road",
    "a quiet library",
    "a fishing village",
    "a comet",
    "a bakery at dawn",
)


SYSTEM = "You are a helpful assistant."


def prompt_for(client: int) -> str:
    """The user message client number ``client`` sends."""
    return f"Write a long story about {TOPICS[client % len(TOPICS)]}."


def messages_for(client: int) -> list[dict[str, str]]:
    """The conversation client number ``client`` sends."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt_for(client)}]
