"""Fixtures: the two real models (fetched once, cached) and llama.cpp's own programs from the same build."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llamacffi
from llamacffi import models, raw_tools

MODEL_NAMES = ("smollm2-135m", "gemma3-270m")
THREADS = 2


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return models.fetch("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return models.fetch("gemma3-270m")


@pytest.fixture(scope="session", params=MODEL_NAMES)
def model_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def model_path(model_name: str) -> Path:
    return models.fetch(model_name)


@pytest.fixture(scope="session")
def model(model_path: Path) -> Iterator[llamacffi.Model]:
    with llamacffi.Model.load(model_path) as m:
        yield m


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> Iterator[llamacffi.Model]:
    with llamacffi.Model.load(smollm2_path) as m:
        yield m


@pytest.fixture(scope="session")
def gemma3(gemma3_path: Path) -> Iterator[llamacffi.Model]:
    with llamacffi.Model.load(gemma3_path) as m:
        yield m


@pytest.fixture(scope="session")
def llama_simple() -> Path:
    return raw_tools.require("llama-simple")


@pytest.fixture(scope="session")
def llama_bench() -> Path:
    return raw_tools.require("llama-bench")


def answer_within(seconds: float, call: Any) -> Any:
    """``call()``'s result or exception, failing the test if it has neither after ``seconds`` (a lost request)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"no answer within {seconds} s: the request was lost"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
