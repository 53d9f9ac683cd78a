"""Constrained generation through the service: json_schema and grammar options, next to free requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamacffi.service import (
    GenerationOptions,
    InvalidConfigError,
    LlamaCppService,
    LlamaCppTextModel,
    LocalBackendConfig,
    ModelConfig,
)

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2},
        "born": {"type": "string", "format": "date"},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def check(text: str) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(json.loads(text))


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaCppTextModel]:
    with (
        LlamaCppService(LocalBackendConfig(threads=1)) as svc,
        svc.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=3)) as m,
    ):
        yield m


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"json_schema": {"type": "integer", "multipleOf": 2}}, "#/multipleOf"),
        ({"json_schema": {"properties": {"a": {"format": "email"}}}}, "#/properties/a/format"),
        ({"json_schema": "{oops"}, "not valid JSON"),
        ({"json_schema": 5}, "json_schema"),
        ({"grammar": ""}, "grammar"),
        ({"grammar": 'root ::= "a"', "json_schema": {}}, "exclude each other"),
    ],
)
def test_options_validate_the_constraint(kw: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        GenerationOptions(**kw)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_options_keep_the_schema_as_given() -> None:
    opts = GenerationOptions(json_schema=SCHEMA)
    assert opts.to_dict()["json_schema"] == SCHEMA
    assert GenerationOptions.from_json(opts.to_json()) == opts
    assert opts.grammar_text() is not None and GenerationOptions().grammar_text() is None


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_json_schema_output_validates(smol: LlamaCppTextModel, temperature: float) -> None:
    for seed in (1, 2):
        opts = GenerationOptions(json_schema=SCHEMA, temperature=temperature, seed=seed, max_tokens=200)
        check(smol.generate("Describe a person as JSON.", opts))


def test_grammar_option(smol: LlamaCppTextModel) -> None:
    opts = GenerationOptions(grammar='root ::= ("yes" | "no") "."', temperature=0.8, seed=3, max_tokens=8)
    assert smol.generate("Is water wet?", opts) in ("yes.", "no.")


def test_a_bad_grammar_is_a_config_error(smol: LlamaCppTextModel) -> None:
    with pytest.raises(InvalidConfigError):
        smol.generate("x", GenerationOptions(grammar="root ::= missing-rule", max_tokens=4))


def test_free_requests_are_unaffected_by_constrained_ones(smol: LlamaCppTextModel) -> None:
    free = GenerationOptions(temperature=0, max_tokens=24, raw=True)
    alone = smol.generate("The river flows", free)
    smol._engine.stats["max_batched_sequences"] = 0  # a high-water mark: from here, this test's alone
    out: dict[str, str] = {}
    constrained = GenerationOptions(json_schema=SCHEMA, temperature=0.8, seed=5, max_tokens=200)
    threads = [
        threading.Thread(target=lambda: out.__setitem__("json", smol.generate("A person:", constrained))),
        threading.Thread(target=lambda: out.__setitem__("free", smol.generate("The river flows", free))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    check(out["json"])
    assert out["free"] == alone
    assert smol.stats["max_batched_sequences"] >= 2  # they shared decode steps


def test_cli_generate_json_schema(smollm2_path: Path, tmp_path: Path) -> None:
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(SCHEMA))
    for source in (str(schema_file), json.dumps(SCHEMA)):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "llamacffi",
                "generate",
                "--json-schema",
                source,
                "-n",
                "200",
                "--seed",
                "1",
                "-t",
                "1",
                "A person:",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ),
        )
        assert out.returncode == 0, out.stderr
        check(out.stdout.strip())
    bad = subprocess.run(
        [sys.executable, "-m", "llamacffi", "generate", "--json-schema", '{"not": {}}', "x"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "#/not" in bad.stderr


def test_a_grammar_the_vocabulary_cannot_spell_fails_alone(smol: LlamaCppTextModel) -> None:
    # U+40000 starts with the byte 0xF1, which no token of SmolLM2's vocabulary holds: sampling finds no allowed
    # token. That request ends with an error; a free request decoding in the same steps is not disturbed.
    from llamacffi.service import InvalidConfigError

    free = GenerationOptions(temperature=0, max_tokens=24)
    alone = smol.generate("Name three colours.", free)
    results: dict[str, object] = {}

    def run(key: str, prompt: str, opts: GenerationOptions) -> None:
        try:
            results[key] = smol.generate(prompt, opts)
        except Exception as exc:
            results[key] = exc

    threads = [
        threading.Thread(
            target=run,
            args=("bad", "Say it.", GenerationOptions(temperature=0, max_tokens=8, grammar='root ::= "\U00040000"')),
        ),
        threading.Thread(target=run, args=("free", "Name three colours.", free)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = results["bad"]  # the caller's grammar: an error of its options, naming the field
    assert isinstance(bad, InvalidConfigError) and "allows no token" in str(bad)
    assert bad.field == "GenerationOptions.grammar"
    assert results["free"] == alone
