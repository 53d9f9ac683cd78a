"""A reasoning model's thinking apart from its answer: split whole and as a stream in pieces of any size, the
server's whole and streamed responses to a scripted answer (with tool calls after the thinking), and SmolLM2 under
a template whose generation prompt opens the block."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llamacffi.chat import THINKING_TAGS, ThinkingTags
from llamacffi.server import reasoning
from llamacffi.service.events import Chunk, Finish
from test_grammar import accepts
from test_tool_calls import TEMPLATES, needs_templates

CALL = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call>'
ANSWERS = [
    ("<think>\nA plan.\n</think>\n\nThe answer.", False, ("\nA plan.\n", "The answer.")),
    ("  <think>x</think>y", False, ("x", "y")),
    ("<think>cut short", False, ("cut short", "")),
    ("<think></think>", False, ("", "")),
    ("<think>", False, ("", "")),  # cut right after the opening tag
    ("No thinking. <think>x</think>", False, (None, "No thinking. <think>x</think>")),
    ("<thin", False, (None, "<thin")),
    ("  ", False, (None, "  ")),
    ("", False, (None, "")),
    ("A plan.</think>\n\nThe answer <think> stays.", True, ("A plan.", "The answer <think> stays.")),
    ("All thought </thin", True, ("All thought </thin", "")),
    ("</think>", True, ("", "")),
    ("", True, ("", "")),
    (f"<think>Rome.</think>\n{CALL}", False, ("Rome.", CALL)),
]


(MISTRAL_MARKS,) = [t for t in THINKING_TAGS if t.opening == "[THINK]"]
(HARMONY,) = [t for t in THINKING_TAGS if t.opening == "<|channel|>analysis<|message|>"]


def _in_marks(text: str, marks: ThinkingTags) -> str:
    """``text`` with its tags, and their starts, written in ``marks``."""
    return text.replace("</thin", marks[1][:-2]).replace("<thin", marks[0][:-2]).replace("k>", marks[0][-2:])


@pytest.mark.parametrize("marks", [reasoning.THINK, MISTRAL_MARKS])
@pytest.mark.parametrize("text, inside, parts", ANSWERS)
def test_an_answer_splits_the_same_whole_and_in_pieces(
    text: str, inside: bool, parts: tuple[Any, str], marks: ThinkingTags
) -> None:
    text = _in_marks(text, marks)
    parts = (None if parts[0] is None else _in_marks(parts[0], marks), _in_marks(parts[1], marks))
    assert reasoning.split(text, inside, marks) == parts
    for size in [1, 2, 3, 7, 100]:
        s = reasoning.Splitter(inside, marks)
        fed = [s.feed(text[k : k + size]) for k in range(0, len(text), size)] + [s.finish()]
        assert ("".join(t for t, _ in fed), "".join(a for _, a in fed)) == (parts[0] or "", parts[1]), size


HARMONY_ANSWERS = [
    ("<|channel|>analysis<|message|>A plan.<|end|><|start|>assistant<|channel|>final<|message|>Paris.",
     ("A plan.", "Paris.")),
    ("<|channel|>final<|message|>Paris.", (None, "Paris.")),  # no thinking: the final channel's header dropped
    ("<|channel|>analysis<|message|>cut short", ("cut short", "")),
    ("<|channel|>analysis<|message|>", ("", "")),
    ("<|channel|>analysis<|message|>x<|end|><|start|>assistant<|chan", ("x", "<|start|>assistant<|chan")),
    ("<|channel|>analysis<|message|>x<|end|> <|start|>assistant to=functions.f<|channel|>commentary<|message|>{}",
     ("x", "<|start|>assistant to=functions.f<|channel|>commentary<|message|>{}")),  # a call: the answer read for it
    ("Paris.", (None, "Paris.")),
    ("<|chan", (None, "<|chan")),
    ("<|channel|>fin", (None, "<|channel|>fin")),
]  # fmt: skip


(GEMMA4,) = [t for t in THINKING_TAGS if t.opening == "<|channel>thought"]
GEMMA4_ANSWERS = [
    ("<|channel>thought\nA plan.\n<channel|>Paris.", ("\nA plan.\n", "Paris.")),
    ("<|channel>thought\n<channel|>Paris.", ("\n", "Paris.")),
    ("<|channel>thought\ncut short", ("\ncut short", "")),
    ("Paris.", (None, "Paris.")),
    ("<|chan", (None, "<|chan")),
]


@pytest.mark.parametrize(
    "marks, text, parts", [(HARMONY, *a) for a in HARMONY_ANSWERS] + [(GEMMA4, *a) for a in GEMMA4_ANSWERS]
)
def test_gpt_oss_and_gemma_4_answers_split_into_their_channels(
    marks: ThinkingTags, text: str, parts: tuple[Any, str]
) -> None:
    assert reasoning.split(text, False, marks) == parts
    for size in [1, 2, 3, 7, 100]:
        s = reasoning.Splitter(False, marks)
        fed = [s.feed(text[k : k + size]) for k in range(0, len(text), size)] + [s.finish()]
        assert ("".join(t for t, _ in fed), "".join(a for _, a in fed)) == (parts[0] or "", parts[1]), size


def test_the_tags_come_from_the_template() -> None:
    from llamacffi.chat import thinking_tags, thinks

    assert _in_marks("<think>x</think> <thin </thin", MISTRAL_MARKS) == "[THINK]x[/THINK] [THIN [/THIN"
    assert thinking_tags("{{ '<think>' }}{% if x %}</think>{% endif %}") == reasoning.THINK
    assert thinking_tags("{{ '[THINK]' + t + '[/THINK]' }}") == MISTRAL_MARKS
    assert thinking_tags("{{ messages }}") is None and not thinks("chatml")
    if TEMPLATES.is_dir():
        found: dict[str, set[str]] = {}
        for p in TEMPLATES.glob("*.jinja"):
            if (tags := thinking_tags(p.read_text())) is not None:
                found.setdefault(tags.opening, set()).add(p.stem)
        assert found[MISTRAL_MARKS.opening] == {"mistralai-Ministral-3-14B-Reasoning-2512"}
        assert found[HARMONY.opening] == {"openai-gpt-oss-120b"}
        assert found["<seed:think>"] == {"ByteDance-Seed-OSS"}
        assert found[GEMMA4.opening] == {"google-gemma-4-31B-it", "google-gemma-4-31B-it-interleaved"}
        assert len(found[reasoning.THINK.opening]) > 20


def test_a_prompt_that_opens_the_block() -> None:
    assert reasoning.opened("<|im_start|>assistant\n<think>\n")
    assert not reasoning.opened("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert reasoning.shut("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not reasoning.shut("<|im_start|>assistant\n<think>\n") and not reasoning.shut("<|im_start|>assistant\n")
    assert not reasoning.opened("<|im_start|>assistant\n")
    assert reasoning.opened("[INST]Hi[/INST][THINK]", MISTRAL_MARKS)
    assert not reasoning.opened("[INST]Hi[/INST][THINK]", reasoning.THINK)
    assert reasoning.closed("[INST]Hi[/INST][THINK]", MISTRAL_MARKS).endswith("[THINK]\n\n[/THINK]\n\n")
    if TEMPLATES.is_dir():  # Gemma 4's template with thinking off closes an empty block: the answer starts after it
        from llamacffi.chat import apply_template

        gemma = (TEMPLATES / "google-gemma-4-31B-it.jinja").read_text()
        prompt = apply_template(gemma, [("user", "Hi")])
        assert reasoning.shut(prompt, GEMMA4) and not reasoning.opened(prompt, GEMMA4)
        thinking = apply_template(gemma, [("user", "Hi")], variables={"enable_thinking": True})
        assert not reasoning.shut(thinking, GEMMA4) and thinking.endswith("<|turn>model\n")


# ---- the server on a scripted answer -----------------------------------------------------------------------------


class _Scripted:
    """Choices that stream a fixed answer in pieces, as the engine's do."""

    def __init__(self, pieces: list[str], reason: str = "stop") -> None:
        self.pieces = pieces
        self.reason = reason

    async def __aiter__(self) -> AsyncIterator[tuple[int, Chunk | Finish]]:
        for piece in self.pieces:
            yield 0, Chunk(piece)
        yield 0, Finish(self.reason, 1, 0, len(self.pieces))

    def tokens(self) -> tuple[int, int]:
        return 0, len(self.pieces)

    def cancel(self) -> None:
        pass


@pytest.fixture(scope="module")
def service() -> Iterator[Any]:
    from conftest import THREADS
    from llamacffi.service import LlamaCppService, LocalBackendConfig

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        yield svc


@pytest.fixture(scope="module")
def model(service: Any) -> Iterator[Any]:
    from llamacffi.service import ModelConfig

    template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% if open %}<think>\n{% endif %}"
        "{% if shut %}<think>\n\n</think>\n\n{% endif %}{% endif %}{# a template that writes </think> blocks #}"
    )
    m = service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=2, chat_template=template))
    assert m.thinks
    yield m
    m.close()


def _job(model: Any, answer: str, size: int, **body: Any) -> Any:
    from llamacffi.server import completions, requests

    parsed = requests.parse_chat({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body})
    job = completions.prepare("m", model, parsed, True)
    job.choices = [_Scripted([answer[k : k + size] for k in range(0, len(answer), size)])]
    return job


def _both(model: Any, answer: str, size: int, **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole response's message, and the message a client builds from the stream's deltas."""
    from llamacffi.server import completions
    from llamacffi.server.metrics import Metrics

    async def run() -> tuple[dict[str, Any], list[bytes]]:
        whole = await completions.respond(_job(model, answer, size, **body), Metrics(dict))
        events = [e async for e in completions.stream(_job(model, answer, size, stream=True, **body), Metrics(dict))]
        return whole, events

    whole, events = asyncio.run(run())
    built: dict[str, Any] = {"content": None, "reasoning_content": None, "tool_calls": None}
    for line in b"".join(events).decode().split("\n\n"):
        if not line.startswith("data: {"):
            continue
        (choice,) = json.loads(line[6:])["choices"]
        built["finish_reason"] = choice["finish_reason"] or built.get("finish_reason")
        for key in ("content", "reasoning_content"):
            if choice["delta"].get(key) is not None:
                built[key] = (built[key] or "") + choice["delta"][key]
        if "tool_calls" in choice["delta"]:
            built["tool_calls"] = [c["function"] for c in choice["delta"]["tool_calls"]]
    message = whole["choices"][0]["message"]
    said = {
        "content": message["content"],
        "reasoning_content": message.get("reasoning_content"),
        "tool_calls": [c["function"] for c in message["tool_calls"]] if "tool_calls" in message else None,
        "finish_reason": whole["choices"][0]["finish_reason"],
    }
    return said, built


TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("size", [1, 4, 500])
def test_the_server_sends_thinking_as_reasoning_content_whole_and_streamed(model: Any, size: int) -> None:
    said, built = _both(model, "<think>\nA plan.\n</think>\n\nParis.", size)
    assert said == built == {"content": "Paris.", "reasoning_content": "\nA plan.\n", "tool_calls": None,
                             "finish_reason": "stop"}  # fmt: skip
    said, built = _both(model, "Paris.", size)
    assert (
        said == built == {"content": "Paris.", "reasoning_content": None, "tool_calls": None, "finish_reason": "stop"}
    )
    said, built = _both(model, "<think>\nA plan.\n</think>\n\nParis.", size, reasoning_format="none")
    assert said == built and said["content"] == "<think>\nA plan.\n</think>\n\nParis." and not said["reasoning_content"]
    said, built = _both(model, "A plan.\n</think>\nParis.", size, chat_template_kwargs={"open": True})
    assert said == built and (said["reasoning_content"], said["content"]) == ("A plan.\n", "Paris.")


@pytest.mark.parametrize("size", [1, 4, 500])
def test_calls_after_the_thinking_are_read(model: Any, size: int) -> None:
    call = '{"name": "get_time", "arguments": {"city": "Rome"}}'  # the template has no syntax: the described one
    said, built = _both(model, f"<think>Rome's time.</think>\n{call}", size, tools=TOOLS)
    assert said == built
    assert said == {"content": None, "reasoning_content": "Rome's time.", "finish_reason": "tool_calls",
                    "tool_calls": [{"name": "get_time", "arguments": '{"city": "Rome"}'}]}  # fmt: skip
    said, built = _both(model, f"<think>Rome's time.</think>\nIt is {call}", size, tools=TOOLS)
    assert said == built and said["content"] == f"It is {call}" and said["tool_calls"] is None
    said, built = _both(model, "<think>Only thinking", size, tools=TOOLS)
    assert said == built and (said["reasoning_content"], said["content"]) == ("Only thinking", "")
    for tools in [TOOLS, None]:
        said, built = _both(model, "<think></think>Paris.", size, **({"tools": tools} if tools else {}))
        assert said == built and (said["reasoning_content"], said["content"]) == (None, "Paris.")


def test_a_grammars_answer_may_think_first(model: Any, smollm2: Any) -> None:
    from llamacffi.server import completions, requests

    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"open": True}}
    assert completions.prepare("m", model, requests.parse_chat(body), True).thinking is True
    fmt = {"response_format": {"type": "json_object"}}
    forced = {"tools": TOOLS, "tool_choice": "required"}
    call = '{"name": "get_time", "arguments": {}}'
    vocab = smollm2.vocab
    for constrained, doc in [(fmt, '{"a": 1}'), (forced, call)]:
        job = completions.prepare("m", model, requests.parse_chat({**body, **constrained}), True)
        grammar = job.parsed.options.grammar
        assert job.thinking is True and job.texts[0].endswith("assistant: <think>\n")  # the block stays open
        assert accepts(vocab, grammar, f"A plan: </thin, <think>.\n</think>\n\n{doc}")
        assert accepts(vocab, grammar, f"</think>{doc}")  # no thinking at all
        assert not accepts(vocab, grammar, doc)  # the block must close first
        assert not accepts(vocab, grammar, f"x</think>\n</think>{doc}")  # and once
        assert not accepts(vocab, grammar, f"x</think>{doc[:-1]}")  # then the document, whole
        assert not accepts(vocab, grammar, f"x</think>\n\n\n\n\n\n{doc}")  # after a few blanks only
        # without the block opened, it is optional
        job = completions.prepare("m", model, requests.parse_chat({**body, **constrained, "chat_template_kwargs": {}}),
                                  True)  # fmt: skip
        grammar = job.parsed.options.grammar
        assert job.thinking is False and job.texts[0].endswith("assistant: ")
        assert accepts(vocab, grammar, doc) and accepts(vocab, grammar, f"<think>A plan.</think>\n{doc}")
        assert not accepts(vocab, grammar, f"A plan.</think>{doc}") and not accepts(vocab, grammar, f" {doc}")
        # the block the prompt closed (thinking turned off): the document comes first
        shut = requests.parse_chat({**body, **constrained, "chat_template_kwargs": {"shut": True}})
        job = completions.prepare("m", model, shut, True)
        grammar = job.parsed.options.grammar
        assert job.thinking is None and job.texts[0].endswith("assistant: <think>\n\n</think>\n\n")
        assert accepts(vocab, grammar, doc) and not accepts(vocab, grammar, f"<think>A plan.</think>\n{doc}")
        # reasoning_format "none": the content is the document alone, after a block closed empty
        job = completions.prepare("m", model, requests.parse_chat({**body, **constrained, "reasoning_format": "none"}),
                                  True)  # fmt: skip
        assert job.thinking is None and job.texts[0].endswith("assistant: <think>\n\n</think>\n\n")
        assert accepts(vocab, job.parsed.options.grammar, doc)
    with pytest.raises(Exception, match="reasoning_format"):
        requests.parse_chat({**body, "reasoning_format": "raw"})
    assert requests.parse_chat({**body, "reasoning_format": None}).reasoning == "auto"
    for falsy in ["", False, 0]:
        with pytest.raises(Exception, match="reasoning_format"):
            requests.parse_chat({**body, "reasoning_format": falsy})


@pytest.mark.parametrize("size", [1, 4, 500])
def test_a_constrained_answer_after_thinking_whole_and_streamed(model: Any, size: int) -> None:
    opened = {"chat_template_kwargs": {"open": True}}
    fmt = {"response_format": {"type": "json_object"}}
    said, built = _both(model, 'A plan.</think>\n\n{"a": 1}', size, **opened, **fmt)
    assert said == built == {"content": '{"a": 1}', "reasoning_content": "A plan.", "tool_calls": None,
                             "finish_reason": "stop"}  # fmt: skip
    call = '{"name": "get_time", "arguments": {"city": "Rome"}}'
    said, built = _both(model, f"<think>Rome's time.</think>\n{call}", size, tools=TOOLS, tool_choice="required")
    assert said == built == {"content": None, "reasoning_content": "Rome's time.", "finish_reason": "tool_calls",
                             "tool_calls": [{"name": "get_time", "arguments": '{"city": "Rome"}'}]}  # fmt: skip
    said, built = _both(model, "Rome's time, cut", size, tools=TOOLS, tool_choice="required", **opened)
    assert said == built and (said["reasoning_content"], said["content"], said["tool_calls"]) == (
        "Rome's time, cut", "", None)  # fmt: skip


def test_smollm2_answers_a_json_format_under_a_thinking_template(model: Any) -> None:
    TestClient = pytest.importorskip("starlette.testclient").TestClient
    from llamacffi.server import create_app

    body = {"model": "m", "messages": [{"role": "user", "content": "Give a JSON object."}], "max_tokens": 48,
            "temperature": 0, "response_format": {"type": "json_object"}}  # fmt: skip
    with TestClient(create_app({"m": model})) as client:
        r = client.post("/v1/chat/completions", json=body)  # the block is optional: SmolLM2 answers at once
        assert r.status_code == 200, r.text
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "stop" and "reasoning_content" not in choice["message"]
        assert isinstance(json.loads(choice["message"]["content"]), dict)
        r = client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {"open": True}})
        assert r.status_code == 200, r.text  # inside the block the prompt opened, it thinks to its length
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "length" and choice["message"]["content"] == ""
        assert "{" not in choice["message"]["reasoning_content"][:5]  # free text, not the document


def test_smollm2_thinking_inside_an_opened_block(model: Any) -> None:
    TestClient = pytest.importorskip("starlette.testclient").TestClient
    from llamacffi.server import create_app

    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 24,
            "temperature": 0, "chat_template_kwargs": {"open": True}}  # fmt: skip
    with TestClient(create_app({"m": model})) as client:
        r = client.post("/v1/chat/completions", json=body)
        message = r.json()["choices"][0]["message"]
        assert message["reasoning_content"] and message["content"] == ""  # it never closes the block
        r = client.post("/v1/chat/completions", json={**body, "reasoning_format": "none"})
        kept = {"role": "assistant", "content": message["reasoning_content"], "refusal": None}
        assert r.json()["choices"][0]["message"] == kept
    with TestClient(create_app({"m": model}, reasoning_format="none")) as client:  # the server's default
        assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"] == kept
        r = client.post("/v1/chat/completions", json={**body, "reasoning_format": "auto"})
        assert r.json()["choices"][0]["message"] == message
    with pytest.raises(ValueError, match="reasoning_format"):
        create_app({"m": model}, reasoning_format="raw")


@needs_templates
def test_an_assistants_thinking_in_a_chain_of_calls_goes_back_to_the_template(service: Any) -> None:
    from llamacffi.server import completions, requests
    from llamacffi.service import ModelConfig

    qwen3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
    served = service.load_model("smollm2-135m", config=ModelConfig(context_size=512, parallel=1, chat_template=qwen3))
    try:
        called = {"role": "assistant", "content": None, "reasoning_content": "I need Rome's time.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}  # fmt: skip
        result = {"role": "tool", "tool_call_id": "c1", "content": "10:15"}
        body = {
            "model": "m",
            "tools": TOOLS,
            "messages": [{"role": "user", "content": "Time in Rome?"}, called, result],
        }
        (text,) = completions.prepare("m", served, requests.parse_chat(body), True).texts
        assert "<think>\nI need Rome's time.\n</think>" in text
        with pytest.raises(Exception, match="reasoning_content"):
            requests.parse_chat({**body, "messages": [body["messages"][0], {**called, "reasoning_content": 5}]})
    finally:
        served.close()


CALLS = {
    "hermes": '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    "qwen-xml": "<tool_call>\n<function=get_time>\n</function>\n</tool_call>",
    "mistral": "[TOOL_CALLS]get_time[ARGS]{}",
    "llama3": '{"name": "get_time", "parameters": {}}',
    "minimax": '<minimax:tool_call>\n<invoke name="get_time">\n</invoke>\n</minimax:tool_call>',
    "gemma4": "<|tool_call>call:get_time{}<tool_call|>",
}


@pytest.mark.parametrize("marks", [reasoning.THINK, MISTRAL_MARKS])
@pytest.mark.parametrize("syntax", sorted(CALLS))
def test_thinking_before_a_forced_call_in_each_syntax(smollm2: Any, syntax: Any, marks: ThinkingTags) -> None:
    from llamacffi.server import calls, structured

    tools = structured.parse_tools(TOOLS, "required", False)
    assert tools is not None
    alone = calls.grammar(syntax, tools, None, None, True)
    assert alone is not None and accepts(smollm2.vocab, alone, CALLS[syntax])
    for inside, head in [(True, "Rome's time.</think>\n"), (False, "<think>Rome's time.</think>\n"), (False, "")]:
        grammar = reasoning.first(alone, inside, marks)
        head = _in_marks(head, marks)
        assert accepts(smollm2.vocab, grammar, head + CALLS[syntax]), (inside, head)
        assert not accepts(smollm2.vocab, grammar, head + "It is noon.")


@pytest.fixture(scope="module")
def ministral(service: Any) -> Iterator[Any]:
    """SmolLM2 under Ministral 3 Reasoning's template: [THINK] blocks and Mistral's tool calls (plain text to
    SmolLM2)."""
    from llamacffi.service import ModelConfig

    if not TEMPLATES.is_dir():
        pytest.skip("llama.cpp's templates are not there (not built)")
    template = (TEMPLATES / "mistralai-Ministral-3-14B-Reasoning-2512.jinja").read_text()
    m = service.load_model("smollm2-135m", config=ModelConfig(context_size=2048, parallel=1, chat_template=template))
    assert m.thinking_tags == MISTRAL_MARKS and m.tool_syntax == "mistral"
    yield m
    m.close()


@pytest.mark.parametrize("size", [1, 4, 500])
def test_thinking_in_mistrals_tags_and_the_calls_after_it(ministral: Any, size: int) -> None:
    from llamacffi.server import completions, requests

    said, built = _both(ministral, "[THINK]A plan.[/THINK]Paris.", size)
    assert said == built and (said["reasoning_content"], said["content"]) == ("A plan.", "Paris.")
    call = '[TOOL_CALLS]get_time[ARGS]{"city": "Rome"}'
    said, built = _both(ministral, f"[THINK]Rome's time.[/THINK]{call}", size, tools=TOOLS)
    assert said == built == {"content": None, "reasoning_content": "Rome's time.", "finish_reason": "tool_calls",
                             "tool_calls": [{"name": "get_time", "arguments": '{"city": "Rome"}'}]}  # fmt: skip
    said, built = _both(ministral, "[THINK]A plan.[/THINK]Paris.", size, reasoning_format="none")
    assert said == built and said["content"] == "[THINK]A plan.[/THINK]Paris."
    # the tags, and the calls' markers beside tools, are special tokens of Mistral's vocabularies, written out
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    job = completions.prepare("m", ministral, requests.parse_chat(body), True)
    assert job.parsed.options.preserved_tokens == ("[THINK]", "[/THINK]") and job.thinking is False
    job = completions.prepare("m", ministral, requests.parse_chat({**body, "tools": TOOLS}), True)
    assert set(job.parsed.options.preserved_tokens) == {"[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"}


@pytest.fixture(scope="module")
def gpt_oss(service: Any) -> Iterator[Any]:
    """SmolLM2 under gpt-oss's template: its analysis channel, then its final one (plain text to SmolLM2)."""
    from llamacffi.service import ModelConfig

    if not TEMPLATES.is_dir():
        pytest.skip("llama.cpp's templates are not there (not built)")
    template = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text()
    m = service.load_model("smollm2-135m", config=ModelConfig(context_size=2048, parallel=1, chat_template=template))
    assert m.thinking_tags == HARMONY
    yield m
    m.close()


@pytest.mark.parametrize("size", [1, 4, 500])
def test_gpt_oss_thinks_in_its_analysis_channel_and_answers_in_its_final_one(gpt_oss: Any, size: int) -> None:
    answer = "<|channel|>analysis<|message|>A plan.<|end|><|start|>assistant<|channel|>final<|message|>Paris."
    said, built = _both(gpt_oss, answer, size)
    assert said == built and (said["reasoning_content"], said["content"]) == ("A plan.", "Paris.")
    said, built = _both(gpt_oss, "<|channel|>final<|message|>Paris.", size)
    assert said == built and (said["reasoning_content"], said["content"]) == (None, "Paris.")
    said, built = _both(gpt_oss, answer, size, reasoning_format="none")
    assert said == built and said["content"] == answer


def test_gpt_oss_may_think_before_a_constrained_answer(gpt_oss: Any, smollm2: Any) -> None:
    from llamacffi.server import completions, requests

    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    job = completions.prepare("m", gpt_oss, requests.parse_chat(body), True)
    assert job.thinking is False and job.texts[0].endswith("<|start|>assistant")
    assert job.parsed.options.preserved_tokens == HARMONY.special  # the channels' special tokens, written out
    job = completions.prepare("m", gpt_oss, requests.parse_chat({**body, "response_format": {"type": "json_object"}}),
                              True)  # fmt: skip
    grammar, vocab, doc = job.parsed.options.grammar, smollm2.vocab, '{"a": 1}'
    assert job.thinking is False
    for text in [
        f"<|channel|>analysis<|message|>A plan.<|end|><|start|>assistant<|channel|>final<|message|>{doc}",
        f"<|channel|>final<|message|>{doc}",
        doc,
    ]:
        assert accepts(vocab, grammar, text), text
    for text in [
        "<|channel|>analysis<|message|>A plan.<|end|><|start|>assistant<|channel|>final<|message|>Hi",
        f"<|channel|>final<|message|>A plan.{doc}",
        f"<|channel|>commentary<|message|>{doc}",
    ]:
        assert not accepts(vocab, grammar, text), text
