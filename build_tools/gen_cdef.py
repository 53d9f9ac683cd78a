"""Generate the cffi cdef from the vendored llama.h.

The C preprocessor expands llama.h (and the ggml headers it includes) against a few stand-in libc headers, pycparser
reads the result, and this script writes:

* every function, struct, enum and typedef declared in llama.h, exactly as the header spells it;
* the ggml types those declarations need: enums with their names only (values come from the compiler, ``...``),
  structs used by value as ``{ ...; }`` (the compiler fills the layout), everything used through a pointer as an
  opaque struct;
* a few ggml functions named in ``GGML_FUNCTIONS``, and the RPC backend's in ``RPC_FUNCTIONS`` (ggml-rpc.h; a build
  without ``GGML_RPC`` compiles stand-ins for them, see helpers.c);
* llama.h's and ggml-rpc.h's integer ``#define`` constants as ``#define NAME ...``.

Nothing here restates a declaration: the header is the only source.

    python gen_cdef.py LLAMA_CPP_DIR OUT.cdef [--cc CC]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from pycparser import c_ast, c_generator, c_parser

# ggml functions the Python layer uses besides llama.h's (backend registry and device memory for system_info, type
# names).
GGML_FUNCTIONS = (
    "ggml_backend_reg_count",
    "ggml_backend_reg_get",
    "ggml_backend_reg_name",
    "ggml_backend_dev_count",
    "ggml_backend_dev_get",
    "ggml_backend_dev_name",
    "ggml_backend_dev_description",
    "ggml_backend_dev_type",
    "ggml_backend_dev_memory",
    "ggml_backend_dev_backend_reg",
    "ggml_type_name",
    # the device API: placement (devices by name), remote devices' memory, registering an RPC server's devices
    "ggml_backend_dev_by_name",
    "ggml_backend_dev_memory",
    "ggml_backend_dev_backend_reg",
    "ggml_backend_reg_by_name",
    "ggml_backend_reg_dev_count",
    "ggml_backend_reg_dev_get",
    "ggml_backend_register",
)

# The RPC backend (ggml-rpc.h): a remote host's devices, and serving this build's own devices.
RPC_FUNCTIONS = (
    "ggml_backend_rpc_add_server",
    "ggml_backend_rpc_start_server",
)

# Minimal libc stand-ins: only names the preprocessed output needs to parse. cffi knows the real types.
FAKE_LIBC = {
    "stddef.h": "typedef unsigned long size_t; typedef long ptrdiff_t;\n#define NULL 0\n",
    "stdint.h": "".join(
        f"typedef int {t}_t;\n"
        for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intptr", "uintptr")
    ),
    "stdbool.h": "#define bool _Bool\n#define true 1\n#define false 0\n",
    "stdio.h": "typedef struct FILE FILE;\n",
    "stdarg.h": "typedef int va_list;\n",
    "stdlib.h": "",
    "string.h": "",
    "assert.h": "",
    "limits.h": "",
    "math.h": "",
}
LIBC_TYPEDEFS = {"size_t", "ptrdiff_t", "FILE", "va_list"} | {
    f"{t}_t" for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intptr", "uintptr")
}


def preprocess(llama_dir: Path, cc: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in FAKE_LIBC.items():
            Path(tmp, name).write_text(text)
        # llama.h first, so its declarations keep their place; ggml-rpc.h after it.
        top = Path(tmp, "llamacffi_top.h")
        top.write_text('#include "llama.h"\n#include "ggml-rpc.h"\n')
        cmd = [
            cc,
            "-E",
            "-nostdinc",
            "-I",
            tmp,
            "-I",
            str(llama_dir / "include"),
            "-I",
            str(llama_dir / "ggml" / "include"),
            "-D__attribute__(x)=",
            "-D__declspec(x)=",
            "-D__restrict=",
            "-D__inline=",
            "-D__extension__=",
            "-U__GNUC__",
            str(top),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"llamacffi: preprocessing llama.h failed:\n{proc.stderr}")
        return proc.stdout


def origin(node: c_ast.Node) -> str:
    return os.path.basename(str(node.coord.file)) if node.coord else ""


class Refs(c_ast.NodeVisitor):
    """Type names a declaration refers to, split by whether they are reached through a pointer."""

    def __init__(self) -> None:
        self.by_value: set[tuple[str, str]] = set()
        self.by_pointer: set[tuple[str, str]] = set()
        self._depth = 0

    def _add(self, kind: str, name: str) -> None:
        (self.by_pointer if self._depth else self.by_value).add((kind, name))

    def visit_PtrDecl(self, node: c_ast.PtrDecl) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    def visit_FuncDecl(self, node: c_ast.FuncDecl) -> None:
        # Parameters and results of a function *type* behave as values for layout purposes, but a function
        # reached through a pointer (callback field) still needs its by-value types declared.
        saved, self._depth = self._depth, 0
        self.generic_visit(node)
        self._depth = saved

    def visit_IdentifierType(self, node: c_ast.IdentifierType) -> None:
        for n in node.names:
            self._add("typedef", n)

    def visit_Struct(self, node: c_ast.Struct) -> None:
        if node.name:
            self._add("struct", node.name)
        if node.decls:
            saved, self._depth = self._depth, 0
            for d in node.decls:
                self.visit(d)
            self._depth = saved

    def visit_Union(self, node: c_ast.Union) -> None:
        if node.name:
            self._add("union", node.name)
        if node.decls:
            saved, self._depth = self._depth, 0
            for d in node.decls:
                self.visit(d)
            self._depth = saved

    def visit_Enum(self, node: c_ast.Enum) -> None:
        if node.name:
            self._add("enum", node.name)


def refs_of(node: c_ast.Node) -> Refs:
    r = Refs()
    r.visit(node)
    return r


def enum_text(kind_name: str, enum: c_ast.Enum) -> str:
    names = [e.name for e in enum.values.enumerators] if enum.values else []
    return f"{kind_name} {{ {', '.join([*names, '...'])} }}"


def generate(llama_dir: Path, cc: str) -> str:
    ast = c_parser.CParser().parse(preprocess(llama_dir, cc), filename="llama.h")
    gen = c_generator.CGenerator()

    typedefs: dict[str, c_ast.Typedef] = {}
    tagged: dict[tuple[str, str], c_ast.Node] = {}  # ("struct", name) -> definition
    funcs: dict[str, c_ast.Decl] = {}
    order: list[c_ast.Node] = []
    for node in ast.ext:
        order.append(node)
        if isinstance(node, c_ast.Typedef):
            typedefs[node.name] = node
            inner = node.type.type if isinstance(node.type, c_ast.TypeDecl) else None
            if (
                isinstance(inner, (c_ast.Struct, c_ast.Union, c_ast.Enum))
                and inner.name
                and (inner.decls if not isinstance(inner, c_ast.Enum) else inner.values)
            ):
                tagged[(type(inner).__name__.lower(), inner.name)] = node
        elif isinstance(node, c_ast.Decl):
            if isinstance(node.type, c_ast.FuncDecl):
                funcs[node.name] = node
            elif isinstance(node.type, (c_ast.Struct, c_ast.Union)) and node.type.decls is not None:
                tagged[(type(node.type).__name__.lower(), node.type.name)] = node
            elif isinstance(node.type, c_ast.Enum) and node.type.values is not None:
                tagged[("enum", node.type.name)] = node

    def from_llama(node: c_ast.Node) -> bool:
        return origin(node) == "llama.h"

    extra = (*GGML_FUNCTIONS, *RPC_FUNCTIONS)
    wanted_funcs = [n for n, d in funcs.items() if from_llama(d)] + [n for n in extra if n in funcs]
    missing = [n for n in extra if n not in funcs]
    if missing:
        sys.exit(f"llamacffi: ggml headers lack {missing}; this llama.cpp tree is too old or too new")

    # Closure over what the wanted declarations reach. "full": emitted as written; "value": a ggml type whose
    # layout the compiler fills; "opaque": only named.
    full: set[tuple[str, str]] = set()
    value: set[tuple[str, str]] = set()
    opaque: set[tuple[str, str]] = set()
    todo: list[c_ast.Node] = [funcs[n] for n in wanted_funcs]
    todo += [
        n
        for n in order
        if from_llama(n) and not isinstance(n.type if isinstance(n, c_ast.Decl) else None, c_ast.FuncDecl)
    ]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, c_ast.Typedef):
            full.add(("typedef", node.name))
        elif isinstance(node, c_ast.Decl) and isinstance(node.type, (c_ast.Struct, c_ast.Union, c_ast.Enum)):
            key = (type(node.type).__name__.lower(), node.type.name)
            (full if from_llama(node) else value).add(key)
            if not from_llama(node):
                continue  # a ggml struct's fields stay with the compiler
        r = refs_of(node)
        for kind, name in r.by_value | r.by_pointer:
            if kind == "typedef":
                if name in typedefs and name not in LIBC_TYPEDEFS:
                    todo.append(typedefs[name])
                continue
            key = (kind, name)
            if key in tagged:
                if key in r.by_value or kind == "enum" or from_llama(tagged[key]):
                    todo.append(tagged[key])
                else:
                    opaque.add(key)
            else:
                opaque.add(key)
    opaque -= full | value

    out: list[str] = ["// Generated by build_tools/gen_cdef.py from the vendored llama.h. Do not edit.", ""]
    for kind, name in sorted(opaque):
        if kind != "enum":
            out.append(f"{kind} {name};")
    emitted: set[str] = set()
    for node in order:
        if isinstance(node, c_ast.Typedef) and ("typedef", node.name) in full and node.name not in emitted:
            emitted.add(node.name)
            inner = node.type.type if isinstance(node.type, c_ast.TypeDecl) else None
            if isinstance(inner, c_ast.Enum) and inner.values is not None:
                out.append(f"typedef {enum_text('enum ' + (inner.name or ''), inner)} {node.name};")
            elif isinstance(inner, (c_ast.Struct, c_ast.Union)) and inner.decls is not None and not from_llama(node):
                out.append(f"typedef {type(inner).__name__.lower()} {inner.name or ''} {{ ...; }} {node.name};")
            else:
                out.append(gen.visit(node) + ";")
        elif isinstance(node, c_ast.Decl) and isinstance(node.type, (c_ast.Struct, c_ast.Union, c_ast.Enum)):
            key = (type(node.type).__name__.lower(), node.type.name)
            if isinstance(node.type, c_ast.Enum):
                if key in full or key in value:
                    out.append(enum_text(f"enum {node.type.name}", node.type) + ";")
            elif key in full:
                out.append(gen.visit(node) + ";")
            elif key in value:
                out.append(f"{key[0]} {key[1]} {{ ...; }};")
        elif isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl) and node.name in wanted_funcs:
            node.storage = []  # "extern" adds nothing for cffi
            text = gen.visit(node)
            if "va_list" in text:
                continue
            out.append(text + ";")

    for header, prefix in (("include/llama.h", "LLAMA_"), ("ggml/include/ggml-rpc.h", "RPC_PROTO_|GGML_RPC_")):
        text = (llama_dir / header).read_text()
        for name, _val in re.findall(
            rf"^#define\s+((?:{prefix})[A-Z0-9_]+)\s+(-?(?:0x[0-9A-Fa-f]+|\d+)u?)\s*(?://.*)?$", text, re.M
        ):
            out.append(f"#define {name} ...")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("llama_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    args = ap.parse_args()
    text = generate(args.llama_dir, args.cc)
    if not args.out.exists() or args.out.read_text() != text:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
