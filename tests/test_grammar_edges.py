"""Edge cases of the schema compiler: odd values a client can send, references, large value sets, patterns."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llamacffi
from llamacffi.grammar import SchemaError, from_json_schema
from llamacffi.grammar.automaton import Dfa, prune
from llamacffi.grammar.compiler import Compiler
from llamacffi.grammar.gbnf import TooLarge
from llamacffi.grammar.refs import rebase
from llamacffi.grammar.strings import pattern_dfa
from llamacffi.limits import GRAMMAR_MAX_WORK
from llamacffi.sampling import NativeSampler
from llamacffi.server import structured
from llamacffi.server.errors import APIError
from llamacffi.server.requests import parse_chat
from test_grammar import accepts, validate

jsonschema = pytest.importorskip("jsonschema")


def is_valid(doc: Any, schema: Any) -> bool:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema).is_valid(doc))


# ------------------------------------------------------------------------------------------- odd values

ODD_NUMBERS: list[Any] = [
    -0.0,
    0.0,
    -0,
    1e308,
    -1e308,
    5e-324,
    -5e-324,
    2**53 + 1,
    10**999,
    -(10**999),
    10**1000,
    -(10**1000),
    10**1001,
    -(10**1001),
    10**5000,
    0.1,
    -1.5,
    True,
    None,
    "7",
    [],
]
NUMERIC_KEYS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]
COUNT_KEYS = ["minLength", "maxLength", "minItems", "maxItems"]
ODD_QUANTIFIERS = [
    "{" + "9" * 5000 + "}",
    "{" + "1" * 5000 + ",}",
    "{1," + "2" * 5000 + "}",
    "{0," + "0" * 4999 + "1}",
    "{1001}",
    "{ 2}",
    "{2, 3}",
    "{\u0662}",
    "{}",
    "{,}",
    "{,5}",
]


def compiles_or_refuses(schema: Any) -> None:
    """The compiler's only answers: grammar text, or SchemaError (which the server turns into a 400)."""
    try:
        assert isinstance(from_json_schema(schema), str)
    except SchemaError:
        pass
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    try:
        structured.response_grammar(fmt)
    except APIError as e:
        assert e.status == 400


@pytest.mark.parametrize("key", NUMERIC_KEYS + COUNT_KEYS)
def test_odd_bounds_compile_or_raise_schema_error(key: str) -> None:
    for kind, value in itertools.product(("number", "integer", "string", "array"), ODD_NUMBERS):
        compiles_or_refuses({"type": kind, key: value})


@pytest.mark.parametrize("quantifier", ODD_QUANTIFIERS)
def test_odd_quantifiers_compile_or_raise_schema_error(quantifier: str) -> None:
    compiles_or_refuses({"type": "string", "pattern": f"^a{quantifier}$"})


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(NUMERIC_KEYS + COUNT_KEYS + ["type"]),
        st.sampled_from([*ODD_NUMBERS, "number", "integer", "string", "array"]),
        max_size=3,
    ),
    st.sampled_from([*ODD_QUANTIFIERS, "", "+", "{2,3}"]),
)
def test_fuzz_odd_values_compile_or_raise_schema_error(schema: dict[str, Any], quantifier: str) -> None:
    compiles_or_refuses(schema)
    compiles_or_refuses({**schema, "pattern": f"[a-c]{quantifier}"})


def test_negative_zero_bounds_are_zero() -> None:
    g = from_json_schema({"type": "number", "exclusiveMinimum": -0.0})
    assert g == from_json_schema({"type": "number", "exclusiveMinimum": 0})
    assert from_json_schema(json.loads('{"type":"number","maximum":-0.0}')) == from_json_schema(
        {"type": "number", "maximum": 0}
    )


def test_huge_bounds_name_their_keyword() -> None:
    with pytest.raises(SchemaError) as e:
        from_json_schema(json.loads('{"type":"number","minimum":1' + "0" * 1001 + "}"))
    assert (e.value.pointer, e.value.keyword) == ("#/minimum", "minimum")
    with pytest.raises(SchemaError) as e:
        from_json_schema({"type": "number", "maximum": -(10**1001)})
    assert (e.value.pointer, e.value.keyword) == ("#/maximum", "maximum")


@pytest.mark.parametrize(
    ("bounds", "keyword"),
    [
        ({"minimum": -(10**300)}, "minimum"),
        ({"maximum": 10**300}, "maximum"),
        ({"minimum": 0, "exclusiveMaximum": 10**300}, "exclusiveMaximum"),
        ({"exclusiveMinimum": -(10**300), "maximum": 5}, "exclusiveMinimum"),
    ],
)
def test_an_integer_range_too_large_names_its_bound(bounds: dict[str, int], keyword: str) -> None:
    with pytest.raises(SchemaError, match="integer range is too large") as e:
        from_json_schema({"type": "integer", **bounds})
    assert (e.value.pointer, e.value.keyword) == (f"#/{keyword}", keyword)


# ------------------------------------------------------------------------------------------- patterns


def dfa_matches(d: Dfa, text: str) -> bool:
    """Whether the automaton accepts ``text``."""
    if not d.accept:
        return False
    state = 0
    for ch in text:
        cp = ord(ch)
        for ranges, target in d.edges[state]:
            if any(lo <= cp <= hi for lo, hi in ranges):
                state = target
                break
        else:
            return False
    return d.accept[state]


@pytest.mark.parametrize(
    ("pattern", "exact"),
    [
        *[(p, True) for p in (r"^\S$", r"^[^\s]$", r"^[^\sa]$", r"^[\S]$")],
        *[(p, False) for p in (r"^[^\S]$", r"^\s$", r"^[\s]$", r"^\S\s$")],
    ],
)
def test_space_classes_agree_with_python_re(pattern: str, exact: bool) -> None:
    """What the grammar takes Python's re matches; \\S and [^\\s] take exactly Python's non-blanks within ASCII
    (\\s keeps to ECMA's ASCII blanks, which Python's include)."""
    d = pattern_dfa(pattern)
    for cp in [*range(0x80), 0x85, 0xA0, 0x1680, 0x2028, 0x3000, 0xFEFF, 0xE9]:
        text = chr(cp) if "\\s$" not in pattern[2:] else "a" + chr(cp)
        python = re.search(pattern, text) is not None
        grammar = dfa_matches(d, text)
        assert not grammar or python, hex(cp)
        if exact and cp < 0x80:
            assert grammar == python, hex(cp)


@pytest.mark.parametrize(
    ("pattern", "texts"),
    [
        ("^a{ 2}$", ["a{ 2}", "aa", "a"]),
        ("^a{2, 3}$", ["a{2, 3}", "aa", "aaa"]),
        ("^a{\u0662}$", ["a{\u0662}", "aa"]),
        ("^a{}$", ["a{}", "a"]),
        ("^x{a}$", ["x{a}", "x"]),
        ("^{ 1}b$", ["{ 1}b", "b"]),
        ("^a{2}b{1,2}c{0,}$", ["aab", "aabbc", "aabbbc", "ab", "aabccc"]),
    ],
)
def test_braces_that_are_not_quantifiers_are_text(pattern: str, texts: list[str]) -> None:
    d = pattern_dfa(pattern)
    for text in texts:
        assert dfa_matches(d, text) == (re.search(pattern, text) is not None), text


@pytest.mark.parametrize("pattern", ["a{,5}", "a{,}", "{2}", "{1,3}a"])
def test_braces_the_engines_read_differently_are_refused(pattern: str) -> None:
    with pytest.raises(SchemaError) as e:
        from_json_schema({"type": "string", "pattern": pattern})
    assert e.value.keyword == "pattern"


# ------------------------------------------------------------------------------------------- oneOf


@pytest.mark.parametrize(
    "schema",
    [
        {"oneOf": [{"const": {"a": 1}}, {"const": {"a": 1.0}}]},
        {"oneOf": [{"enum": [[1, 2]]}, {"enum": [[1.0, 2]]}]},
        {"oneOf": [{"const": [{"x": [0]}]}, {"enum": ["a", [{"x": [-0.0]}]]}]},
        {
            "type": "object",
            "oneOf": [
                {"properties": {"k": {"const": [0]}}, "required": ["k"]},
                {"properties": {"k": {"const": [0.0]}}, "required": ["k"]},
            ],
        },
    ],
)
def test_one_of_compares_numbers_by_value_at_any_depth(schema: Any) -> None:
    """1 and 1.0 are one JSON value: alternatives that differ only so may both match, which the grammar cannot
    exclude."""
    with pytest.raises(SchemaError) as e:
        from_json_schema(schema)
    assert e.value.keyword == "oneOf"


def test_enum_and_const_compare_numbers_by_value() -> None:
    g = from_json_schema({"allOf": [{"enum": [[1], [2]]}, {"enum": [[1.0]]}]})
    assert '"[1]"' in g and "[2]" not in g
    g = from_json_schema({"const": {"a": 2}, "enum": [{"a": 2.0}, 3]})
    assert "2.0" in g and "3" not in g


@pytest.mark.parametrize(
    "schema,docs",
    [
        ({"$defs": {"9n": {"type": "integer"}}, "$ref": "#/$defs/9n"}, ["7", '"7"']),
        (
            {
                "$defs": {"u": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer"}]}},
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/u/anyOf/0"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            ['{"a":"abc"}', '{"a":5}', '{"a":"abcd"}'],
        ),
    ],
)
def test_references_to_targets_named_by_a_digit(smollm2: llamacffi.Model, schema: Any, docs: list[str]) -> None:
    # a rule name starts with a letter, so that llama.cpp reads the rule a pointer such as ".../anyOf/0" names
    gbnf = from_json_schema(schema)
    assert all(re.match(r"[a-z]", line) for line in gbnf.splitlines())
    for doc in docs:
        assert accepts(smollm2.vocab, gbnf, doc) == is_valid(json.loads(doc), schema), doc


# ------------------------------------------------------------------------------------------- tools

PET = {  # what pydantic emits for a nested model
    "type": "object",
    "properties": {"pet": {"$ref": "#/$defs/Pet"}, "owner": {"type": "string"}},
    "required": ["pet"],
    "$defs": {
        "Pet": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "kind": {"$ref": "#/$defs/Kind"}},
            "required": ["name", "kind"],
            "additionalProperties": False,
        },
        "Kind": {"enum": ["cat", "dog"]},
    },
    "additionalProperties": False,
}
TREE = {  # recursion to the parameters' root
    "type": "object",
    "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}},
    "additionalProperties": False,
}
CALLS = [
    ("adopt", {"pet": {"name": "Rex", "kind": "dog"}}),
    ("adopt", {"pet": {"name": "Tom", "kind": "cat"}, "owner": "Ann"}),
    ("adopt", {"pet": {"name": "Rex", "kind": "cow"}}),
    ("adopt", {"pet": {"name": "Rex"}}),
    ("adopt", {"pet": {"pet": {"name": "Rex", "kind": "dog"}}}),
    ("tree", {"kids": [{"kids": []}, {}]}),
    ("tree", {"kids": [{"kids": [{"kids": []}]}]}),
    ("tree", {"kids": [{"name": "tree", "arguments": {}}]}),
    ("tree", {"kids": [{"pet": {"name": "Rex", "kind": "dog"}}]}),
]


def tool(name: str, params: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": params}}


@pytest.mark.parametrize("choice", ["required", "adopt", "tree"])
def test_tool_parameters_keep_their_references(smollm2: llamacffi.Model, choice: str) -> None:
    """A forced call's arguments are what the parameters alone accept: their $defs and "#" point into them."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [tool("adopt", PET), tool("tree", TREE)],
        "tool_choice": choice if choice == "required" else {"type": "function", "function": {"name": choice}},
    }
    gbnf = parse_chat(body).grammar
    assert gbnf is not None
    params = {"adopt": PET, "tree": TREE}
    for name, args in CALLS:
        text = json.dumps({"name": name, "arguments": args}, separators=(",", ":"))
        expected = choice in ("required", name) and is_valid(args, params[name])
        assert accepts(smollm2.vocab, gbnf, text) == expected, text


def test_rebase_moves_references_not_data() -> None:
    schema = {
        "properties": {"$ref": {"$ref": "#"}, "c": {"const": {"$ref": "#/x"}, "default": {"$ref": "#"}}},
        "items": [{"$ref": "#/$defs/a"}],
        "$defs": {"a": {"$id": "https://example.com/a", "$ref": "#/b"}},
        "$id": "https://example.com/root",
    }
    assert rebase(schema, "#/$defs/f0") == {
        "properties": {"$ref": {"$ref": "#/$defs/f0"}, "c": {"const": {"$ref": "#/x"}, "default": {"$ref": "#"}}},
        "items": [{"$ref": "#/$defs/f0/$defs/a"}],
        "$defs": {"a": {"$id": "https://example.com/a", "$ref": "#/b"}},
    }


# ------------------------------------------------------------------------------------------- $id


@pytest.mark.parametrize(
    ("schema", "ptr"),
    [
        (
            {
                "$defs": {
                    "b": {"type": "string"},
                    "inner": {
                        "$id": "https://example.com/inner",
                        "$defs": {"b": {"type": "integer"}},
                        "$ref": "#/$defs/b",
                    },
                },
                "$ref": "#/$defs/inner",
            },
            "#/$defs/inner/$id",
        ),
        (
            {
                "type": "object",
                "properties": {
                    "child": {
                        "$id": "node.json",
                        "type": "array",
                        "items": {"anyOf": [{"type": "integer"}, {"$ref": "#"}]},
                    }
                },
            },
            "#/properties/child/$id",
        ),
        ({"items": [{"$id": "a", "properties": {"x": {"$id": "b", "$ref": "#"}}}]}, "#/items/0/$id"),
    ],
)
def test_embedded_id_with_references_is_refused(schema: Any, ptr: str) -> None:
    """References inside an embedded resource resolve against its $id; the compiler resolves against the root."""
    with pytest.raises(SchemaError) as e:
        from_json_schema(schema)
    assert (e.value.pointer, e.value.keyword) == (ptr, "$id")


def test_ids_that_change_no_reference_are_ignored() -> None:
    plain = {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"type": "integer"}}}
    with_ids = {
        **plain,
        "$id": "https://example.com/root",
        "$defs": {"a": {"$id": "https://example.com/a", "type": "integer"}},
        "properties": {"a": {"$ref": "#/$defs/a"}, "b": {"$id": "#frag", "$ref": "#/$defs/a"}},
    }
    assert from_json_schema(plain)
    g = from_json_schema(with_ids)
    assert "int" in g


# ------------------------------------------------------------------------------------------- error pointers

MANY_CONSTS = [{"const": chr(0x100 + i) + str(i)} for i in range(600)]  # 600 next characters after the quote

POINTED = [
    ({"allOf": [{"type": "object"}, {"properties": {"a": {"type": "nope"}}}]}, "#/allOf/1/properties/a/type"),
    ({"allOf": [{"type": "string"}, {"pattern": "(?i)x"}]}, "#/allOf/1/pattern"),
    ({"allOf": [{"pattern": "a"}, {"pattern": "b"}]}, "#/allOf/1/pattern"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "#/allOf/1/type"),
    ({"allOf": [{"type": "string"}, False]}, "#/allOf/1"),
    ({"allOf": [{"type": "string"}, {"minLength": 5000}]}, "#/allOf/1/minLength"),
    ({"allOf": [{"type": "integer", "maximum": 10**1000}]}, "#/allOf/0/maximum"),
    ({"allOf": [{"type": "object", "properties": {"a": False}}, {"required": ["a"]}]}, "#/allOf/0/properties/a"),
    (
        {"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"a": {"format": "email"}}}]},
        "#/allOf/1/properties/a/format",
    ),
    (
        {"allOf": [{"type": "array", "items": {"type": "string"}}, {"items": {"format": "email"}}]},
        "#/allOf/1/items/format",
    ),
    (
        {"allOf": [{"additionalProperties": {"type": "string"}}, {"properties": {"b": {"format": "email"}}}]},
        "#/allOf/1/properties/b/format",
    ),
    ({"allOf": [{"oneOf": [{"type": "integer"}, {"type": "number"}]}]}, "#/allOf/0/oneOf"),
    ({"allOf": [{"anyOf": [{"type": "string"}, {"pattern": "(?i)"}]}]}, "#/allOf/0/anyOf/1/pattern"),
    ({"type": "string", "format": "email", "anyOf": [{"minLength": 1}, {"maxLength": 3}]}, "#/format"),
    ({"$defs": {"x": {"type": "string", "format": "email"}}, "$ref": "#/$defs/x", "maxLength": 3}, "#/$defs/x/format"),
    (
        {
            "$defs": {"x": {"type": "object", "properties": {"a": {"multipleOf": 2}}}},
            "properties": {"p": {"$ref": "#/$defs/x", "type": "object"}},
        },
        "#/$defs/x/properties/a/multipleOf",
    ),
    (
        {
            "$defs": {"x": {"allOf": [{"type": "string"}, {"format": "email"}]}},
            "properties": {"p": {"$ref": "#/$defs/x"}},
        },
        "#/$defs/x/allOf/1/format",
    ),
    (
        {"type": "object", "properties": {"a": {"const": 1, "type": "string"}}, "required": ["a"]},
        "#/properties/a/const",
    ),
    ({"anyOf": MANY_CONSTS}, "#/anyOf"),
    ({"properties": {"k": {"anyOf": [*MANY_CONSTS, {"type": "null"}]}}}, "#/properties/k/anyOf"),
]


def resolves(doc: Any, ptr: str) -> bool:
    """Whether the JSON pointer ``ptr`` (``#/...``) names a place in ``doc``."""
    node = doc
    for raw in ptr[2:].split("/") if ptr != "#" else []:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


@pytest.mark.parametrize(("schema", "ptr"), POINTED, ids=[p for _, p in POINTED])
def test_errors_point_where_the_problem_is(schema: Any, ptr: str) -> None:
    """A problem inside an allOf member, a $ref target or a union is reported at its own place in the document,
    not at the merged schema's (which is no place in it)."""
    with pytest.raises(SchemaError) as e:
        from_json_schema(schema)
    assert e.value.pointer == ptr
    assert resolves(schema, e.value.pointer)
    assert str(e.value).endswith(f"(at {ptr})")


SCHEMA_PARTS = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "object"},
        {"type": "nope"},
        {"format": "email"},
        {"pattern": "(?i)"},
        {"pattern": "^a+$"},
        {"minLength": 5000},
        {"multipleOf": 2},
        {"const": 1},
        {"enum": [1, "a"]},
        {"minimum": 3, "maximum": 1},
        {"required": ["q"]},
        {"additionalProperties": False},
        {"items": False, "minItems": 1},
        {"$ref": "#/$defs/d"},
        {"$ref": "#/$defs/bad"},
        True,
        False,
    ]
)


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    many = st.lists(inner, min_size=1, max_size=3)
    return st.one_of(
        many.map(lambda ms: {"allOf": ms}),
        many.map(lambda ms: {"anyOf": ms}),
        many.map(lambda ms: {"oneOf": ms}),
        st.dictionaries(st.sampled_from(["a", "q"]), inner, max_size=2).map(lambda ps: {"properties": ps}),
        inner.map(lambda sub: {"items": sub}),
        inner.map(lambda sub: {"additionalProperties": sub}),
        st.tuples(inner, inner).map(lambda ab: {k: v for s in ab if isinstance(s, dict) for k, v in s.items()}),
    )


@settings(max_examples=300, deadline=None)
@given(st.recursive(SCHEMA_PARTS, _nest, max_leaves=8), st.recursive(SCHEMA_PARTS, _nest, max_leaves=4))
def test_fuzz_error_pointers_name_a_place_in_the_schema(schema: Any, target: Any) -> None:
    root = dict(schema) if isinstance(schema, dict) else {"allOf": [schema]}
    root["$defs"] = {"d": target, "bad": {"type": "string", "format": "uri"}}
    try:
        from_json_schema(root)
    except SchemaError as e:
        assert resolves(root, e.pointer), (e, root)


# ------------------------------------------------------------------------------------------- many values

WORDS = [f"{a}{b}{c}-{i}" for i, (a, b, c) in enumerate(itertools.product("abcdefghijklmno", "pqrstuvwxyz", "xyz!"))]
assert len(WORDS) > 600


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": [f"S{i}" for i in range(3000)]},
        {"type": "string", "enum": WORDS + [f"S{i}" for i in range(2000)]},
        {"anyOf": [{"const": w} for w in WORDS] + [{"enum": list(range(1500))}, {"type": "boolean"}]},
        {
            "type": "object",
            "properties": {"sku": {"enum": [f"S{i}" for i in range(3000)]}},
            "required": ["sku"],
            "additionalProperties": False,
        },
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(500)}},
    ],
    ids=["enum", "typed-enum", "any-of-consts", "property-enum", "optional-properties"],
)
def test_thousands_of_values_build_a_sampler_and_generate_a_member(smollm2: llamacffi.Model, schema: Any) -> None:
    """Values written as a trie keep llama.cpp's parse stacks few: the sampler is built, and a run under it gives
    a valid document."""
    gbnf = from_json_schema(schema)
    vocab = smollm2.vocab
    with llamacffi.Context(smollm2, n_ctx=256, n_batch=64, n_threads=1) as ctx:
        pos = ctx.decode_tokens(vocab.tokenize("Pick one value as JSON:\n", add_special=True))
        out: list[int] = []
        with NativeSampler(temperature=0.8, seed=1, vocab=vocab, grammar=gbnf) as sampler:
            for _ in range(160):
                token = sampler.sample(ctx.logits(-1))
                if vocab.is_eog(token):
                    break
                out.append(token)
                ctx.decode_token(token, pos)
                pos += 1
    text = vocab.detokenize(out)
    assert is_valid(json.loads(text), schema), text
    if "sku" in text:
        assert accepts(vocab, gbnf, '{"sku":"S5"}') and accepts(vocab, gbnf, '{"sku":"S2999"}')
        assert not accepts(vocab, gbnf, '{"sku":"S3000"}')


def test_too_many_choices_at_one_place_are_refused() -> None:
    """A trie node with more distinct next characters (or a run of more optional properties) than
    limits.GRAMMAR_MAX_ALTERNATIVES is a SchemaError, not a sampler that fails later."""
    with pytest.raises(SchemaError) as e:
        from_json_schema({"enum": [chr(0x4E00 + i) + chr(0x4E00 + i) * (i % 7) for i in range(600)]})
    assert e.value.keyword == "enum"
    with pytest.raises(SchemaError) as e:
        from_json_schema({"type": "object", "properties": {f"p{i}": {} for i in range(600)}})
    assert (e.value.pointer, e.value.keyword) == ("#/properties", "properties")


# ------------------------------------------------------------------------------------------- compile work


def points(n: int) -> str:
    """A bracket class of ``n`` separate code points."""
    return "[" + "".join(chr(0x100 + 2 * i) for i in range(n)) + "]"


def work(schema: Any) -> int:
    """The automaton steps compiling ``schema`` took (it must compile)."""
    c = Compiler(schema)
    c.grammar()
    return c.b.work


def test_a_long_class_costs_linear_work() -> None:
    """Splitting a class of n code points sweeps its ends once: the work grows with n, not n squared."""
    small, large = (
        work({"type": "string", "pattern": f"^{points(1000)}$"}),
        work({"type": "string", "pattern": f"^{points(8000)}$"}),
    )
    assert large <= 10 * small


@pytest.mark.parametrize("pattern", ["^a{1000}$", "^[0-9]{1000}$", "^\\d{0,1000}$", "^a{1000,}$", "^x[a-f]{1,1000}y$"])
def test_counted_repetition_costs_linear_work(pattern: str) -> None:
    """A counted repetition is a chain of states; minimizing it takes the smaller half of each split, so ten times
    the count costs about ten times the work (it was quadratic, and a{1000} was past the budget)."""
    small = work({"type": "string", "pattern": pattern.replace("1000", "100")})
    assert work({"type": "string", "pattern": pattern}) <= 12 * small


def test_a_long_counted_repetition_is_enforced_by_llama_cpp(smollm2: llamacffi.Model) -> None:
    gbnf = from_json_schema({"type": "string", "pattern": "^[0-9]{1000}$"})
    vocab = smollm2.vocab
    assert accepts(vocab, gbnf, json.dumps("7" * 1000))
    assert not accepts(vocab, gbnf, json.dumps("7" * 999))
    assert not accepts(vocab, gbnf, json.dumps("7" * 1001))
    assert not accepts(vocab, gbnf, json.dumps("7" * 500 + "x" + "7" * 499))


REGEX_ATOMS = st.sampled_from(["a", "b", "[ab]", "[^a]", ".", "[0-5]", "\\d", "\u00e9"])


def _regex(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    counts = st.sampled_from(["*", "+", "?", "{2}", "{0,3}", "{2,}"])
    return st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map(lambda ab: f"({ab[0]}|{ab[1]})"),
        st.tuples(inner, counts).map(lambda rc: f"(?:{rc[0]}){rc[1]}"),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(REGEX_ATOMS, _regex, max_leaves=8),
    st.booleans(),
    st.booleans(),
    st.lists(st.text("ab05x\u00e9", max_size=10), max_size=8),
)
def test_fuzz_pattern_automata_match_as_python_re(body: str, start: bool, end: bool, texts: list[str]) -> None:
    """Minimal automata (and the one state an unanchored end becomes) take what Python's re finds."""
    pattern = ("^" if start else "") + body + ("$" if end else "")
    try:
        d = pattern_dfa(pattern)
    except TooLarge:
        return
    for text in texts:
        assert dfa_matches(d, text) == (re.search(pattern, text) is not None), (pattern, text)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": f"^{points(1000)}{{1,300}}$"},  # a 1 KB pattern that took minutes
        {"type": "object", "properties": {f"p{i}": {"pattern": f"^x{i}{points(130)}{{1,300}}$"} for i in range(30)}},
        {"type": "integer", "maximum": 10**999},
    ],
    ids=["1000x300", "many-patterns", "integer-1e999"],
)
def test_compile_work_is_bounded(schema: Any) -> None:
    """Past limits.GRAMMAR_MAX_WORK automaton steps a schema is refused: a clock only guards against a hang."""
    t = time.perf_counter()
    with pytest.raises(SchemaError) as e:
        from_json_schema(schema)
    assert "steps" in str(e.value) or "too large" in str(e.value)
    assert time.perf_counter() - t < 30


def test_large_classes_are_shared_rules() -> None:
    """A class taken by every state of a repetition is one rule, so the grammar text stays small."""
    schema = {"type": "string", "pattern": f"^{points(120)}{{1,300}}$"}
    assert work(schema) <= GRAMMAR_MAX_WORK
    assert len(from_json_schema(schema)) < 40_000


def test_tool_parameters_share_one_budget() -> None:
    """All functions' parameters are compiled as one schema: many costly ones are refused together (a 400)."""

    def params(i: int) -> dict[str, Any]:
        return {"type": "object", "properties": {"s": {"type": "string", "pattern": f"^{i}{points(130)}{{1,300}}$"}}}

    structured.parse_tools([tool("f0", params(0))], "auto")
    many = [tool(f"f{i}", params(i)) for i in range(GRAMMAR_MAX_WORK // work(params(0)) + 1)]
    with pytest.raises(APIError) as e:
        structured.parse_tools(many, "auto")
    assert e.value.status == 400


@pytest.mark.parametrize(("pattern", "text"), [("^a{00005}$", "aaaaa"), ("^a{0002,0003}$", "aaa")])
def test_counts_with_leading_zeros_are_their_numbers(pattern: str, text: str) -> None:
    d = pattern_dfa(pattern)
    assert dfa_matches(d, text) and not dfa_matches(d, text + "a")


# ----------------------------------------------------------------------------------- merged items, empty schemas


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        # the second member's items apply to every item, the first one's included
        ({"allOf": [{"prefixItems": [{"type": "integer"}]}, {"items": {"type": "string"}}]}, ["[]"], ["[1]", '["a"]']),
        (
            {
                "allOf": [
                    {"prefixItems": [{"type": "integer"}, {"type": "string"}]},
                    {"prefixItems": [{"minimum": 0}], "items": {"type": "string"}},
                ]
            },
            ['[1,"a"]', '[1,"a","b"]', "[0]"],
            ['[-1,"a"]', "[1,2]", '[1,"a",3]'],
        ),
        ({"prefixItems": [{"type": "integer"}], "anyOf": [{"items": {"type": "string"}}]}, ["[]"], ["[1]"]),
        ({"prefixItems": [{}, False]}, ["[]", "[1]"], ["[1,2]"]),
        ({"type": "array", "items": {"allOf": [{"type": "string"}, {"type": "integer"}]}}, ["[]"], ["[1]", '["a"]']),
        (
            {"type": "object", "properties": {"a": {"allOf": [{"type": "string"}, {"type": "integer"}]}}},
            ['{"b":1}'],
            ['{"a":1}', '{"a":"x"}'],
        ),
        ({"type": "object", "additionalProperties": {"enum": [1], "type": "string"}}, ["{}"], ['{"a":1}']),
        ({"type": ["object", "null"], "properties": {"a": False}, "required": ["a"]}, ["null"], ["{}"]),
        ({"type": "object", "required": ["x", "x"]}, ['{"x":1}'], ["{}"]),
    ],
    ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None,
)
def test_merged_items_and_empty_sub_schemas(
    smollm2: llamacffi.Model, schema: Any, good: list[str], bad: list[str]
) -> None:
    """Items merge position by position (a member's items reach past another's prefixItems); an item, property
    or type that no value can match ends the array there, is left out, or leaves the other types."""
    gbnf = from_json_schema(schema)
    for text in good:
        assert is_valid(json.loads(text), schema) and accepts(smollm2.vocab, gbnf, text), text
    for text in bad:
        assert not is_valid(json.loads(text), schema) and not accepts(smollm2.vocab, gbnf, text), text


class _CountedEdges(list[Any]):
    """A state's edges that count how often they are walked."""

    walks = 0

    def __iter__(self) -> Any:
        _CountedEdges.walks += 1
        return super().__iter__()


def test_pruning_a_long_chain_takes_linear_time() -> None:
    """Dead states are found walking edges backwards once (a pass per state of a chain took seconds, uncounted):
    counted, each state's edges are walked a bounded number of times."""
    d = Dfa()
    for i in range(2000):
        d.add(i == 1999)
    for i in range(1999):
        d.edges[i].append((((0x61, 0x61),), i + 1))
    d.edges = [_CountedEdges(es) for es in d.edges]
    _CountedEdges.walks = 0
    assert len(prune(d).accept) == 2000
    assert _CountedEdges.walks <= 3 * 2000


@pytest.mark.parametrize(
    "schema", [{"type": "string", "pattern": "\ud800"}, {"type": "string", "pattern": "^[\ud800-\udfff]$"}]
)
def test_a_pattern_only_surrogates_match_is_unsatisfiable(schema: Any) -> None:
    """No string here can hold a surrogate code point: a pattern that needs one matches nothing (it was an IndexError
    with a length, and otherwise a string the grammar never let end)."""
    with pytest.raises(SchemaError):
        from_json_schema(schema)
    with pytest.raises(SchemaError):
        from_json_schema({**schema, "maxLength": 3})


def test_lone_surrogates_in_values_and_names_are_written_as_escapes(smollm2: llamacffi.Model) -> None:
    """UTF-8 cannot hold a lone surrogate, so an enum value or property name with one is spelled with its escape."""
    vocab = smollm2.vocab
    schema = {"enum": ["\ud800x", "y"]}
    assert accepts(vocab, from_json_schema(schema), '"\\ud800x"')
    schema = {"type": "object", "properties": {"\ud83d": {"type": "integer"}}, "required": ["\ud83d"]}
    assert accepts(vocab, from_json_schema(schema), '{"\\ud83d":1}')


SOUND_PARTS = st.sampled_from(
    [
        {"type": "string", "maxLength": 2},
        {"type": "string", "pattern": "^[ab]+$"},
        {"type": "string", "format": "date"},
        {"type": "integer", "minimum": -3, "maximum": 7},
        {"type": "number", "minimum": -1.5, "exclusiveMaximum": 2.25},
        {"type": ["boolean", "null"]},
        {"type": "object", "properties": {"k": {"const": "x"}, "v": {"type": "integer"}}, "required": ["k"]},
        {"properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        {"prefixItems": [{"type": "integer"}], "maxItems": 2},
        {"items": {"type": "string"}},
        {"minItems": 1},
        {"enum": [1, "a", [1], None]},
        {"const": {"a": 1}},
        {"$ref": "#/$defs/d"},
        {},
    ]
)


@pytest.fixture(scope="module")
def short_tokens(smollm2: llamacffi.Model) -> Any:
    """Logits that favour short tokens, so that documents sampled under a grammar end soon."""
    import numpy as np

    vocab = smollm2.vocab
    return np.array([-0.8 * len(vocab.detokenize([t])) for t in range(vocab.n_tokens)], dtype=np.float32)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(SOUND_PARTS, _nest, max_leaves=6), st.recursive(SOUND_PARTS, _nest, max_leaves=3), st.integers(0, 999)
)
def test_fuzz_sampled_documents_are_valid(
    smollm2: llamacffi.Model, short_tokens: Any, schema: Any, target: Any, seed: int
) -> None:
    """What llama.cpp samples under a schema's grammar, from noise, is valid under the schema."""
    import numpy as np

    root = dict(schema) if isinstance(schema, dict) else {"allOf": [schema]}
    root["$defs"] = {"d": target}
    try:
        gbnf = from_json_schema(root)
    except SchemaError:
        return
    vocab = smollm2.vocab
    rng = np.random.default_rng(seed)
    for run in range(2):
        with NativeSampler(temperature=1.0, seed=seed + run, vocab=vocab, grammar=gbnf) as sampler:
            out: list[int] = []
            for _ in range(100):
                row = (short_tokens + rng.normal(0, 2, vocab.n_tokens)).astype(np.float32)
                row[vocab.eos] = 3.0
                token = sampler.sample(row)
                if vocab.is_eog(token):
                    text = vocab.detokenize(out)
                    validate(json.loads(text), root)
                    break
                out.append(token)
