"""The tree passes the checks the project holds itself to: ruff's lint rules and formatting, and mypy --strict (all
configured in pyproject.toml). A failure shows the tool's own report."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = {
    "ruff check": ["ruff", "check", "--no-cache", "."],
    "ruff format": ["ruff", "format", "--check", "--no-cache", "."],
    "mypy": ["mypy"],  # files, strictness and the cache folder come from pyproject.toml
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_clean(name: str) -> None:
    command = CHECKS[name]
    if importlib.util.find_spec(command[0]) is None:
        pytest.fail(f"{command[0]} is not installed: pip install '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{name} found problems:\n{proc.stdout}{proc.stderr}"
