"""Build llamacffi with AddressSanitizer + UndefinedBehaviorSanitizer (or ThreadSanitizer) and run tests under it.

The build goes into its own folder (``build/sanitize-<kind>``), never the package's: a copy of the Python package
there holds the instrumented module, and Python runs with the sanitizer runtime preloaded (CPython itself is not
instrumented, so the runtime must come first). Reports go to log files, one per process; a report counts against
llamacffi when any frame of it lies in llamacffi's module, llama.cpp or ggml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "llamacffi"
SUPPRESSIONS = Path(__file__).resolve().parent / "suppressions"

KINDS = {"address": "address;undefined", "thread": "thread"}
# Tests ThreadSanitizer cannot follow: a child forked from a process with threads that starts threads of its own (TSan
# stops such a child, or loses track of its threads: "dup thread with used id").
TSAN_CANNOT_RUN = ("tests/test_service.py::test_forked_child_gets_its_own_engine_thread",)
# Frames in these files are ours or llama.cpp's; a report that touches none lies in CPython, numpy or libc.
OWN_FRAMES = re.compile(r"_llamacffi|/llama\.cpp/|libllama|libggml|/ggml/|/src/llama")


@dataclass
class Report:
    """One sanitizer report from a log file: its first line and whether it touches llamacffi or llama.cpp."""

    path: Path
    headline: str
    own: bool


def build(kind: str, build_dir: Path, jobs: int) -> Path:
    """Configure and build the instrumented module; return its path."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    args = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(build_dir),
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        f"-DLLAMACFFI_SANITIZE={KINDS[kind]}",
        f"-DSKBUILD_PROJECT_VERSION={version.group(1)}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    if kind == "thread":
        # libgomp is not instrumented: its barriers look like races to TSan. ggml's own thread pool (std::thread
        # and atomics) is what TSan can follow.
        args.append("-DGGML_OPENMP=OFF")
    subprocess.run(["nice", "-n", "19", *args], check=True)
    subprocess.run(
        ["nice", "-n", "19", "cmake", "--build", str(build_dir), "--target", "_llamacffi", "-j", str(jobs)],
        check=True,
    )
    found = sorted(build_dir.glob("_llamacffi*.so"))
    if not found:
        raise SystemExit(f"no _llamacffi*.so under {build_dir} after the build")
    return found[0]


def stage(module: Path, site: Path) -> Path:
    """A copy of the Python package under ``site`` whose compiled module is the instrumented one."""
    target = site / "llamacffi"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("*.so", "bin", "__pycache__"))
    shutil.copy2(module, target / module.name)
    return site


def tool_wrappers(folder: Path) -> Path:
    """llama.cpp's own programs, which some tests run as the reference, behind scripts that drop the preloaded
    runtime: they are not built with the sanitizer (and use OpenMP, whose threads TSan cannot follow), so what the
    runtime would say about them is not about llamacffi."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in sorted((PACKAGE / "bin").glob("*")):
        wrapper = folder / tool.name
        wrapper.write_text(f'#!/bin/sh\nunset LD_PRELOAD\nexec "{tool}" "$@"\n')
        wrapper.chmod(0o755)
    return folder


def compiler_file(name: str) -> str:
    """The path of a library as the compiler finds it."""
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout
    return os.path.realpath(path.strip())


def runtime(kind: str) -> str:
    """The sanitizer runtime to preload, as the compiler names it."""
    return compiler_file("libasan.so" if kind == "address" else "libtsan.so")


def environment(kind: str, site: Path, logs: Path) -> dict[str, str]:
    """The environment of the test run: runtime preloaded, reports to ``logs``, the staged package first."""
    env = dict(os.environ)
    # libstdc++ too: the runtime resolves its __cxa_throw interceptor when it starts, and CPython does not link the C++
    # library, so without it the first exception llama.cpp throws (and catches) stops the process in a CHECK.
    env["LD_PRELOAD"] = f"{runtime(kind)} {compiler_file('libstdc++.so.6')}"
    env["PYTHONPATH"] = str(site)
    env["LLAMACFFI_RAW_TOOLS_DIR"] = str(tool_wrappers(site.parent / "tools"))
    env["GOMP_SPINCOUNT"] = "1000"
    env["PYTHONUNBUFFERED"] = "1"  # pytest's lines reach the log as they happen, also when the run is cut short
    if kind == "address":
        # Every allocation through malloc, so ASan sees Python buffers handed to C too.
        env["PYTHONMALLOC"] = "malloc"
        env["ASAN_OPTIONS"] = ":".join(
            [
                # CPython frees little at exit by design; its leaks are not ours (the leak cycles measure ours).
                "detect_leaks=0",
                f"log_path={logs / 'asan'}",
                "abort_on_error=0",
                # llama.cpp's CPU backend installs no SIGSEGV handler; Python's faulthandler does, keep it.
                "allow_user_segv_handler=1",
            ]
        )
        env["UBSAN_OPTIONS"] = (
            f"print_stacktrace=1:log_path={logs / 'ubsan'}:suppressions={SUPPRESSIONS / 'ubsan.supp'}"
        )
    else:
        # die_after_fork=0: a test forks a child that starts threads (the service's engine thread in the child);
        # TSan cannot follow threads of a multi-threaded process's child and would stop it at once.
        env["TSAN_OPTIONS"] = (
            f"log_path={logs / 'tsan'}:suppressions={SUPPRESSIONS / 'tsan.supp'}:second_deadlock_stack=1"
            ":die_after_fork=0"
        )
    return env


def reports(logs: Path) -> list[Report]:
    """Every report in the log folder, split at the sanitizers' own separators."""
    found: list[Report] = []
    for path in sorted(logs.glob("*")):
        text = path.read_text(errors="replace")
        blocks = re.split(
            r"\n(?==+\n==\d+==ERROR|WARNING: ThreadSanitizer|\w+Sanitizer: CHECK|\S+:\d+:\d+: runtime error)",
            "\n" + text,
        )
        for block in blocks:
            block = block.strip()
            if not block or not re.search(
                r"ERROR: AddressSanitizer|Sanitizer: CHECK failed|ThreadSanitizer|runtime error", block
            ):
                continue
            headline = next(
                (ln for ln in block.splitlines() if re.search(r"ERROR|WARNING|runtime error", ln)), block[:200]
            )
            found.append(Report(path, headline.strip(), bool(OWN_FRAMES.search(block))))
    return found


def run_tests(kind: str, site: Path, logs: Path, tests: list[str], timeout: float) -> tuple[int, float]:
    """Run pytest over ``tests`` under the sanitizer; return its exit status and seconds taken."""
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    start = time.monotonic()
    cmd = ["nice", "-n", "19", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    if kind == "thread":
        cmd += [f"--deselect={t}" for t in TSAN_CANNOT_RUN]
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=environment(kind, site, logs), timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    return rc, time.monotonic() - start


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m reliability sanitize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=sorted(KINDS), default="address")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-build", action="store_true", help="reuse the module built before")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds the test run may take")
    ap.add_argument(
        "tests", nargs="*", default=["tests"], help="pytest arguments after --: test files, node ids, options"
    )
    args = ap.parse_args(argv)

    build_dir = ROOT / "build" / f"sanitize-{args.kind}"
    if args.no_build:
        module = sorted(build_dir.glob("_llamacffi*.so"))[0]
    else:
        start = time.monotonic()
        module = build(args.kind, build_dir, args.jobs)
        print(f"built {module} in {time.monotonic() - start:.0f} s", flush=True)
    site = stage(module, build_dir / "site")
    logs = build_dir / "logs"
    rc, seconds = run_tests(args.kind, site, logs, args.tests, args.timeout)
    found = reports(logs)
    own = [r for r in found if r.own]
    print(f"\npytest exit status {rc} after {seconds:.0f} s over {' '.join(args.tests)}")
    print(f"{len(found)} sanitizer reports, {len(own)} in llamacffi, llama.cpp or ggml (logs: {logs})")
    for r in found:
        print(f"  {'OWN ' if r.own else 'other'} {r.path.name}: {r.headline}")
    return 1 if own or rc not in (0, 5) else 0
