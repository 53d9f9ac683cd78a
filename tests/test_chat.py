"""Chat templates in the Pythonic layer: llamacffi.chat.apply_template and Model.apply_chat_template."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

import llamacffi
from llamacffi import InvalidArgumentError, LlamaError, raw_tools
from llamacffi.chat import ChatTemplateError, apply_template, builtin_template_for


def test_builtin_template_by_name() -> None:
    text = apply_template("chatml", [("system", "Be brief."), ("user", "Hi")])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not apply_template("chatml", [("user", "Hi")], add_assistant=False).endswith("assistant\n")


def test_pairs_and_dicts_give_the_same_text() -> None:
    pairs = [("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]
    dicts = [{"role": r, "content": c} for r, c in pairs]
    assert apply_template("gemma", dicts) == apply_template("gemma", pairs)
    assert "<start_of_turn>model\nHello!<end_of_turn>" in apply_template("gemma", pairs)


def test_long_conversations_grow_the_buffer() -> None:
    long = "x" * 10_000
    assert long in apply_template("chatml", [("user", long)] * 3)


@pytest.mark.parametrize(
    "messages,match",
    [
        ([("user", "a\0b")], "NUL"),
        ([("user", "\ud800")], "surrogate"),
        ([("user",)], "pair"),
        ([{"role": "user"}], "str"),
        ([("user", 5)], "str"),
        ("user: hi", "list"),
        (None, "list"),
        (5, "list"),
    ],
)
def test_bad_messages_are_refused(messages: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        apply_template("chatml", messages)  # type: ignore[arg-type]


def test_unknown_template_is_a_clear_error() -> None:
    with pytest.raises(ChatTemplateError, match="does not know") as info:
        apply_template("no-such-template", [("user", "Hi")])
    assert isinstance(info.value, LlamaError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidArgumentError):
        apply_template("", [("user", "Hi")])


def test_builtin_template_for_architectures() -> None:
    assert builtin_template_for("gemma3") == "gemma"
    assert builtin_template_for("llama") is None


def test_model_uses_its_own_template(smollm2: llamacffi.Model) -> None:
    text = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    assert smollm2.apply_chat_template([("user", "Hi")], template="gemma").startswith("<start_of_turn>user")


def test_gemma_model_formats_gemma_turns(gemma3: llamacffi.Model) -> None:
    text = gemma3.apply_chat_template([("user", "Hi")])
    assert "<start_of_turn>user\nHi<end_of_turn>\n" in text and text.endswith("<start_of_turn>model\n")


# ---- Jinja templates -------------------------------------------------------------------------------------------

CONVERSATIONS = [
    [("user", "Hi")],
    [("system", "Be brief."), ("user", "Hi")],
    [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")],
    [("system", "Answer in French."), ("user", 'Quote: "x < y" & {braces}\nnew line')],
]


def test_a_models_jinja_template_runs_its_own_logic(smollm2: llamacffi.Model) -> None:
    # SmolLM2's template writes a default system message when the conversation has none.
    assert smollm2.chat_template is not None and "{%" in smollm2.chat_template
    text = smollm2.apply_chat_template([("user", "Hi")])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    given = [("system", "Be brief."), ("user", "Hi")]
    assert smollm2.apply_chat_template(given) == apply_template("chatml", given)


def test_a_template_can_refuse_a_conversation() -> None:
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system messages, please') }}"
        "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    assert apply_template(template, [("user", "Hi")]) == "user: Hi\n"
    with pytest.raises(InvalidArgumentError, match="refuses these messages: no system messages, please"):
        apply_template(template, [("system", "x"), ("user", "Hi")])


def test_jinja_features_templates_use() -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{{ m | tojson }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    text = apply_template(
        template, [("user", "é"), ("assistant", "b"), ("user", "c")], bos_token="<s>", eos_token="</s>"
    )
    assert text == '<s>{"role": "user", "content": "é"}</s>{"role": "assistant", "content": "b"}</s>>'
    assert apply_template(template, [("user", "a")], add_assistant=False).endswith("}")


def test_a_template_cannot_reach_outside_its_data() -> None:
    # The sandbox refuses attribute walks to Python's internals; the template then fails as unknown.
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        apply_template(escape, [("user", "Hi")])


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 / 0 }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{{ (2 ** 10000) * 1.0 }}",
        "{{ 'a' * 10**10 }}",  # gigabytes, refused before they are asked for
        "{{ [1] * 10**10 }}",
        "{{ 10 ** (10 ** 10) }}",  # a power that would compute for ever
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",  # a render past the bound
    ],
)
def test_a_template_failing_as_it_runs_is_a_template_error(template: str) -> None:
    # Jinja fails (division by zero, recursion, overflow); llama.cpp's matcher then does not know the text either.
    with pytest.raises(ChatTemplateError):
        apply_template(template, [("user", "Hi")])


def test_a_model_refuses_no_messages(smollm2: llamacffi.Model) -> None:
    with pytest.raises(InvalidArgumentError, match="messages"):
        smollm2.apply_chat_template(None)  # type: ignore[arg-type]


def test_the_bos_text_is_left_to_the_tokenizer_that_adds_it(smollm2: llamacffi.Model) -> None:
    specials = smollm2.chat_specials()
    vocab = smollm2.vocab
    assert specials["eos_token"] == vocab.token_to_piece(vocab.eos, special=True).decode()
    assert (specials["bos_token"] == "") == vocab.add_bos


@pytest.fixture(scope="module")
def llama_server(smollm2: llamacffi.Model) -> Iterator[str]:
    """llama.cpp's own server on SmolLM2, whose /apply-template renders a conversation with its Jinja engine."""
    with llama_server_on(smollm2) as url:
        yield url


@contextlib.contextmanager
def llama_server_on(model: llamacffi.Model, *args: str) -> Iterator[str]:
    """llama.cpp's own server on ``model`` with more ``args``, at the URL given, stopped on leaving."""
    exe = raw_tools.require("llama-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [str(exe), "-m", str(model.path), "--host", "127.0.0.1", "--port", str(port), "-c", "256", "--no-webui"]
    proc = subprocess.Popen([*argv, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "llama-server did not start"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_prompts_equal_llama_servers(
    smollm2: llamacffi.Model, llama_server: str, conversation: list[tuple[str, str]]
) -> None:
    body = {"messages": [{"role": r, "content": c} for r, c in conversation]}
    theirs = httpx.post(llama_server + "/apply-template", json=body, timeout=30).json()["prompt"]
    assert smollm2.apply_chat_template(conversation) == theirs
