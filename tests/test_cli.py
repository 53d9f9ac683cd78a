"""The llamacffi command, run as a user would, in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import llamacffi
from llamacffi import hugepages

BIN = Path(sys.executable).parent / "llamacffi"


GREEDY = ("--temp", "0", "-n", "16", "-t", "2")
SECRET = "The secret word is banana.\n"
ASK = "What is the secret word?\n"  # SmolLM2 answers it from the history, and does not guess it without


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


def last_reply(lines: str | bytes, last: str, *args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """What ``chat`` prints for the message ``last`` after the ``lines`` before it (greedy, so the replies before
    it are what a run without it prints), and the run with it."""
    before = run("chat", *GREEDY, *args, stdin=lines)
    data = lines.encode() if isinstance(lines, str) else lines
    after = run("chat", *GREEDY, *args, stdin=data + last.encode())
    assert before.returncode == 0 and after.returncode == 0, after.stderr
    assert after.stdout.startswith(before.stdout)
    return after.stdout[len(before.stdout) :], after


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
    assert "banana" in last_reply(SECRET, ASK)[0]
    assert "banana" not in run("chat", *GREEDY, stdin=ASK).stdout  # the answer comes from the history


def test_chat_system(smollm2_path: Path) -> None:
    out = run("chat", *GREEDY, "--system", SECRET.strip(), stdin=ASK)
    assert out.returncode == 0, out.stderr
    assert "banana" in out.stdout


def test_chat_reports_a_line_that_is_not_utf8_and_goes_on(smollm2_path: Path) -> None:
    reply, out = last_reply(SECRET.encode() + b"hello \xff\xfe world\n", ASK)
    assert "banana" in reply
    assert "that message was not sent: not UTF-8 text" in out.stderr, out.stderr


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
        ("", ("generate", "-ngl", "99999999999", "hi"), "--gpu-layers"),
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
    lines = SECRET + "Hello again.\n" + "word " * 400 + "\n"
    reply, out = last_reply(lines, ASK, "-c", "256")
    assert "banana" in reply  # the kept history is the one used
    assert "does not fit the context" in out.stderr
    assert "dropped" not in out.stderr  # the refused message took nothing of the history with it


def test_warnings_are_one_line(smollm2_path: Path) -> None:
    out = run("generate", "--temp", "0", "-n", "2", "-c", "16384", "--raw", "Hi")
    assert out.returncode == 0, out.stderr
    warned = [ln for ln in out.stderr.splitlines() if "--ctx-size 16384" in ln]
    assert len(warned) == 1 and warned[0].startswith("llamacffi: warning: ") and "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bench_sizes_must_be_positive(value: str) -> None:
    out = run("bench", "-p", value)
    assert out.returncode == 2 and "positive integer" in out.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (("generate", "-n", "0", "hi"), "--max-tokens: "),
        (("generate", "-c", "0", "hi"), "--ctx-size: "),
        (("generate", "-t", "0", "hi"), "--threads: "),
        (("generate", "--top-p", "2", "hi"), "--top-p: "),
        (("embed", "-t", "0", "hi"), "--threads "),
        (("embed", "--batch-tokens", "0", "hi"), "--batch-tokens "),
        (("rpc-server", "-t", "0"), "--threads "),
        (("generate", "--grammar", "/nonexistent/g.gbnf", "hi"), "--grammar /nonexistent/g.gbnf: "),
        (("embed", "--file", "/nonexistent/texts.txt"), "--file /nonexistent/texts.txt: "),
        (("generate", "--json-schema", "[1]", "hi"), "--json-schema: "),
        (("generate", "--json-schema", "null", "hi"), "--json-schema: "),
        (("generate", "--json-schema", '{"type": ', "hi"), "--json-schema: not valid JSON"),
        (("generate", "--stop", "", "hi"), "--stop: "),
        (("generate", "--stop", "\udcff", "hi"), "--stop: not UTF-8"),  # the byte 0xff, as Python passes it
        (("generate", "-n", "2", ""), "the prompt is empty"),
        (("generate", "--raw", " "), "the prompt is empty"),
        (("embed", "hi", " "), "TEXT 2 is empty"),
        (
            ("generate", "--chat-template-file", "/nonexistent/t.jinja", "hi"),
            "--chat-template-file /nonexistent/t.jinja: ",
        ),
        (("chat", "--chat-template", "\udcff"), "--chat-template: not UTF-8"),
        (("generate", "--chat-template-kwargs", "{", "hi"), "--chat-template-kwargs: not JSON"),
        (("generate", "--chat-template-kwargs", "[1]", "hi"), "--chat-template-kwargs: must be a JSON object"),
        (("chat", "--chat-template-kwargs", '{"messages": 1}'), "--chat-template-kwargs: the template variable"),
    ],
)
def test_errors_name_the_flags(args: tuple[str, ...], says: str) -> None:
    line = one_line_error(run(*args))
    assert line.startswith("llamacffi: error: " + says), line
    for python_name in ("Options.", "Config.", "n_threads", "batch_tokens", "Errno", "=True"):
        assert python_name not in line


def test_errors_name_the_truncating_flag_where_there_is_one(smollm2_path: Path, tmp_path: Path) -> None:
    line = one_line_error(run("generate", "-c", "16", "-n", "4", "hello there, how are you today?"))
    assert "raise --ctx-size" in line and "truncate" not in line  # generate has no flag that truncates
    long = tmp_path / "long.txt"  # its 4th line is beyond the 8,192 tokens SmolLM2 was trained for
    long.write_bytes("first\n\nsecond\u2028half\fmore\r\n".encode() + b"word " * 9000 + b"\n")
    line = one_line_error(run("embed", "-t", "2", "--file", str(long)))
    assert f"line 4 of {long} is " in line and "pass --truncate" in line  # the file's line, not texts[2]
    out = run("embed", "-t", "2", "--truncate", "--file", str(long))
    assert out.returncode == 0 and len(json.loads(out.stdout)["data"]) == 3  # lines end only at line ends


def test_grammar_and_json_schema_files(smollm2_path: Path, tmp_path: Path) -> None:
    grammar = tmp_path / "yes-no.gbnf"
    grammar.write_text('root ::= "yes" | "no"\n')
    out = run("generate", *GREEDY, "--grammar", str(grammar), "Is water wet?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("yes", "no")
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "boolean"}')
    out = run("generate", *GREEDY, "--json-schema", str(schema), "Is water wet?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("true", "false")
    bad = tmp_path / "latin1.gbnf"
    bad.write_bytes(b'root ::= "\xe9"\n')
    assert "not UTF-8 text" in one_line_error(run("generate", "--grammar", str(bad), "hi"))


@pytest.mark.parametrize(
    "args, says",
    [
        (("generate", "--raw", "--system", "Be brief.", "hi"), "argument --system: not allowed with argument --raw"),
        (("generate", "--grammar", "g", "--json-schema", "{}", "hi"), "not allowed with argument --grammar"),
        (("bench", "-c", "0"), "unrecognized arguments: -c 0"),  # its context is what -p and -g need
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(args: tuple[str, ...], says: str) -> None:
    out = run(*args)
    assert out.returncode == 2 and says in out.stderr.splitlines()[-1], out.stderr


def test_a_chat_template_from_the_command_line(smollm2_path: Path, tmp_path: Path) -> None:
    own = run("generate", *GREEDY, "Capital of Italy?")
    named = run("generate", *GREEDY, "--chat-template", "chatml", "Capital of Italy?")
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    filed = run("generate", *GREEDY, "--chat-template-file", str(template), "The capital of France is")
    raw = run("generate", *GREEDY, "--raw", "The capital of France is")
    assert own.returncode == named.returncode == filed.returncode == 0, named.stderr + filed.stderr
    assert filed.stdout == raw.stdout  # the template's text is the prompt, as the raw prompt is
    line = one_line_error(run("generate", "--chat-template", "no-such-template", "hi"))
    assert "--chat-template 'no-such-template' is not a template" in line
    out = run("generate", "--chat-template", "chatml", "--chat-template-file", str(template), "hi")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
    template.write_text("{{ greeting }}{% for m in messages %}{{ m.content }}{% endfor %}")
    greeted = run("generate", *GREEDY, "--chat-template-file", str(template), "--chat-template-kwargs",
                  '{"greeting": "The capital of "}', "France is")  # fmt: skip
    assert greeted.returncode == 0 and greeted.stdout == raw.stdout, greeted.stderr


def test_stop_takes_its_text_as_typed(smollm2_path: Path) -> None:
    prompt = "Line one.\n\nLine two.\n\nLine three."
    out = run("generate", *GREEDY, "--raw", "--stop", "\\n\\n", prompt)  # a backslash and an n, twice
    assert out.returncode == 0 and "\n\n" in out.stdout, out.stdout  # never met: the reply goes past a blank line
    out = run("generate", *GREEDY, "--raw", "--stop", "\n\n", prompt)  # as bash's $'\n\n' passes it
    assert out.returncode == 0 and "\n\n" not in out.stdout, out.stdout


def test_a_model_that_fails_to_load_is_one_line(smollm2_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as f:
        cut.write_bytes(f.read(10 << 20))  # the metadata whole, the tensors cut short
    line = one_line_error(run("generate", "-m", str(cut), "hi"))  # llama.cpp's log lines say what it says
    assert "not within the file bounds" in line


def test_embed_npy_refuses_a_terminal(smollm2_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        out = subprocess.run(
            [str(BIN), "embed", "--format", "npy", "hello"], stdout=terminal, stderr=subprocess.PIPE, timeout=300
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert out.returncode == 1 and b"redirect it to a file or a pipe" in out.stderr, out.stderr


def test_models_list_says_when_models_path_is_not_a_folder(tmp_path: Path) -> None:
    out = run("models", "list", env={"MODELS_PATH": str(tmp_path / "nowhere")})
    assert out.returncode == 0 and "nowhere is not a folder" in out.stderr, out.stderr


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
        (("--chat-template-file", "/nonexistent/t.jinja"), {}, "--chat-template-file /nonexistent/t.jinja: "),
        (("--chat-template-kwargs", '{"tools": []}'), {}, "--chat-template-kwargs: "),
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
def test_serve_without_the_server_extra_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "uvicorn.py").write_text("raise ModuleNotFoundError(\"No module named 'uvicorn'\", name='uvicorn')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    out = run("serve", "--port", "0", "-m", "smollm2-135m", env={"PYTHONPATH": path}, timeout=120)
    assert "pip install 'llamacffi[server]'" in one_line_error(out)


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


@pytest.mark.parametrize("command", [["info"], ["embed", "hi"], ["serve"]])
def test_a_short_option_is_not_read_as_the_start_of_a_longer_one(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from llamacffi import cli

    with pytest.raises(SystemExit) as exit:
        cli._parser().parse_args([*command, "-n", "3"])  # argparse alone reads it as -ngl 3 (or as ambiguous)
    assert exit.value.code == 2
    assert "-n is not an option of this command (did you mean -ngl" in capsys.readouterr().err


def test_bench_takes_llama_bench_s_n() -> None:
    from llamacffi import cli

    args = cli._parser().parse_args(["bench", "-p", "8", "-n", "4"])
    assert (args.n_prompt, args.n_gen, args.gpu_layers) == (8, 4, -1)
