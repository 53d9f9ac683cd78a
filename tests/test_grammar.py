"""JSON schemas compiled to GBNF: generation with both models validates, llama.cpp's grammar accepts valid documents
and rejects invalid ones, unenforceable keywords are refused by pointer, and blow-ups are bounded."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import llamacffi
from llamacffi.errors import GrammarError, InvalidArgumentError
from llamacffi.grammar import JSON_GRAMMAR, SchemaError, any_json, from_json_schema
from llamacffi.sampling import NativeSampler

jsonschema = pytest.importorskip("jsonschema")

CORPUS = sorted((Path(__file__).parent / "schemas").glob("*.json"))
MAX_TOKENS = 256
SEEDS = (1, 2, 3)
PROMPT = "Reply with one compact JSON document.\n"


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def validate(doc: Any, schema: Any) -> None:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(doc)


def is_valid(doc: Any, schema: Any) -> bool:
    try:
        validate(doc, schema)
    except jsonschema.ValidationError:
        return False
    return True


def spells(vocab: llamacffi.Vocab, text: str) -> bool:
    """Whether the tokenizer can spell ``text`` (byte-level vocabularies lack a few lead bytes)."""
    return bool(vocab.detokenize(vocab.tokenize(text, add_special=False)) == text)


def accepts(vocab: llamacffi.Vocab, gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar takes ``text`` token by token and may end right after it."""
    with NativeSampler(temperature=0, vocab=vocab, grammar=gbnf) as s:
        for t in vocab.tokenize(text, add_special=False).tolist():
            try:
                s.accept(t)
            except GrammarError:
                return False
        row = np.full(vocab.n_tokens, -np.inf, dtype=np.float32)
        row[vocab.eos] = 0.0
        try:  # end of generation is allowed only where the grammar can end
            return s.sample(row) == vocab.eos
        except InvalidArgumentError:
            return False


# ------------------------------------------------------------------------------------------------ the corpus


def test_formats_are_checked() -> None:
    """jsonschema checks time and date-time only with rfc3339-validator installed (the test extra has it)."""
    checkers = jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers
    assert {"date", "time", "date-time", "uuid"} <= set(checkers)


def test_corpus_is_large_and_compiles() -> None:
    assert len(CORPUS) >= 40
    for path in CORPUS:
        text = from_json_schema(load(path))
        assert text.startswith("root ::= "), path.name


def test_corpus_grammars_parse_in_llama_cpp(smollm2: llamacffi.Model) -> None:
    for path in CORPUS:
        NativeSampler(vocab=smollm2.vocab, grammar=from_json_schema(load(path))).close()


def test_the_largest_schema_compiles_well_within_the_budget() -> None:
    """Counted work, not time (benchmarks.sides.structured times it): the corpus's largest schema takes a small part
    of the budget, and a second compile of the same schema is a cache hit."""
    import llamacffi.grammar as g
    from llamacffi.grammar.compiler import Compiler
    from llamacffi.limits import GRAMMAR_MAX_WORK

    largest = max(CORPUS, key=lambda p: len(from_json_schema(load(p))))
    schema = load(largest)
    compiler = Compiler(schema)
    assert compiler.grammar() == from_json_schema(schema)
    assert compiler.b.work < GRAMMAR_MAX_WORK // 50, f"{largest.name}: {compiler.b.work} steps"
    hits = g._compile.cache_info().hits
    from_json_schema(schema)
    assert g._compile.cache_info().hits == hits + 1


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def generator(request: pytest.FixtureRequest) -> Iterator[tuple[llamacffi.Model, llamacffi.Context]]:
    model: llamacffi.Model = request.getfixturevalue(request.param)
    # one thread: on a shared, busy machine a spinning second thread costs more than it gives
    with llamacffi.Context(model, n_ctx=512, n_batch=64, n_threads=1) as ctx:
        yield model, ctx


def generate(model: llamacffi.Model, ctx: llamacffi.Context, gbnf: str, seed: int, prompt: str = PROMPT) -> str:
    vocab = model.vocab
    ctx.memory.clear()
    pos = ctx.decode_tokens(vocab.tokenize(prompt, add_special=True))
    out: list[int] = []
    with NativeSampler(temperature=0.8, seed=seed, vocab=vocab, grammar=gbnf) as sampler:
        for _ in range(MAX_TOKENS):
            token = sampler.sample(ctx.logits(-1))
            if vocab.is_eog(token):
                return vocab.detokenize(out)
            out.append(token)
            ctx.decode_token(token, pos)
            pos += 1
    raise AssertionError(f"no complete document within {MAX_TOKENS} tokens: {vocab.detokenize(out)!r}")


@pytest.mark.parametrize("path", [p for p in CORPUS if "x-no-generate" not in load(p)], ids=lambda p: p.stem)
def test_generation_validates(generator: tuple[llamacffi.Model, llamacffi.Context], path: Path) -> None:
    model, ctx = generator
    schema = load(path)
    gbnf = from_json_schema(schema)
    for seed in SEEDS:
        text = generate(model, ctx, gbnf, seed)
        validate(json.loads(text), schema)


def test_any_json_object(generator: tuple[llamacffi.Model, llamacffi.Context]) -> None:
    model, ctx = generator
    assert any_json() == JSON_GRAMMAR
    # an example to follow, so that the sampled object ends within MAX_TOKENS
    prompt = 'A user record as JSON: {"name": "Ada", "age": 36}\nAnother user record as JSON:'
    doc = json.loads(generate(model, ctx, JSON_GRAMMAR, 7, prompt))
    assert isinstance(doc, dict) and doc


def test_json_grammar_accepts_and_rejects(smollm2: llamacffi.Model) -> None:
    v = smollm2.vocab
    assert accepts(v, JSON_GRAMMAR, '{"a": [1, -2.5e3, {"b": null}], "c": "x\\ny\\u00e9", "d": true}')
    assert accepts(v, JSON_GRAMMAR, "{}")
    for bad in ("[1]", '"s"', '{"a": 1,}', '{"a" 1}', "{'a': 1}", '{"a": 01}', '{"a": 1}  '):
        assert not accepts(v, JSON_GRAMMAR, bad), bad


# ------------------------------------------------------------------------------------- refused keywords


REFUSED = [
    ({"type": "integer", "multipleOf": 3}, "#/multipleOf", "multipleOf"),
    ({"properties": {"age": {"type": "integer", "multipleOf": 2}}}, "#/properties/age/multipleOf", "multipleOf"),
    ({"type": "number", "minimum": 0.30000000000000004}, "#/minimum", "minimum"),
    (
        {"type": "number", "maximum": 10, "exclusiveMaximum": 1.0000000000000002},
        "#/exclusiveMaximum",
        "exclusiveMaximum",
    ),
    ({"type": "string", "format": "email"}, "#/format", "format"),
    ({"items": {"type": "string", "format": "uri"}}, "#/items/format", "format"),
    ({"not": {"type": "null"}}, "#/not", "not"),
    ({"if": {}, "then": {}}, "#/if", "if"),
    ({"patternProperties": {"^a": {}}}, "#/patternProperties", "patternProperties"),
    ({"propertyNames": {"maxLength": 3}}, "#/propertyNames", "propertyNames"),
    ({"type": "object", "minProperties": 1}, "#/minProperties", "minProperties"),
    ({"type": "array", "uniqueItems": True}, "#/uniqueItems", "uniqueItems"),
    ({"type": "array", "contains": {"const": 1}}, "#/contains", "contains"),
    ({"dependentRequired": {"a": ["b"]}}, "#/dependentRequired", "dependentRequired"),
    ({"unevaluatedProperties": False}, "#/unevaluatedProperties", "unevaluatedProperties"),
    ({"maxLenght": 3}, "#/maxLenght", "maxLenght"),
    ({"type": "string", "nullable": True}, "#/nullable", "nullable"),
    (
        {"$defs": {"a/b": {"type": "string", "pattern": "(?=x)"}}, "$ref": "#/$defs/a~1b"},
        "#/$defs/a~1b/pattern",
        "pattern",
    ),
    ({"type": "string", "pattern": "\\bword"}, "#/pattern", "pattern"),
    ({"type": "string", "pattern": "(a)\\1"}, "#/pattern", "pattern"),
    ({"type": "string", "pattern": "a^b"}, "#/pattern", "pattern"),
    ({"type": "string", "pattern": "(?i)abc"}, "#/pattern", "pattern"),
    ({"type": "string", "pattern": "a*+"}, "#/pattern", "pattern"),
    ({"$ref": "other.json#/x"}, "#/$ref", "$ref"),
    ({"$ref": "#/$defs/missing"}, "#/$ref", "$ref"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "#/oneOf", "oneOf"),
    (
        {
            "oneOf": [
                {"properties": {"k": {"const": 1}}, "required": ["k"]},
                {"properties": {"k": {"const": 2}}, "required": ["k"]},
            ]
        },
        "#/oneOf",
        "oneOf",
    ),
    ({"allOf": [{"pattern": "a"}, {"pattern": "b"}]}, "#/allOf/1/pattern", "pattern"),
    ({"enum": ["a", "bb"], "maxLength": 1}, "#/maxLength", "maxLength"),
    ({"type": "string", "minLength": -1}, "#/minLength", "minLength"),
    ({"type": "strin"}, "#/type", "type"),
    ({"type": "array", "maxItems": 100_000}, "#/maxItems", "maxItems"),
    ({"type": "string", "minLength": 5000}, "#/minLength", "minLength"),
    ({"type": "string", "maxLength": 5000}, "#/maxLength", "maxLength"),
]


@pytest.mark.parametrize(("schema", "ptr", "keyword"), REFUSED, ids=[r[1] + " " + r[2] for r in REFUSED])
def test_refused_keywords_name_their_pointer(schema: Any, ptr: str, keyword: str) -> None:
    with pytest.raises(SchemaError) as info:
        from_json_schema(schema)
    assert info.value.pointer == ptr
    assert info.value.keyword == keyword
    assert ptr in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, llamacffi.LlamaError)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"type": "string", "minLength": 3, "maxLength": 2},
        {"allOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "properties": {"a": False}, "required": ["a"]},
        {"type": "string", "pattern": "^a$", "minLength": 2},
        False,
        "[1, 2]",
        "{not json",
    ],
    ids=str,
)
def test_unsatisfiable_or_malformed_schemas_raise(schema: Any) -> None:
    with pytest.raises(SchemaError):
        from_json_schema(schema)


def test_annotations_and_any_value() -> None:
    assert from_json_schema({}) == from_json_schema(True) == from_json_schema("{}")
    annotated = {
        "title": "t",
        "description": "d",
        "examples": [1],
        "default": 1,
        "$schema": "x",
        "$id": "y",
        "$comment": "c",
        "readOnly": True,
        "deprecated": False,
        "x-vendor": 1,
        "type": "integer",
    }
    assert from_json_schema(annotated) == from_json_schema({"type": "integer"})


# ----------------------------------------------------------------------------- property tests: llama.cpp accepts


# patterns with a generator of matching strings (explicit classes: hypothesis' \d would draw non-ASCII digits)
PATTERNS = [
    "^[a-z]{1,6}$",
    "^[A-Z]{2}-[0-9]{3}$",
    "^(red|green|blue)$",
    "ab+c",
    "^x",
    "y$",
    '^[^"\\\\]{0,4}$',
    "^[0-9a-f]{2}(:[0-9a-f]{2}){0,2}$",
    "^\\w+@\\w+\\.(com|org)$",
    "^\\s?\\d+(\\.\\d{1,2})?$",
]
FORMATS = {
    "date": st.dates().map(lambda d: d.isoformat()),
    "time": st.tuples(
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
        st.sampled_from(["", ".5", ".123"]),
        st.sampled_from(["Z", "+01:00", "-11:30"]),
    ).map(lambda t: f"{t[0]:02}:{t[1]:02}:{t[2]:02}{t[3]}{t[4]}"),
    "uuid": st.uuids().map(str),
}
FORMATS["date-time"] = st.tuples(FORMATS["date"], FORMATS["time"]).map(lambda t: f"{t[0]}T{t[1]}")
KEYS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6)
TEXT = st.text(st.characters(codec="utf-8"), max_size=8)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), TEXT, st.floats(allow_nan=False, allow_infinity=False)
)


def _ascii_match(pattern: str) -> st.SearchStrategy[str]:
    ascii_pattern = pattern.replace("\\d", "[0-9]").replace("\\w", "[A-Za-z0-9_]").replace("\\s", "[ \t]")
    # Python's $ also matches before a final line break; JSON Schema's (ECMA's) does not
    at_end = re.compile(ascii_pattern[:-1] + "\\Z" if ascii_pattern.endswith("$") else ascii_pattern)
    return st.from_regex(ascii_pattern).filter(lambda text: at_end.search(text) is not None)


@st.composite
def integer_case(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    lo = draw(st.none() | st.integers(-(10**9), 10**9))
    hi = draw(st.none() | st.integers(lo if lo is not None else -(10**9), 10**9))
    schema: dict[str, Any] = {"type": "integer"}
    if lo is not None:
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = lo
    if hi is not None:
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = hi
    a = lo if lo is None or "minimum" in schema else lo + 1
    z = hi if hi is None or "maximum" in schema else hi - 1
    if a is not None and z is not None and a > z:
        schema.pop("exclusiveMaximum", None)
        schema.pop("exclusiveMinimum", None)
        a, z = lo, hi
    return schema, draw(st.integers(a if a is not None else -(10**15), z if z is not None else 10**15))


@st.composite
def number_case(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    """Bounds and a document in hundredths (short decimals: the bounded grammar writes no exponent)."""
    lo = draw(st.none() | st.integers(-(10**5), 10**5))
    hi = draw(st.none() | st.integers(lo if lo is not None else -(10**5), 10**5))
    lo_open, hi_open = draw(st.booleans()), draw(st.booleans())
    a = -(10**7) if lo is None else lo + lo_open
    z = 10**7 if hi is None else hi - hi_open
    assume(a <= z)
    schema: dict[str, Any] = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_open else "minimum"] = lo / 100
    if hi is not None:
        schema["exclusiveMaximum" if hi_open else "maximum"] = hi / 100
    x = draw(st.integers(a, z))
    return schema, (x // 100 if x % 100 == 0 and draw(st.booleans()) else x / 100) if x else 0


@st.composite
def string_case(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    kind = draw(st.sampled_from(["plain", "length", "pattern", "format"]))
    if kind == "pattern":
        pattern = draw(st.sampled_from(PATTERNS))
        return {"type": "string", "pattern": pattern}, draw(_ascii_match(pattern))
    if kind == "format":
        fmt = draw(st.sampled_from(sorted(FORMATS)))
        return {"type": "string", "format": fmt}, draw(FORMATS[fmt])
    text = draw(TEXT)
    if kind == "plain":
        return {"type": "string"}, text
    return {
        "type": "string",
        "minLength": len(text) - draw(st.integers(0, len(text))),
        "maxLength": len(text) + draw(st.integers(0, 3)),
    }, text


def leaf_case() -> st.SearchStrategy[tuple[Any, Any]]:
    return st.one_of(
        integer_case(),
        string_case(),
        number_case(),
        st.tuples(
            st.just({"type": "number"}),
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**15), 10**15),
        ),  # 16 digits at most (documented)
        st.tuples(st.just({"type": "boolean"}), st.booleans()),
        st.tuples(st.just({"type": ["null", "string"]}), st.none() | TEXT),
        st.lists(SCALARS, min_size=1, max_size=4).flatmap(
            lambda vs: st.tuples(st.just({"enum": vs}), st.sampled_from(vs))
        ),
        st.tuples(st.just({}), SCALARS),
    )


@st.composite
def array_case(draw: st.DrawFn, inner: st.SearchStrategy[tuple[Any, Any]]) -> tuple[dict[str, Any], Any]:
    item_schema, first = draw(inner)
    n = draw(st.integers(0, 3))
    lo = draw(st.integers(0, n))
    schema: dict[str, Any] = {
        "type": "array",
        "items": item_schema,
        "minItems": lo,
        "maxItems": n + draw(st.integers(0, 2)),
    }
    if draw(st.booleans()):  # a tuple prefix
        return {"type": "array", "prefixItems": [item_schema, {"type": "boolean"}], "items": False}, [first, True]
    # further items are copies of the first: any valid item will do
    return schema, [first] * n


@st.composite
def object_case(draw: st.DrawFn, inner: st.SearchStrategy[tuple[Any, Any]]) -> tuple[dict[str, Any], Any]:
    names = draw(st.lists(KEYS, min_size=0, max_size=4, unique=True))
    props, doc, required = {}, {}, []
    for name in names:
        sub, value = draw(inner)
        props[name] = sub
        if draw(st.booleans()):
            required.append(name)
            doc[name] = value
        elif draw(st.booleans()):
            doc[name] = value
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    extra = draw(st.sampled_from(["false", "absent", "schema"]))
    if extra == "false":
        schema["additionalProperties"] = False
    else:
        if extra == "schema":
            schema["additionalProperties"] = {"type": "integer"}
        for key in draw(st.lists(KEYS, max_size=2, unique=True)):
            if key not in props:
                doc[key] = draw(st.integers(-99, 99)) if extra == "schema" else draw(SCALARS)
    return schema, doc


CASES = st.recursive(
    leaf_case(),
    lambda inner: st.one_of(
        array_case(inner),
        object_case(inner),
        st.tuples(inner, inner).map(lambda ab: ({"anyOf": [ab[0][0], ab[1][0]]}, ab[1][1])),
        inner.map(lambda sd: ({"x-def": sd[0]}, sd[1])),
    ),
    max_leaves=6,
)


def hoist(schema: Any) -> Any:
    """Move every ``{"x-def": s}`` into the root's ``$defs`` behind a ``$ref`` (references resolve from the root)."""
    defs: dict[str, Any] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "x-def" in node:
            name = f"d{len(defs)}"
            defs[name] = None
            defs[name] = walk(node["x-def"])
            return {"$ref": f"#/$defs/{name}"}
        return {k: (v if k in ("enum", "const") else walk(v)) for k, v in node.items()}

    out = walk(schema)
    if defs:
        out = {"$defs": defs, "allOf": [out]} if "$defs" not in out else out
    return out


def spell(doc: Any, style: int) -> str:
    if style == 0:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if style == 1:
        return json.dumps(doc, ensure_ascii=False)
    return json.dumps(doc, ensure_ascii=False, indent=2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=CASES, style=st.integers(0, 2))
def test_valid_documents_are_accepted(smollm2: llamacffi.Model, case: tuple[Any, Any], style: int) -> None:
    schema, doc = hoist(case[0]), case[1]
    text = spell(doc, style)
    if style == 2 and max(len(line) - len(line.lstrip(" ")) for line in text.splitlines()) > 16:
        return  # deeper indentation than the grammar's bounded whitespace allows
    assert is_valid(doc, schema), (schema, doc)  # the generator itself is right
    assume(spells(smollm2.vocab, text))
    assert accepts(smollm2.vocab, from_json_schema(schema), text), (schema, text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=CASES, data=st.data())
def test_invalid_documents_are_rejected(smollm2: llamacffi.Model, case: tuple[Any, Any], data: st.DataObject) -> None:
    schema = hoist(case[0])
    bad = data.draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(KEYS, SCALARS, max_size=2)))
    text = spell(bad, 1)
    assume(not is_valid(bad, schema) and spells(smollm2.vocab, text))
    assert not accepts(smollm2.vocab, from_json_schema(schema), text), (schema, bad)


@pytest.mark.parametrize(
    ("schema", "bad"),
    [
        ({"type": "integer", "minimum": -50, "maximum": 1234}, ["-51", "1235", "-0", "007", "12.0", "-"]),
        ({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}, ["0", "10", "-1"]),
        (
            {"type": "number", "minimum": -2.5, "exclusiveMaximum": 3.25},
            ["-2.51", "3.25", "3.250", "4", "-0", "1e0", "-3", "1.0000000000000001"],
        ),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, ["0", "0.0", "-0.5", "1.01", "2"]),
        ({"type": "string", "format": "date"}, ['"2023-02-29"', '"2024-13-01"', '"0000-01-01"', '"2024-04-31"']),
        ({"type": "string", "format": "date-time"}, ['"2024-01-01T24:00:00Z"', '"2024-01-01T10:00:00"']),
        ({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-42661417400"']),
        ({"type": "string", "pattern": "^[a-z]{2,3}$"}, ['"a"', '"abcd"', '"AB"']),
        ({"type": "string", "maxLength": 3}, ['"abcd"', '"\\n\\n\\n\\n"']),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            ["{}", '{"b": 1}', '{"a": 1, "a": 2}'],
        ),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}, ["[]", "[1, 2, 3]"]),
        ({"type": "object", "additionalProperties": False}, ['{"x": 1}']),
    ],
    ids=lambda v: json.dumps(v)[:40],
)
def test_specific_invalid_documents(smollm2: llamacffi.Model, schema: Any, bad: list[str]) -> None:
    gbnf = from_json_schema(schema)
    for text in bad:
        assert not accepts(smollm2.vocab, gbnf, text), text


# ---------------------------------------------------------------------------------------------- bounded costs


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "(a|b)*a(a|b){12}"},  # an exponential DFA
        {"type": "string", "pattern": "^[a-z]{0,1000}[a-z]{0,1000}$"},  # highly ambiguous
        {"type": "string", "pattern": "^(((a{0,50}){0,50}){0,50})$"},
        {"type": "array", "items": {"type": "array", "maxItems": 2000}, "maxItems": 2000},
        {"type": "integer", "minimum": -(10**100), "maximum": 10**120},
        {"anyOf": [{"type": "string", "format": "date-time", "maxLength": n} for n in range(20, 40)]},
    ],
    ids=lambda s: json.dumps(s)[:50],
)
def test_blowups_return_within_a_bound(schema: Any) -> None:
    t = time.perf_counter()
    try:
        from_json_schema(schema)
    except SchemaError:
        pass
    assert time.perf_counter() - t < 5.0


def test_deep_nesting_is_refused_or_compiled() -> None:
    schema: Any = {"type": "integer"}
    for _ in range(3000):
        schema = {"type": "array", "items": schema}
    t = time.perf_counter()
    with pytest.raises(SchemaError):
        from_json_schema(schema)
    assert time.perf_counter() - t < 5.0


def test_ambiguous_unions_keep_llama_cpp_fast(smollm2: llamacffi.Model) -> None:
    """Nested anyOf of overlapping objects and optional properties: the parser's stacks stay few."""
    obj = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 5} for i in range(12)}}
    schema = {"anyOf": [obj, {"type": "array", "items": {"anyOf": [obj, obj | {"additionalProperties": False}]}}]}
    gbnf = from_json_schema(schema)
    doc = json.dumps([{f"p{i}": "abcde" for i in range(0, 12, 2)}] * 6)
    t = time.perf_counter()
    assert accepts(smollm2.vocab, gbnf, doc)
    assert time.perf_counter() - t < 5.0


# ------------------------------------------------------------------------------------- arbitrary schemas

_TYPES = st.sampled_from(["string", "integer", "object", "array", "number", "null", "boolean"])
_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3) | st.text(max_size=3),
    lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=3), c, max_size=2),
    max_leaves=4,
)


def _schema_dict(c: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    keys = ["a", "b", "c"]
    return st.fixed_dictionaries(
        {},
        optional={
            "type": _TYPES | st.lists(_TYPES, min_size=1, max_size=3) | _JUNK,
            "properties": st.dictionaries(st.sampled_from(keys), c, max_size=3) | _JUNK,
            "required": st.lists(st.sampled_from(keys), max_size=2) | _JUNK,
            "additionalProperties": c | _JUNK,
            "items": c | _JUNK,
            "prefixItems": st.lists(c, max_size=2) | _JUNK,
            "minItems": st.integers(0, 3) | _JUNK,
            "maxItems": st.integers(0, 4),
            "minLength": st.integers(0, 3),
            "maxLength": st.integers(0, 5) | _JUNK,
            "pattern": st.sampled_from(["^a+$", "b", "^(x|y){1,3}", "[0-9]{2}$", "(", "\\p{L}"]) | _JUNK,
            "format": st.sampled_from(["date", "uuid", "time", "email"]) | _JUNK,
            "minimum": st.integers(-20, 20) | st.floats(-5, 5).map(lambda f: round(f, 2)) | _JUNK,
            "maximum": st.integers(-20, 20),
            "exclusiveMinimum": st.integers(-20, 20) | st.booleans(),
            "enum": st.lists(st.none() | st.integers(-3, 3) | st.text(max_size=2), min_size=1, max_size=3) | _JUNK,
            "const": _JUNK,
            "anyOf": st.lists(c, min_size=1, max_size=3) | _JUNK,
            "oneOf": st.lists(c, min_size=1, max_size=2),
            "allOf": st.lists(c, min_size=1, max_size=2) | _JUNK,
            "$ref": st.sampled_from(["#", "#/$defs/a", "#/properties/a", "#/nope", "x.json"]) | _JUNK,
            "$defs": st.fixed_dictionaries({"a": c}) | _JUNK,
        },
    )


ANY_SCHEMA = st.recursive(
    st.booleans() | st.just({}) | st.fixed_dictionaries({"type": _TYPES}), _schema_dict, max_leaves=10
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=ANY_SCHEMA)
def test_any_schema_compiles_to_a_grammar_llama_cpp_parses_or_raises_schema_error(
    smollm2: llamacffi.Model, schema: Any
) -> None:
    try:
        gbnf = from_json_schema(schema)
    except SchemaError:
        return
    NativeSampler(vocab=smollm2.vocab, grammar=gbnf).close()


# ------------------------------------------------------------------- soundness: what the grammar emits validates


@pytest.fixture(scope="module")
def closing_tokens(smollm2: llamacffi.Model) -> Any:
    """Tokens that close strings, objects or arrays, and short ones: favoured so random walks end soon."""
    v = smollm2.vocab
    pieces = [v.token_to_piece(i) for i in range(v.n_tokens)]
    return (
        np.array([any(c in p for c in b'"}]') for p in pieces], dtype=np.float32) * 6
        + np.array([len(p) <= 2 for p in pieces], dtype=np.float32) * 3
    )


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=st.one_of(CASES.map(lambda case: hoist(case[0])), ANY_SCHEMA), seed=st.integers(0, 2**32 - 1))
def test_random_walks_through_the_grammar_validate(
    smollm2: llamacffi.Model, closing_tokens: Any, schema: Any, seed: int
) -> None:
    """Sampling random logits under the grammar (no model): every document it completes is valid."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
        gbnf = from_json_schema(schema)
    except (jsonschema.SchemaError, SchemaError):
        return
    v = smollm2.vocab
    rng = np.random.default_rng(seed)
    out: list[int] = []
    with NativeSampler(temperature=1.0, seed=seed, vocab=v, grammar=gbnf) as sampler:
        for _ in range(48):
            row = rng.normal(0, 2, v.n_tokens).astype(np.float32) + closing_tokens
            row[v.eos] = 30.0  # end as soon as the grammar allows
            try:
                token = sampler.sample(row)
            except InvalidArgumentError:  # a literal with a character this vocabulary cannot spell
                return
            if v.is_eog(token):
                validate(json.loads(v.detokenize(out)), schema)
                return
            out.append(token)
