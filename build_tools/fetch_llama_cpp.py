"""Fill vendor/llama.cpp with the pinned llama.cpp tree.

The tree is the ``vendor/llama.cpp`` folder of the llama-cpp-python 0.3.36 sdist on PyPI: downloaded with pip,
sha256-verified, cached in the user cache folder, and extracted alone (nothing else of the sdist is used).

    python build_tools/fetch_llama_cpp.py DEST
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
HEAD_MEMBER = "llama_cpp_python-0.3.36/.git/modules/vendor/llama.cpp/HEAD"
ORIGIN_FILE = "LLAMACFFI_ORIGIN.json"


def load_pypi():
    path = Path(__file__).resolve().parent.parent / "python" / "llamacffi" / "_pypi.py"
    spec = importlib.util.spec_from_file_location("_llamacffi_pypi", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cached_sdist(pypi) -> Path:
    cache = pypi.cache_dir() / "src"
    tarball = cache / SDIST_FILE
    if tarball.is_file() and pypi.sha256_file(tarball) == SDIST_SHA256:
        print(f"-- llamacffi: using cached {tarball}")
        return tarball
    print(f"-- llamacffi: downloading {SDIST} (sdist) with pip")
    with tempfile.TemporaryDirectory(dir=cache.parent if cache.parent.exists() else None) as tmp:
        got = pypi.pip_download(SDIST, Path(tmp), sdist=True)
        pypi.verify(got, SDIST_SHA256, f"the downloaded {SDIST_FILE}")
        cache.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), tarball)
    return tarball


def _extract_members(tf: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """Extract ``members`` into ``dest`` and nowhere else. Python's own "data" filter does that where it exists
    (3.10.12+, 3.11.4+); before, each name and link is checked here (Debian 12's Python is 3.11.2)."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, members=members, filter="data")
        return
    root = dest.resolve()
    links = {m.name.rstrip("/") for m in members if m.issym()}
    for m in members:
        target = (root / m.name).resolve()
        link = (target.parent / m.linkname).resolve() if m.issym() else target
        through_link = any(str(parent) in links for parent in Path(m.name).parents)
        if (
            Path(m.name).is_absolute()
            or through_link
            or not (target.is_relative_to(root) and link.is_relative_to(root))
        ):
            raise SystemExit(f"llamacffi: the llama.cpp sdist holds a path outside its folder: {m.name}")
    tf.extractall(dest, members=members)


def extract(tarball: Path, dest: Path) -> str:
    """Extract the llama.cpp folder into ``dest``; return the llama.cpp commit the sdist recorded."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".llama.cpp.", dir=dest.parent))
    commit = "unknown"
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            members = []
            for m in tf.getmembers():
                if m.name == HEAD_MEMBER:
                    f = tf.extractfile(m)
                    commit = f.read().decode().strip() if f else commit
                if not m.name.startswith(PREFIX) or not (m.isfile() or m.isdir() or m.issym()):
                    continue
                m.name = m.name[len(PREFIX) :]
                if m.name:
                    members.append(m)
            _extract_members(tf, staging, members)
        # The sdist's submodule pointer refers to a git folder that is not extracted.
        stray_git = staging / ".git"
        if stray_git.is_file() or stray_git.is_symlink():
            stray_git.unlink()
        if not (staging / "include" / "llama.h").is_file():
            raise SystemExit(f"llamacffi: {tarball} holds no {PREFIX}include/llama.h; delete it and build again")
        (staging / ORIGIN_FILE).write_text(
            json.dumps({"source": f"{SDIST} sdist", "sha256": SDIST_SHA256, "commit": commit}, indent=1) + "\n"
        )
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return commit


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[1]).resolve()
    if (dest / "include" / "llama.h").is_file():
        print(f"-- llamacffi: llama.cpp tree already present at {dest}")
        return 0
    pypi = load_pypi()
    try:
        tarball = cached_sdist(pypi)
        commit = extract(tarball, dest)
    except pypi.FetchError as exc:
        print(
            f"llamacffi: cannot get the pinned llama.cpp tree: {exc}\n"
            f"Fix the network/index, or put the verified {SDIST_FILE} at {pypi.cache_dir() / 'src' / SDIST_FILE}, "
            f"or point the build at a llama.cpp checkout with "
            f"LLAMACFFI_LLAMA_CPP_DIR=/path/to/llama.cpp (or -DLLAMACFFI_LLAMA_CPP_DIR=...).",
            file=sys.stderr,
        )
        return 1
    print(f"-- llamacffi: extracted llama.cpp {commit} into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
