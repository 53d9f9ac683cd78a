"""More variables for a chat template (llama-server's ``chat_template_kwargs``), such as Qwen 3's
``enable_thinking``: checked, rendered by the chat layer, defaulted by ``ModelConfig``, overridden per chat, and taken
by the server from a request."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import llamacffi
from llamacffi import InvalidArgumentError
from llamacffi.chat import apply_template, check_variables
from test_chat import llama_server_on
from test_tool_calls import TEMPLATES, needs_templates

GREETED = "{{ greeting | default('-') }}|{% for m in messages %}{{ m.content }}{% endfor %}"
NO_THINKING = "<think>\n\n</think>\n\n"


def test_variables_are_checked_and_copied() -> None:
    given = {"enable_thinking": False, "opts": {"depth": [1, 2.5, None, "x"]}}
    checked = check_variables(given)
    assert checked == given and checked["opts"] is not given["opts"]
    for bad, says in [
        ([("a", 1)], "mapping"),
        ({"two words": 1}, "identifier"),
        ({1: 1}, "identifier"),
        ({"messages": []}, "itself sets"),
        ({"add_generation_prompt": False}, "itself sets"),
        ({"raise_exception": 1}, "itself sets"),
        ({"namespace": 0}, "itself sets"),  # Jinja's own
        ({"x": object()}, "JSON data"),
        ({"x": math.nan}, "JSON data"),
        ({"x": {"a": "b\0"}}, "NUL"),
        ({"x": ["\udcff"]}, "Unicode"),
    ]:
        with pytest.raises(InvalidArgumentError, match=says):
            check_variables(bad)


def test_a_jinja_template_renders_them_and_a_builtin_one_has_none() -> None:
    assert apply_template(GREETED, [("user", "Hi")]) == "-|Hi"
    assert apply_template(GREETED, [("user", "Hi")], variables={"greeting": "Hello"}) == "Hello|Hi"
    assert apply_template("chatml", [("user", "Hi")], variables={"greeting": "Hello"}) == apply_template(
        "chatml", [("user", "Hi")]
    )
    with pytest.raises(InvalidArgumentError, match="itself sets"):
        apply_template(GREETED, [("user", "Hi")], variables={"tools": []})
    deep = "{% if x is defined %}{{ x.y.z }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(InvalidArgumentError, match=r"fails with the variables \['x'\]"):
        apply_template(deep, [("user", "Hi")], variables={"x": 5})  # not llama.cpp's matcher, without them
    needs = "{% if x is not defined %}{{ raise_exception('x!') }}{% endif %}{{ x.y.z }}"
    with pytest.raises(InvalidArgumentError, match="fails with the variables"):
        apply_template(needs, [("user", "Hi")], variables={"x": 5})


@needs_templates
def test_qwen3_answers_without_thinking_when_told_as_llama_server_renders_it(smollm2: llamacffi.Model) -> None:
    path = TEMPLATES / "Qwen-Qwen3-0.6B.jinja"
    thinking = smollm2.apply_chat_template([("user", "Hi")], template=path.read_text())
    told = {"enable_thinking": False}
    direct = smollm2.apply_chat_template([("user", "Hi")], template=path.read_text(), variables=told)
    assert direct == thinking + NO_THINKING
    with llama_server_on(smollm2, "--chat-template-file", str(path)) as url:
        body = {"messages": [{"role": "user", "content": "Hi"}]}
        theirs = [
            httpx.post(url + "/apply-template", json=b, timeout=30).json()["prompt"]
            for b in [body, {**body, "chat_template_kwargs": told}]
        ]
    assert theirs == [thinking, direct]


@pytest.fixture(scope="module")
def service() -> Iterator[Any]:
    from conftest import THREADS
    from llamacffi.service import LlamaCppService, LocalBackendConfig

    with LlamaCppService(LocalBackendConfig(threads=THREADS)) as svc:
        yield svc


def test_the_models_config_gives_defaults_a_chat_overrides(service: Any) -> None:
    from llamacffi.service import GenerationOptions, InvalidConfigError, ModelConfig

    given = {"greeting": "Hello"}
    config = ModelConfig(context_size=64, parallel=1, chat_template=GREETED, chat_template_kwargs=given)
    given["greeting"] = "changed later"
    assert config.chat_template_kwargs == {"greeting": "Hello"}
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(InvalidConfigError, match="chat_template_kwargs") as e:
        ModelConfig(chat_template_kwargs={"bos_token": "x"})
    assert e.value.field == "ModelConfig.chat_template_kwargs"
    model = service.load_model("smollm2-135m", config=config)
    try:
        opts = GenerationOptions()
        assert model.format_chat([("user", "Hi")], opts) == "Hello|Hi"
        assert model.format_prompt("Hi", opts) == "Hello|Hi"
        assert model.format_chat([("user", "Hi")], opts, variables={"greeting": "Hey"}) == "Hey|Hi"
        with pytest.raises(InvalidConfigError, match="identifier") as e:
            model.format_chat([("user", "Hi")], opts, variables={"a b": 1})
        assert e.value.field == "chat_template_kwargs"
    finally:
        model.close()


def test_the_server_takes_them_from_a_request(service: Any) -> None:
    TestClient = pytest.importorskip("starlette.testclient").TestClient
    from llamacffi.server import completions, create_app, requests
    from llamacffi.service import ModelConfig

    model = service.load_model("smollm2-135m", config=ModelConfig(context_size=256, parallel=1, chat_template=GREETED))
    try:
        body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
        yo = {**body, "chat_template_kwargs": {"greeting": "Yo"}}
        plain = completions.prepare("m", model, requests.parse_chat(body), True)
        told = completions.prepare("m", model, requests.parse_chat(yo), True)
        assert plain.texts == ["-|Hi"] and told.texts == ["Yo|Hi"]
        with TestClient(create_app({"m": model}), raise_server_exceptions=False) as client:
            r = client.post("/v1/chat/completions", json={**yo, "max_tokens": 2})
            assert r.status_code == 200, r.text
            for bad, says in [
                ([1], "must be an object"),
                ({"messages": 1}, "itself sets"),
                ({"x": [1, "\0"]}, "NUL"),
            ]:
                r = client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": bad})
                assert r.status_code == 400, r.text
                error = r.json()["error"]
                assert error["param"] == "chat_template_kwargs" and says in error["message"]
    finally:
        model.close()


@needs_templates
@pytest.mark.parametrize("name", ["openai-gpt-oss-120b.jinja", "Qwen-Qwen3-0.6B.jinja"])
def test_reasoning_effort_renders_as_llama_servers(smollm2: llamacffi.Model, service: Any, name: str) -> None:
    TestClient = pytest.importorskip("starlette.testclient").TestClient
    from llamacffi.server import create_app
    from llamacffi.service import ModelConfig

    path = TEMPLATES / name
    config = ModelConfig(context_size=256, parallel=1, chat_template=path.read_text())
    model = service.load_model(str(smollm2.path), config=config)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
    bodies = [
        body,
        {**body, "reasoning_effort": "high"},
        {**body, "reasoning_effort": "none"},
        {**body, "reasoning_effort": "low", "chat_template_kwargs": {"reasoning_effort": "high"}},
    ]
    try:
        with TestClient(create_app({"m": model}), raise_server_exceptions=False) as client:
            ours = [client.post("/apply-template", json=b).json()["prompt"] for b in bodies]
            r = client.post("/v1/chat/completions", json={**body, "reasoning_effort": "most"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort"
        with llama_server_on(smollm2, "--chat-template-file", str(path)) as url:
            theirs = [httpx.post(url + "/apply-template", json=b, timeout=30).json()["prompt"] for b in bodies]
    finally:
        model.close()
    assert ours == theirs
    if "gpt-oss" in name:  # the template writes the effort: the request's, over chat_template_kwargs
        assert "Reasoning: medium" in ours[0] and "Reasoning: high" in ours[1] and "Reasoning: low" in ours[3]
    else:  # Qwen 3 knows no effort, and "none" turns its thinking off
        assert ours[0] == ours[1] == ours[3] and ours[2] == ours[0] + NO_THINKING
