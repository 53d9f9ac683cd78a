"""Reliability checks of llamacffi: sanitizer runs, leak cycles, differential fuzzing and a soak.

Each is a subcommand of ``python -m reliability``; the long forms write their figures under ``reliability/results``
and the tests run a short form of each (``tests/test_reliability.py``).
"""
