"""The llamacffi command, run as a user would, in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import llamacffi
from llamacffi import hugepages

BIN = Path(sys.executable).parent / "llamacffi"


def run(
    *args: str,
    stdin: str | bytes | None = None,
    env: dict[str, str] | None = None,
    module: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llamacffi", *args] if module else [str(BIN), *args]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    out = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())


def one_line_error(out: subprocess.CompletedProcess[str], rc: int = 1) -> str:
    """The error line of a command that must fail with one line on stderr and nothing else."""
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == rc and len(lines) == 1, out.stderr
    assert lines[0].startswith("llamacffi: error: "), lines[0]
    return lines[0]


def test_generate_streams_to_stdout(smollm2_path: Path) -> None:
    out = run("generate", "--temp", "0", "-n", "12", "--raw", "The capital of France is")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


@pytest.mark.parametrize("n", [1, 3, 5])
def test_generate_ends_its_output_with_one_newline(smollm2_path: Path, n: int) -> None:
    # what the command prints is the reply, then a newline unless the reply ends with one (cut at --max-tokens)
    from llamacffi.service import GenerationOptions, LlamaCppService, LocalBackendConfig

    prompt = "The capital of France is"
    with LlamaCppService(LocalBackendConfig(threads=2)) as svc, svc.load_model("smollm2-135m") as m:
        reply = m.generate(prompt, GenerationOptions(temperature=0, max_tokens=n, raw=True))
    out = run("generate", "--temp", "0", "-n", str(n), "--raw", prompt, module=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (reply if reply.endswith("\n") else reply + "\n")


def test_generate_with_stop_and_system_via_python_m(smollm2_path: Path) -> None:
    full = run("generate", "--temp", "0", "-n", "16", "--raw", "One, two, three,", module=True)
    assert full.returncode == 0, full.stderr
    stop = full.stdout.strip()[4:8]
    cut = run("generate", "--temp", "0", "-n", "16", "--raw", "--stop", stop, "One, two, three,", module=True)
    assert cut.returncode == 0 and stop not in cut.stdout
    sys_out = run("generate", "--temp", "0", "-n", "8", "--system", "Answer in one word.", "Capital of Italy?")
    assert sys_out.returncode == 0 and sys_out.stdout.strip()


def test_chat_keeps_history(smollm2_path: Path) -> None:
    out = run("chat", "--temp", "0", "-n", "12", stdin="My name is Ada.\nWhat is the capital of France?\n")
    assert out.returncode == 0, out.stderr
    assert len([ln for ln in out.stdout.splitlines() if ln.strip()]) >= 2
    assert "Paris" in out.stdout


def test_models_list_and_pull(tmp_path: Path, smollm2_path: Path) -> None:
    target = tmp_path / "hf" / "u" / "r" / "m.gguf"
    target.parent.mkdir(parents=True)
    target.symlink_to(smollm2_path)
    out = run("models", "list", env={"MODELS_PATH": str(tmp_path)})
    assert out.returncode == 0
    assert out.stdout.splitlines()[0] == "hf:u/r:m"
    assert "smollm2-135m\tcached" in out.stdout
    pulled = run("models", "pull", "smollm2-135m")
    assert pulled.returncode == 0 and pulled.stdout.strip() == str(smollm2_path)


def test_info(smollm2_path: Path) -> None:
    out = run("info", "--json", "-m", "smollm2-135m")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["version"] == llamacffi.__version__ and "CPU" in info["backends"]
    assert info["model"]["n_vocab"] == 49152
    if not any(d["type"] in ("gpu", "igpu") for d in info["devices"]):
        assert info["model"]["offloaded_layers"] == 0


def test_bench(smollm2_path: Path) -> None:
    out = run("bench", "-p", "32", "-g", "8", "-t", "2")
    assert out.returncode == 0, out.stderr
    assert "pp32:" in out.stdout and "tg8:" in out.stdout and "huge pages" not in out.stdout
    out = run("bench", "-p", "32", "-g", "8", "-t", "2", "-ngl", "0", "--huge-pages")
    assert out.returncode == 0, out.stderr
    huge = int(re.search(r"huge pages: (\d+) MiB", out.stdout).group(1))  # type: ignore[union-attr]
    assert (huge > 40) == (hugepages.page_size() > 0)  # of SmolLM2's ~95 MiB of weights


@pytest.mark.parametrize(
    "args",
    [
        ("generate", "-m", "no-such-model", "hi"),
        ("generate", "--temp", "-1", "hi"),
        ("generate", "-c", "8", "hi"),
        ("info", "-m", "/nowhere/x.gguf"),
        ("bench", "-p", "100000"),
        ("serve", "--cache-ram", "-5"),
        ("serve", "--batch-window", "-1"),
    ],
)  # beyond the 8,192 positions SmolLM2 was trained for
def test_errors_are_one_line_without_traceback(args: tuple[str, ...]) -> None:
    out = run(*args)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("llamacffi: error: ")
    assert "Traceback" not in out.stderr
    if args[0] == "serve":
        assert lines[-1].startswith(f"llamacffi: error: {args[1]}: "), lines[-1]


@pytest.mark.parametrize(
    "redirect, args, says",
    [
        ("0<&-", ("chat",), "standard input is closed"),
        ("1>&-", ("generate", "hi"), "standard output is closed"),
        ("", ("generate", "-ngl", "99999999999", "hi"), "gpu_layers"),
    ],
)
def test_closed_streams_and_huge_numbers_are_one_line_errors(
    smollm2_path: Path, redirect: str, args: tuple[str, ...], says: str
) -> None:
    # as a shell starts it with `0<&-` or `1>&-`: that descriptor closed
    cmd = ["bash", "-c", f'exec "$0" "$@" {redirect}', str(BIN), args[0], "-m", str(smollm2_path), *args[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "llamacffi: error: " in out.stderr and says in out.stderr


def test_chat_drops_old_turns_to_fit_the_context(smollm2_path: Path) -> None:
    lines = "".join(f"Tell me about the number {i}, please, in a few words.\n" for i in range(8))
    out = run("chat", "--temp", "0", "-n", "16", "-c", "160", stdin=lines)
    assert out.returncode == 0, out.stderr
    assert "oldest exchanges were dropped" in out.stderr and "Traceback" not in out.stderr
    assert len([ln for ln in out.stdout.splitlines() if ln.strip()]) >= 8


def test_chat_refuses_a_message_too_long_and_keeps_the_history(smollm2_path: Path) -> None:
    lines = "My name is Ada.\nHello again.\n" + "word " * 400 + "\nWhat is my name?\n"
    out = run("chat", "--temp", "0", "-n", "12", "-c", "256", stdin=lines)
    assert out.returncode == 0, out.stderr
    assert "does not fit the context" in out.stderr
    assert "dropped" not in out.stderr  # the refused message took nothing of the history with it
    assert len([ln for ln in out.stdout.splitlines() if ln.strip()]) >= 3


def test_warnings_are_one_line(smollm2_path: Path) -> None:
    out = run("generate", "--temp", "0", "-n", "2", "-c", "16384", "--raw", "Hi")
    assert out.returncode == 0, out.stderr
    warned = [ln for ln in out.stderr.splitlines() if "context_size" in ln]
    assert len(warned) == 1 and warned[0].startswith("llamacffi: warning: ") and "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bench_sizes_must_be_positive(value: str) -> None:
    out = run("bench", "-p", value)
    assert out.returncode == 2 and "positive integer" in out.stderr


# ---- serve: what the command refuses before it listens -----------------------------------------------------------

needs_server = pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="needs llamacffi[server]")


@needs_server
@pytest.mark.parametrize(
    "args, env, says",
    [
        (("--port", "70000"), {}, "--port: "),
        (("--port", "65536"), {}, "--port: "),
        (("--port", "-1"), {}, "--port: "),
        (("--grace", "nan"), {}, "--grace: "),
        (("--grace", "-5"), {}, "--grace: "),
        (("--api-key", ""), {}, "--api-key: "),
        ((), {"LLAMACFFI_API_KEY": ""}, "$LLAMACFFI_API_KEY is set but empty"),
        (("--host", "bogus.invalid"), {}, "--host bogus.invalid: "),
    ],
)
def test_serve_refuses_bad_flags_before_listening(args: tuple[str, ...], env: dict[str, str], says: str) -> None:
    out = run("serve", "--port", "0", *args, env=env, timeout=120)  # the options given last win
    assert "listening" not in out.stderr and "reachable from other machines" not in out.stderr
    assert one_line_error(out).startswith("llamacffi: error: " + says)


@needs_server
def test_serve_on_a_port_in_use_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = run("serve", "--port", str(port), timeout=120)
    assert f"--port {port}: cannot listen there" in one_line_error(out)


@needs_server
def test_serve_a_file_that_is_no_model_is_one_line_and_never_listens(smollm2_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as f:
        cut.write_bytes(f.read(1 << 20))  # in the middle of the metadata
    out = run("serve", "--port", "0", "-m", str(cut), timeout=120)
    assert "listening" not in out.stderr
    assert "the metadata is truncated" in one_line_error(out)


@needs_server
def test_serve_takes_its_key_from_the_environment(smollm2_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from server_process import ServeProcess

    monkeypatch.setenv("LLAMACFFI_API_KEY", "s3cret")
    proc = ServeProcess(["-m", "smollm2-135m", "-np", "1", "-c", "256", "-t", "2"])
    try:
        assert httpx.get(proc.url + "/v1/models", timeout=30).status_code == 401
        headers = {"authorization": "Bearer s3cret"}
        assert httpx.get(proc.url + "/v1/models", headers=headers, timeout=30).status_code == 200
    finally:
        assert proc.stop() == 0
