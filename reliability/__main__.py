"""``python -m reliability <check> [options]``: the reliability checks, one subcommand each (``--help`` on each)."""

from __future__ import annotations

import importlib
import sys

CHECKS = {
    "sanitize": "sanitize",
    "leaks": "leaks",
    "fuzz-tokenizer": "fuzz_tokenizer",
    "fuzz-gguf": "fuzz_gguf",
    "fuzz-grammar": "fuzz_grammar",
    "fuzz-state": "fuzz_state",
    "soak": "soak",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in CHECKS:
        print(__doc__, file=sys.stderr)
        print("checks: " + ", ".join(CHECKS), file=sys.stderr)
        return 2
    module = importlib.import_module(f"reliability.{CHECKS[sys.argv[1]]}")
    return int(module.main(sys.argv[2:]))


if __name__ == "__main__":
    raise SystemExit(main())
