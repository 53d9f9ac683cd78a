"""Edge cases of the schema compiler: odd values a client can send, references, large value sets, patterns."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamacffi.grammar import SchemaError, from_json_schema
from llamacffi.server import structured
from llamacffi.server.errors import APIError

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
