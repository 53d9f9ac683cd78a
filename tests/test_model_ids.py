"""Model ids: llamacffi.models.resolve, models_path and list_ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamacffi import InvalidArgumentError, LlamaError, models
from llamacffi.models import ModelNotFoundError


def test_models_path_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELS_PATH", raising=False)
    assert models.models_path() is None
    assert models.list_ids() == list(models.KNOWN)
    monkeypatch.setenv("MODELS_PATH", str(tmp_path))
    assert models.models_path() == tmp_path


def test_ids_under_models_path_resolve_to_their_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "hf" / "user" / "repo" / "m-q4.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF")
    (target.parent / "folder.gguf").mkdir()
    (target.parent / "broken.gguf").symlink_to(tmp_path / "missing.gguf")
    (target.parent / "a:b.gguf").write_bytes(b"GGUF")
    (target.parent / "two\nlines.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("MODELS_PATH", str(tmp_path))
    ids = models.list_ids()
    assert ids == ["hf:user/repo:m-q4", *models.KNOWN]
    assert models.resolve("hf:user/repo:m-q4") == target
    assert models.resolve("hf:user/repo:m-q4.gguf") == target
    assert models.resolve(str(target)) == target


def test_a_known_name_resolves_to_its_cached_file(smollm2_path: Path) -> None:
    assert models.resolve("smollm2-135m") == smollm2_path


def test_not_found_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="looked at") as info:
        models.resolve("hf:someone/nothing:model")
    assert str(tmp_path) in str(info.value) and "known models" in str(info.value)
    assert isinstance(info.value, LookupError) and isinstance(info.value, LlamaError)
    with pytest.raises(ModelNotFoundError, match="the path"):
        models.resolve("/no/such/model.gguf")
    monkeypatch.delenv("MODELS_PATH")
    with pytest.raises(ModelNotFoundError, match="not set"):
        models.resolve("hf:a/b:c")
    with pytest.raises(InvalidArgumentError):
        models.resolve("")


@pytest.mark.parametrize("model_id", ["hf:u/r:..", "hf:u/..:m", "..:u/r:m", "hf:u/r:a\\b", "hf:./r:m", "hf:u/r:"])
def test_an_id_names_no_file_outside_models_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_id: str
) -> None:
    # Each would reach outside $MODELS_PATH (or at its folders) if its parts were joined as they are.
    root = tmp_path / "models"
    (root / "hf" / "u" / "r").mkdir(parents=True)
    for escaped in (tmp_path / "hf" / "u" / "r" / "m.gguf", root / "hf" / "u" / "r.gguf", root / "hf" / "u.gguf"):
        escaped.parent.mkdir(parents=True, exist_ok=True)
        escaped.write_bytes(b"GGUF")
    monkeypatch.setenv("MODELS_PATH", str(root))
    with pytest.raises(ModelNotFoundError, match="plain name"):
        models.resolve(model_id)
