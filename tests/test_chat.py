"""Chat templates in the Pythonic layer: llamacffi.chat.apply_template and Model.apply_chat_template."""

from __future__ import annotations

import pytest

import llamacffi
from llamacffi import InvalidArgumentError, LlamaError
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
