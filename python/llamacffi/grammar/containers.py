"""Objects and arrays.

An object's properties come in schema order; each optional one may be left out, and extra members (when allowed)
follow the named ones with keys other than theirs. The rules form a chain, one pair per property, so optional
properties cost a linear number of rules, and the parser holds a single stack once a key's first characters
are read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SchemaError
from ..jsontypes import JSON, JSONObject, is_strings
from ..limits import GRAMMAR_MAX_ALTERNATIVES
from .gbnf import TooLarge, json_text, literal
from .keywords import fail, is_unsatisfiable, pointer, unsatisfiable
from .primitives import any_value, ws
from .strings import key_other_than

if TYPE_CHECKING:
    from .compiler import Compiler

__all__ = ["array", "obj"]


def _member(c: Compiler, key_expr: str, value: str, hint: str) -> str:
    w = ws(c.b)
    return c.b.rule(f"{hint}-kv", f'{key_expr} {w} ":" {w} {value} {w}')


def obj(c: Compiler, s: JSONObject, ptr: str, hint: str) -> str | None:
    props = s.get("properties", {})
    required = s.get("required", [])
    extra = s.get("additionalProperties", True)
    if not isinstance(props, dict):
        raise fail("properties must be an object", pointer(ptr, "properties"), "properties")
    if not is_strings(required):
        raise fail("required must be an array of strings", pointer(ptr, "required"), "required")
    need = dict.fromkeys(required)  # a name listed twice is one member, not two
    saved = c.consuming()
    try:
        named: list[tuple[str, str | None, bool]] = []  # (name, member rule or None if it cannot occur, required)
        for name, sub in props.items():
            sub_ptr = pointer(ptr, "properties", name)
            if sub is False:
                if name in need:
                    raise unsatisfiable(f"property {name!r} is required but its schema is false", sub_ptr)
                named.append((name, None, False))
                continue
            try:
                value = c.value(sub, sub_ptr, f"{hint}-{name}")
            except SchemaError as e:
                if name in need or not is_unsatisfiable(e):
                    raise
                named.append((name, None, False))  # no value can match: the property cannot occur
                continue
            named.append((name, _member(c, literal(json_text(name)), value, hint), name in need))
        for name in need:
            if name not in props:
                if extra is False:
                    raise unsatisfiable(
                        f"required property {name!r} is not in properties and additionalProperties is false",
                        pointer(ptr, "required"),
                        "required",
                    )
                value = c.value(extra, pointer(ptr, "additionalProperties"), f"{hint}-{name}")
                named.append((name, _member(c, literal(json_text(name)), value, hint), True))
        extra_member = None
        if extra is not False:
            try:
                value = (
                    c.value(extra, pointer(ptr, "additionalProperties"), f"{hint}-extra")
                    if extra is not True
                    else any_value(c.b)
                )
            except SchemaError as e:
                if not is_unsatisfiable(e):
                    raise
                value = ""  # no extra member can occur
            if value:
                keys = tuple(n for n, _, _ in named)
                extra_member = _member(c, key_other_than(c.b, keys), value, f"{hint}-extra")
    finally:
        c.restore(saved)
    run = most = 1 if extra_member is not None else 0
    for _name, member, req in reversed(named):  # a run of optional members: any of them may come next
        run = 0 if req else run + (member is not None)
        most = max(most, run)
    if most > GRAMMAR_MAX_ALTERNATIVES:
        raise fail(
            f"more than {GRAMMAR_MAX_ALTERNATIVES} optional properties in a row (with extra ones counted as one): "
            f"each may come next, and the grammar's parser would hold a stack for each (make some required)",
            pointer(ptr, "properties"),
            "properties",
        )
    return c.b.rule(hint, f'"{{" {ws(c.b)} {_chain(c, named, extra_member, hint)} "}}"')


def _chain(c: Compiler, named: list[tuple[str, str | None, bool]], extra: str | None, hint: str) -> str:
    """The members between the braces. ``after_i`` holds members i.. once one was written (each comma-led);
    ``first_i`` the same when none was written yet."""
    w = ws(c.b)
    b = c.b
    if extra is not None:
        more = b.rule(f"{hint}-more", f'"," {w} {extra}')
        after = f"{more}*"
        first = b.rule(f"{hint}-extras", f"{extra} {more}*") + "?"
    else:
        after = first = ""
    for _name, member, req in reversed(named):
        if member is None:
            continue
        sep = b.rule(f"{hint}-next", f'"," {w} {member}')
        body = f"{member} {after}".strip()
        tail = f"{sep} {after}".strip() if req else f"{sep}? {after}".strip()
        after = b.rule(f"{hint}-after", tail) if " " in tail else tail
        if req:
            first = body
        else:
            first = b.rule(f"{hint}-first", f"{body} | {first}" if first else f"| {body}")
    return first


def _item(c: Compiler, schema: JSON, ptr: str, hint: str) -> str | None:
    """The rule for an item, or None when no value matches ``schema`` (the array must end before it)."""
    if schema is False:
        return None
    try:
        return c.value(schema, ptr, hint)
    except SchemaError as e:
        if is_unsatisfiable(e):
            return None
        raise


def array(c: Compiler, s: JSONObject, ptr: str, hint: str) -> str | None:
    from .compiler import count

    prefix = s.get("prefixItems")
    prefix_key = "prefixItems"
    items = s.get("items", True)
    items_ptr = pointer(ptr, "items")
    if isinstance(items, list):  # draft 4-7 tuple form
        if prefix is not None:
            raise fail("items as an array together with prefixItems", items_ptr, "items")
        prefix, items, items_ptr = items, s.get("additionalItems", True), pointer(ptr, "additionalItems")
        prefix_key = "items"
    prefix = prefix or []
    if not isinstance(prefix, list):
        raise fail("prefixItems must be an array of schemas", pointer(ptr, "prefixItems"), "prefixItems")
    lo = count(s, "minItems", ptr) or 0
    hi = count(s, "maxItems", ptr)
    if hi is not None and hi < lo:
        return None
    w = ws(c.b)
    saved = c.consuming()
    try:
        elems: list[str] = []
        for i, sub in enumerate(prefix[:hi]):
            item = _item(c, sub, pointer(ptr, prefix_key, i), f"{hint}-{i}")
            if item is None:  # no item can be there: the array ends before it
                hi = i
                break
            elems.append(item)
        k = len(elems)
        rest = None
        if hi is None or hi > k:
            rest = _item(c, items, items_ptr, f"{hint}-item")
            if rest is None:
                hi = k
    finally:
        c.restore(saved)
    if hi is not None and hi < lo:
        return None
    # the members after the first, innermost first: a repetition of `"," ws item ws` for items past the prefix
    tail = ""
    if rest is not None:
        more = c.b.rule(f"{hint}-more", f'"," {w} {rest} {w}')
        r_lo = max(lo - max(k, 1), 0)
        r_hi = None if hi is None else hi - max(k, 1)
        try:
            tail = c.b.repeat(more, r_lo, r_hi)
        except TooLarge as e:
            key = "maxItems" if hi is not None else "minItems"
            raise fail(f"{key}: the grammar would be too large: {e}", pointer(ptr, key), key) from None
    elements = elems if elems else ([rest] if rest is not None else [])
    for i in range(len(elements) - 1, 0, -1):
        step = f'"," {w} {elements[i]} {w} {tail}'.strip()
        tail = c.b.rule(f"{hint}-tail", step)
        if i >= lo:
            tail += "?"
    if not elements:
        return c.b.rule(hint, f'"[" {w} "]"')
    body = f"{elements[0]} {w} {tail}".strip()
    inner = c.b.rule(f"{hint}-items", body)
    return c.b.rule(hint, f'"[" {w} {inner}{"" if lo > 0 else "?"} "]"')
