"""The schema walk: each schema node becomes a GBNF rule; objects and arrays are in :mod:`.containers`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from urllib.parse import unquote

from ..errors import SchemaError
from ..jsontypes import JSON, JSONObject, is_strings
from ..limits import GRAMMAR_MAX_BOUND_DIGITS, GRAMMAR_MAX_REPEAT, GRAMMAR_MAX_SIGNIFICANT
from .decimals import number_range, significant_digits
from .gbnf import Builder, TooLarge, choice, json_text, literal
from .keywords import ANNOTATIONS, TYPES, check_keywords, fail, is_unsatisfiable, pointer, unsatisfiable
from .merge import canonical, conjoin, merge_all, same_value
from .numbers import integer_range
from .oneof import disjoint
from .primitives import any_value, boolean, number
from .refs import children, subschemas
from .regex import PatternError
from .strings import FORMATS, constrained_string

__all__ = ["Compiler"]

Schema = JSON  # a JSON Schema: an object, or true / false


class Compiler:
    """Compiles one root schema; rules for ``$ref`` targets and merged ``allOf`` nodes are shared and may recurse.

    Errors name the place in the document where the problem is: a sub-schema reached through a merged ``allOf``
    or a ``$ref`` keeps its own pointer (:meth:`at`), and a keyword of a merged schema is traced back to the
    member that gave it."""

    def __init__(self, root: Schema) -> None:
        _check_embedded_ids(root)
        self.root = root
        self.b = Builder()
        self._named: dict[str, str] = {}  # $ref target pointer or canonical merged schema -> rule
        self._open: dict[str, str] = {}  # those entered since the last consumed character (left recursion) -> pointer
        # id of each object schema of the document (and of views of one, such as a union's other keywords) ->
        # (the schema, kept alive so that its id stays its own; its pointer)
        self._places: dict[int, tuple[JSON, str]] = {}
        for where, node in subschemas(root):
            self._places.setdefault(id(node), (node, where))

    def grammar(self) -> str:
        return self.b.text(self.value(self.root, "#", "value"))

    def rule_of(self, target: str) -> str:
        """The rule compiled for the ``$ref`` target ``target`` (after :meth:`grammar`; KeyError if none is)."""
        return self._named[target]

    # ---------------------------------------------------------------------------------------- references

    def resolve(self, ref: JSON, ptr: str) -> tuple[Schema, str]:
        """The schema ``ref`` points to inside the root document, and its pointer."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise fail(f'$ref {ref!r}: only references inside the schema ("#...") are supported', ptr, "$ref")
        node = self.root
        parts = [] if ref in ("#", "#/") else ref[2:].split("/") if ref.startswith("#/") else None
        if parts is None:
            raise fail(f"$ref {ref!r}: anchors are not supported, use a JSON pointer such as #/$defs/name", ptr, "$ref")
        for raw in parts:
            key = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise fail(f"$ref {ref!r} points to nothing", ptr, "$ref")
        return node, "#" + ref[1:] if len(ref) > 1 else "#"

    def at(self, schema: Schema, ptr: str) -> str:
        """The pointer of ``schema`` in the document when it is one of the document's sub-schemas, else ``ptr`` (the
        place it is compiled at)."""
        found = self._places.get(id(schema))
        return found[1] if found is not None and found[0] is schema else ptr

    def _shared(self, key: str, hint: str, build: Callable[[], str], ptr: str) -> str:
        """One rule per ``key``, reserved before its body is built so that the body may refer to it."""
        if key in self._named:
            if key in self._open:
                raise fail("a reference cycle that consumes no character (left recursion)", self._open[key])
            return self._named[key]
        name = self._named[key] = self.b.name(hint)
        self._open[key] = ptr
        try:
            body = build()
        except SchemaError:
            # Rules built meanwhile may refer to the name: it matches nothing (what an unsatisfiable schema
            # means; any other error ends the compilation), and the next use builds it again.
            del self._named[key]
            self.b.define(name, _NOTHING)
            raise
        finally:
            self._open.pop(key, None)
        self.b.define(name, body)
        return name

    def consuming(self) -> dict[str, str]:
        """Start a construct that consumes a character first: references below it are not left-recursive."""
        saved, self._open = self._open, {}
        return saved

    def restore(self, saved: dict[str, str]) -> None:
        self._open = saved

    # ---------------------------------------------------------------------------------------------- values

    def value(self, schema: Schema, ptr: str, hint: str) -> str:
        """A GBNF symbol (rule name or literal) for the documents ``schema`` accepts."""
        ptr = self.at(schema, ptr)
        try:
            return self._value(schema, ptr, hint)
        except TooLarge as e:
            raise fail(f"the grammar would be too large: {e}", ptr) from None

    def _value(self, schema: Schema, ptr: str, hint: str) -> str:
        if schema is True:
            return any_value(self.b)
        if schema is False:
            raise unsatisfiable("the schema false matches no value", ptr)
        if not isinstance(schema, dict):
            raise fail(f"a schema must be an object or a boolean, not {type(schema).__name__}", ptr)
        check_keywords(schema, ptr)
        s = {k: v for k, v in schema.items() if k not in ANNOTATIONS and not k.startswith("x-")}
        if not s:
            return any_value(self.b)
        if set(s) == {"$ref"}:
            target, target_ptr = self.resolve(s["$ref"], pointer(ptr, "$ref"))
            name = target_ptr.rsplit("/", 1)[-1] or "ref"
            return self._shared(target_ptr, name, lambda: self.value(target, target_ptr, name), target_ptr)
        if "allOf" in s or "$ref" in s:
            return self._shared(canonical(s), hint, lambda: self._merged(s, ptr, hint), ptr)
        if "anyOf" in s or "oneOf" in s:
            return self.union(s, ptr, hint)
        if "enum" in s or "const" in s:
            return self.enum(s, ptr, hint)
        return self.typed(s, ptr, hint)

    def _merged(self, s: JSONObject, ptr: str, hint: str) -> str:
        merged = merge_all(s, ptr, self.resolve, self.at)
        if merged.schema is False:
            raise unsatisfiable("allOf: this member is false, no value can match", merged.false_at, "allOf")
        try:
            return self.value(merged.schema, ptr, hint)
        except SchemaError as e:
            where = merged.origin(e.pointer)
            if where == e.pointer:
                raise
            raise _moved(e, where) from None

    def union(self, s: JSONObject, ptr: str, hint: str) -> str:
        key = "anyOf" if "anyOf" in s else "oneOf"
        if "anyOf" in s and "oneOf" in s:
            raise fail(
                "anyOf and oneOf in one schema are not supported (wrap one in allOf)", pointer(ptr, "oneOf"), "oneOf"
            )
        alts = s[key]
        if not isinstance(alts, list) or not alts:
            raise fail(f"{key} must be a non-empty array of schemas", pointer(ptr, key), key)
        rest = {k: v for k, v in s.items() if k != key}
        self._places[id(rest)] = (rest, ptr)  # each member is met with it: its keywords are this schema's
        members = [
            (conjoin(rest, alt) if rest else alt, self.at(alt, pointer(ptr, key, i))) for i, alt in enumerate(alts)
        ]
        members = [(m, p) for m, p in members if m is not False]
        if key == "oneOf":
            flat = [
                (merge_all(m, p, self.resolve, self.at).schema if isinstance(m, dict) else m, p) for m, p in members
            ]
            for i, (a, pa) in enumerate(flat):
                for bm, pb in flat[i + 1 :]:
                    if not disjoint(a, bm, self.resolve):
                        raise fail(
                            f"oneOf: {pa} and {pb} may both match a document, and the grammar cannot "
                            f"exclude that (use anyOf, or give each a distinct const / type)",
                            pointer(ptr, "oneOf"),
                            "oneOf",
                        )
        exprs: list[str] = []
        texts: list[str] = []  # the values of members that only list values, compiled together as one trie
        for m, p in members:
            try:
                if isinstance(m, dict) and _only_values(m):
                    check_keywords(m, p)
                    texts += self.enum_texts(m, p)
                else:
                    exprs.append(self.value(m, p, hint))
            except SchemaError as e:
                if not is_unsatisfiable(e):
                    raise
        if texts:
            exprs.insert(0, self.choice(texts, hint, pointer(ptr, key), key))
        if not exprs:
            raise unsatisfiable(f"no member of {key} can match", pointer(ptr, key))
        exprs = list(dict.fromkeys(exprs))
        return exprs[0] if len(exprs) == 1 else self.b.rule(hint, " | ".join(exprs))

    def enum(self, s: JSONObject, ptr: str, hint: str) -> str:
        return self.choice(self.enum_texts(s, ptr), hint, pointer(ptr, "enum"), "enum")

    def choice(self, texts: list[str], hint: str, ptr: str, keyword: str) -> str:
        """A symbol for the JSON texts ``texts``, the values that ``keyword`` at ``ptr`` lists: one literal, or a
        trie so that llama.cpp keeps few stacks."""
        texts = list(dict.fromkeys(texts))
        if len(texts) == 1:
            return literal(texts[0])
        try:
            seq = choice(self.b, texts, hint)
            return seq if _NAME.fullmatch(seq) else self.b.rule(hint, seq)
        except TooLarge as e:
            raise fail(f"{keyword}: {e}", ptr, keyword) from None

    def enum_texts(self, s: JSONObject, ptr: str) -> list[str]:
        """The compact JSON spellings of the values an enum / const schema admits."""
        values = s.get("enum", [s.get("const")])
        if not isinstance(values, list) or not values:
            raise fail("enum must be a non-empty array", pointer(ptr, "enum"), "enum")
        if "const" in s:
            values = [v for v in values if same_value(v) == same_value(s["const"])]
        for key in s:
            if key not in ("enum", "const", "type"):
                raise fail(
                    f"{key} next to enum / const is not enforced (list only the values that match)",
                    pointer(ptr, key),
                    key,
                )
        types = _type_list(s, ptr)
        listed = "enum" if "enum" in s else "const"
        where = pointer(ptr, listed)
        texts = []
        for v in values:
            if types is None or any(_is_type(v, t) for t in types):
                try:
                    texts.append(json_text(v))
                except (TypeError, ValueError):
                    raise fail(f"{listed} value {v!r} is not JSON", where, listed) from None
        if not texts:
            raise unsatisfiable("no enum / const value has the schema's type", where)
        return texts

    def typed(self, s: JSONObject, ptr: str, hint: str) -> str:
        from .containers import array, obj

        types = _type_list(s, ptr)
        if types is None:
            types = [t for t in TYPES if t != "integer"]
        elif "integer" in types and "number" in types:
            types = [t for t in types if t != "integer"]
        exprs: list[str] = []
        why: SchemaError | None = None  # why no value of a type meets the constraints, when said
        for t in types:
            expr: str | None
            try:
                if t == "object":
                    expr = obj(self, s, ptr, hint)
                elif t == "array":
                    expr = array(self, s, ptr, hint)
                elif t == "string":
                    expr = self.string(s, ptr, hint)
                elif t in ("number", "integer"):
                    expr = self.numeric(s, ptr, hint, t)
                elif t == "boolean":
                    expr = boolean(self.b)
                else:
                    expr = literal("null")
            except SchemaError as e:
                if not is_unsatisfiable(e):
                    raise
                expr, why = None, why or e  # other types may still match
            if expr is not None:
                exprs.append(expr)
        if not exprs:
            raise why or unsatisfiable("no value of the schema's type(s) meets its constraints", ptr)
        return exprs[0] if len(exprs) == 1 else self.b.rule(hint, " | ".join(exprs))

    def string(self, s: JSONObject, ptr: str, hint: str) -> str | None:
        lo = count(s, "minLength", ptr) or 0
        hi = count(s, "maxLength", ptr)
        pattern = s.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise fail("pattern must be a string", pointer(ptr, "pattern"), "pattern")
        fmt = s.get("format")
        if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
            raise fail(
                f"format {fmt!r} is not enforced (enforced formats: {', '.join(FORMATS)})",
                pointer(ptr, "format"),
                "format",
            )
        try:
            return constrained_string(self.b, hint, lo, hi, pattern, fmt)
        except PatternError as e:
            raise fail(f"pattern: {e}", pointer(ptr, "pattern"), "pattern") from None
        except TooLarge as e:
            where = (
                "pattern"
                if pattern is not None
                else "format"
                if fmt is not None
                else "minLength"
                if lo > GRAMMAR_MAX_REPEAT
                else "maxLength"
            )
            raise fail(f"{where}: the grammar would be too large: {e}", pointer(ptr, where), where) from None

    def numeric(self, s: JSONObject, ptr: str, hint: str, t: str) -> str | None:
        (lo, lo_open, lo_key), (hi, hi_open, hi_key) = _bounds(s, ptr)
        if t == "number":
            if lo is None and hi is None:
                return number(self.b)
            try:
                return number_range(self.b, _decimal(lo, lo_key, ptr), lo_open, _decimal(hi, hi_key, ptr), hi_open)
            except (TooLarge, PatternError) as e:
                key = lo_key if hi is None or (lo is not None and abs(lo) >= abs(hi)) else hi_key
                raise fail(f"{key}: the number range is too large to enforce: {e}", pointer(ptr, key), key) from None
        flo = None if lo is None else Fraction(lo)
        fhi = None if hi is None else Fraction(hi)
        ilo = None if flo is None else (math.floor(flo) + 1 if lo_open else math.ceil(flo))
        ihi = None if fhi is None else (math.ceil(fhi) - 1 if hi_open else math.floor(fhi))
        try:
            return integer_range(self.b, ilo, ihi)
        except TooLarge as e:
            key = lo_key if ihi is None or (ilo is not None and abs(ilo) >= abs(ihi)) else hi_key
            raise fail(f"{key}: the integer range is too large to enforce: {e}", pointer(ptr, key), key) from None


def _decimal(v: float | None, key: str, ptr: str) -> Decimal | None:
    """A bound as the decimal its JSON spelling gives (a float's shortest repr), within GRAMMAR_MAX_SIGNIFICANT
    digits."""
    if v is None:
        return None
    out = Decimal(v) if isinstance(v, int) else Decimal(repr(v))
    if out == 0:
        out = Decimal(0)  # -0.0 is 0: its sign would be read as a digit
    if significant_digits(out) > GRAMMAR_MAX_SIGNIFICANT:
        raise fail(
            f"{key}: a bound on a non-integer number may have at most {GRAMMAR_MAX_SIGNIFICANT} significant digits "
            f"(beyond that, float rounding decides)",
            pointer(ptr, key),
            key,
        )
    return out


_NAME = re.compile(r"[a-z][a-z0-9-]*")  # a rule name


def _only_values(s: JSONObject) -> bool:
    """Whether ``s`` admits just the values its enum / const lists (with at most a type to filter them)."""
    keys = {k for k in s if k not in ANNOTATIONS and not k.startswith("x-")}
    return bool(keys & {"enum", "const"}) and keys <= {"enum", "const", "type"}


def _check_embedded_ids(root: Schema) -> None:
    """Refuse a sub-schema whose ``$id`` changes what its ``#...`` references point to.

    An ``$id`` below the root starts an embedded resource, and a ``#...`` reference inside it resolves against
    that resource, not the document. References resolve here against the document only, so such an ``$id`` is
    refused; one whose sub-schemas hold no ``#...`` reference changes nothing and is ignored like the other
    annotations."""
    todo = _children_of(root)
    while todo:
        where, node = todo.pop()
        ident = node.get("$id")
        if isinstance(ident, str) and ident.partition("#")[0]:
            for inner, sub in subschemas(node, where):
                ref = sub.get("$ref")
                if isinstance(ref, str) and ref.startswith("#"):
                    raise fail(
                        f"$id {ident!r} makes the reference {ref!r} at {inner} resolve inside its own resource; "
                        f"references resolve against the document root only (drop this $id)",
                        pointer(where, "$id"),
                        "$id",
                    )
            continue  # nothing below refers by '#': nested $ids below change nothing either
        todo.extend(_children_of(node, where))


def _children_of(node: Schema, where: str = "#") -> list[tuple[str, JSONObject]]:
    """The object sub-schemas directly below ``node``."""
    if not isinstance(node, dict):
        return []
    return [(pointer(where, *path), sub) for path, sub in children(node) if isinstance(sub, dict)]


_NOTHING = "[^\\x00-\\U0010FFFF]"  # a class no character is in


def _moved(e: SchemaError, ptr: str) -> SchemaError:
    """``e`` (of the same class) naming ``ptr`` instead of the place it was found at."""
    message = str(e).removesuffix(f" (at {e.pointer})")
    return type(e)(message, ptr, e.keyword)


def count(s: JSONObject, key: str, ptr: str) -> int | None:
    """A non-negative integer keyword, or None when absent."""
    v = s.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise fail(f"{key} must be a non-negative integer, got {v!r}", pointer(ptr, key), key)
    return v


Bound = tuple[float | None, bool, str]  # ints are floats to typing

MAX_BOUND = 10**GRAMMAR_MAX_BOUND_DIGITS  # the magnitude integer bounds stay below


def _bounds(s: JSONObject, ptr: str) -> tuple[Bound, Bound]:
    """((lower, exclusive, keyword), (upper, exclusive, keyword)) from minimum/maximum and their exclusive forms."""

    def num(key: str) -> float | None:
        v = s.get(key)
        if v is None or isinstance(v, bool):
            return None
        if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise fail(f"{key} must be a number", pointer(ptr, key), key)
        if isinstance(v, int) and not -MAX_BOUND < v < MAX_BOUND:
            raise fail(
                f"{key}: bounds of 10**{GRAMMAR_MAX_BOUND_DIGITS} and beyond are not supported", pointer(ptr, key), key
            )
        return v

    lo: Bound = (num("minimum"), False, "minimum")
    hi: Bound = (num("maximum"), False, "maximum")
    if s.get("exclusiveMinimum") is True and lo[0] is not None:  # draft 4: a flag on minimum
        lo = (lo[0], True, "minimum")
    if s.get("exclusiveMaximum") is True and hi[0] is not None:
        hi = (hi[0], True, "maximum")
    xlo, xhi = num("exclusiveMinimum"), num("exclusiveMaximum")
    if xlo is not None and (lo[0] is None or xlo >= lo[0]):
        lo = (xlo, True, "exclusiveMinimum")
    if xhi is not None and (hi[0] is None or xhi <= hi[0]):
        hi = (xhi, True, "exclusiveMaximum")
    return lo, hi


def _type_list(s: JSONObject, ptr: str) -> list[str] | None:
    t = s.get("type")
    if t is None:
        return None
    types = [t] if isinstance(t, str) else t
    if not is_strings(types) or not types or any(x not in TYPES for x in types):
        raise fail(
            f"type must be one of {', '.join(TYPES)} or a non-empty list of them, got {t!r}",
            pointer(ptr, "type"),
            "type",
        )
    return list(dict.fromkeys(types))


def _is_type(v: JSON, t: str) -> bool:
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t == "integer":
        return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "string":
        return isinstance(v, str)
    if t == "array":
        return isinstance(v, list)
    return isinstance(v, dict)
