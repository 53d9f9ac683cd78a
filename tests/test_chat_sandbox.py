"""The bounded sandbox chat templates render in: what a template from a model file cannot ask for, and what a real
template still does."""

from __future__ import annotations

import functools
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import jinja2.exceptions
import jinja2.sandbox
import pytest

from llamacffi import chat_sandbox, limits
from llamacffi.chat import ChatTemplateError, apply_template

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo "}]
BIG = 3 * limits.CHAT_TEMPLATE_MAX_CHARS  # a width or count past the bound, small enough to be made if asked


def render(template: str) -> str:
    compiled = chat_sandbox.compile_template(template)
    assert compiled is not None
    return chat_sandbox.render(compiled, messages=MESSAGES, add_generation_prompt=True, bos_token="", eos_token="")


@pytest.fixture
def few_steps(monkeypatch: pytest.MonkeyPatch) -> int:
    """A small step budget, so that a template past it fails in milliseconds."""
    monkeypatch.setattr(chat_sandbox, "_MAX_STEPS", 100_000)
    return 100_000


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for m in messages %}{% endfor %}{% endfor %}",
        "{% for i in range(1000) %}{{ range(1000)|sum }}{% endfor %}",  # range items count, looped or not
        "{% for x in [1, [2, [3]]] recursive %}{% for i in range(99999) %}{% endfor %}{{ loop([x]) }}{% endfor %}",
        # filters that go through a text's characters or a range's numbers one by one
        "{{ ('x' * 200000)|unique|list|length }}",
        "{{ ('x' * 200000)|batch(1)|list|length }}",
        "{{ [1]|slice(200000)|list|length }}",
        "{% set r = range(1000) %}{% for i in range(200) %}{{ r|max }}{% endfor %}",
        # dicts made item by item
        "{% set d = dict(range(2000)|map('string')|batch(2)) %}"
        "{% for i in range(200) %}{% set e = dict(**d) %}{% endfor %}",
        "{{ lipsum(1, false, 200000, 200001)|length }}",
        # arguments given from a list or a dict, copied
        "{% set r = range(1000)|list %}{% for i in range(200) %}{% set t = cycler(*r) %}{% endfor %}",
        "{% set d = dict(range(2000)|map('string')|batch(2)) %}{% for i in range(200) %}{% set t = namespace(**d) %}"
        "{% endfor %}",
        # filters that go through a text word by word in Python
        "{{ ('a ' * 100000)|title|length }}",
        "{{ ('a ' * 100000)|urlize|length }}",
        "{{ ('a ' * 100000)|wordwrap(1)|length }}",
        "{{ ('<a>' * 100000)|striptags|length }}",
        "{{ ('a ' * 100000)|urlencode|length }}",
        # a recursive loop's own items, and its calls
        "{% for x in 'a' * 4 recursive %}{% if loop.depth == 1 %}{{ loop('x' * 200000) }}{% endif %}{% endfor %}",
        "{% for x in 'ab' recursive %}{% if loop.depth < 18 %}{{ loop('ab') }}{% endif %}{% endfor %}",
        # lazy filters, chained: each item each one yields
        "{{ range(20000)" + "|map('abs')" * 10 + "|list|length }}",
        # what goes through a text word by word or line by line, or splits it
        "{{ ('ab ' * 100000).split()|length }}",
        "{{ ('a,' * 200000).split(',')|length }}",
        "{{ ('a\n' * 200000).splitlines()|length }}",
        "{{ ('ab ' * 100000)|wordcount }}",
        "{{ ('a\n' * 200000)|indent(0)|length }}",
        # macros and blocks calling themselves twice
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(14) }}",
        "{% set ns = namespace(d=0) %}{% block b %}{% if ns.d < 12 %}{% set ns.d = ns.d + 1 %}"
        "{{ self.b() }}{{ self.b() }}{% set ns.d = ns.d - 1 %}{% endif %}{% endblock %}",
    ],
)
def test_loops_are_bounded_in_steps(template: str, few_steps: int) -> None:
    with pytest.raises(jinja2.exceptions.SecurityError, match=f"over {few_steps} steps"):
        render(template)


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * BIG }}",
        "{{ [1] * BIG }}",
        "{{ '%BIGd' % 1 }}",
        "{{ '%*d' % (BIG, 1) }}",
        "{{ '%BIGd'|format(1) }}",
        "{{ '{:>BIG}'.format('a') }}",
        "{{ '{:>{}}'.format('a', BIG) }}",
        "{{ '{:>{w}}'.format_map({'w': BIG}) }}",
        "{{ 'a'|center(BIG) }}",
        "{{ 'a\nb'|indent(BIG) }}",
        "{{ 'a'.ljust(BIG) }}",
        "{{ 'a'.zfill(BIG) }}",
        "{{ [1]|batch(BIG, 0)|list }}",
        "{{ lipsum(BIG) }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set ns = namespace(s=['ab']) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        # what grows with the product of two lengths, refused before it is made
        "{{ ('a' * 10000)|replace('a', 'b' * 10000) }}",
        "{{ ('a' * 10000).replace('a', 'b' * 10000) }}",
        "{{ ('a\n' * 10000)|indent('b' * 10000) }}",
        "{{ ('x' * 10000)|join('y' * 10000) }}",
        "{{ ('y' * 10000).join('x' * 10000) }}",
        "{{ ('a\t' * 10000).expandtabs(10000) }}",
        "{{ [[1, 2, 3]]|tojson(indent=10000000) }}",
    ],
)
def test_no_string_list_or_width_past_the_bound(template: str) -> None:
    with pytest.raises(jinja2.exceptions.SecurityError, match=f"over {limits.CHAT_TEMPLATE_MAX_CHARS}"):
        render(template.replace("BIG", str(BIG)))


@pytest.mark.parametrize(
    "template",
    [
        # one argument written by many fields
        "{{ ('{0}' * 1000).format('x' * 100000) }}",
        "{{ ('{a}' * 1000).format_map({'a': 'x' * 100000}) }}",
        "{{ ('%(a)s' * 1000) % {'a': 'x' * 100000} }}",
        "{{ ('%(a)s' * 1000)|format(a='x' * 100000) }}",
        # many fields, each wide
        "{{ ('{:>100000}' * 1000).format(*range(1000)) }}",
        "{{ ('%(a)100000d' * 1000) % {'a': 1} }}",
        "{{ ('{:.100000}' * 1000).format(*([1.5] * 1000)) }}",
        # a character written as a long text
        "{{ ('a' * 100000).translate({97: 'x' * 1000}) }}",
        # bytes, as strings
        "{{ 'x'.encode() * 100000000 }}",
        "{{ 'x'.encode().center(100000000) }}",
        "{{ '%100000000d'.encode() % 1 }}",
        "{{ ('y' * 10000).encode().join(['x'.encode()] * 10000) }}",
        "{{ ('y' * 10000).encode().replace('y'.encode(), ('x' * 10000).encode()) }}",
        # escaped, quoted or linked
        "{{ ('&' * 14000000)|e }}",
        "{{ {'a': '&' * 14000000}|xmlattr }}",
        "{{ ('\U0001f600' * 6000000)|urlencode }}",
        "{{ ('http://example.com ' * 200000)|urlize(target='x' * 1000) }}",
        # what a block, a macro or a filter block writes, joined
        "{% set s = 'x' * 10000000 %}{% set y %}{% for i in range(10) %}{{ s }}{% endfor %}{% endset %}{{ y|length }}",
        "{% set s = 'x' * 10000000 %}{% macro m() %}{% for i in range(10) %}{{ s }}{% endfor %}{% endmacro %}{{ m() }}",
        "{% set s = 'x' * 10000000 %}{% filter length %}{% for i in range(10) %}{{ s }}{% endfor %}{% endfilter %}",
        # indented as deep as it nests
        "{% set ns = namespace(x=['y' * 100] * 100000) %}"
        "{% for i in range(700) %}{% set ns.x = [ns.x, 1] %}{% endfor %}{{ ns.x|pprint }}",
    ],
)
def test_a_text_past_the_bound_is_refused_before_it_is_made(template: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(jinja2.exceptions.SecurityError, match=f"over {limits.CHAT_TEMPLATE_MAX_CHARS}"):
            render(template)
        assert tracemalloc.get_traced_memory()[1] < limits.CHAT_TEMPLATE_MAX_CHARS
    finally:
        tracemalloc.stop()


def test_constants_costing_characters_are_made_as_the_template_renders() -> None:
    # Jinja folds constant expressions as it compiles, outside a render's budget: here, 20 x 60 million characters.
    template = "{{ 'a'|center(60000000) ~ 'b'|center(60000000) }}" * 10
    tracemalloc.start()
    try:
        compiled = chat_sandbox.compile_template(template)
        assert tracemalloc.get_traced_memory()[1] < limits.CHAT_TEMPLATE_MAX_CHARS
    finally:
        tracemalloc.stop()
    assert compiled is not None
    with pytest.raises(jinja2.exceptions.SecurityError, match=f"over {limits.CHAT_TEMPLATE_MAX_CHARS}"):
        render(template)
    assert render("{{ 'ab'|upper ~ 'c'|center(3) ~ [1]|tojson }}{% if 'x'|length == 1 %}!{% endif %}") == "AB c [1]!"


def test_what_a_render_makes_in_all_is_bounded() -> None:
    # Each string is within the bound; forty of them are not.
    each = limits.CHAT_TEMPLATE_MAX_CHARS
    template = f"{{% for i in range(40) %}}{{% set x = 'a' * {each} %}}{{% endfor %}}"
    with pytest.raises(jinja2.exceptions.SecurityError, match=f"over {limits.CHAT_TEMPLATE_MAX_MADE} characters"):
        render(template)


@pytest.mark.parametrize(
    ("value", "copy"),
    [
        ("'x' * 1000", "v[::-1]"),
        ("[0] * 1000", "v[1:]"),
        ("dict(range(1000)|map('string')|batch(2))", "dict(**v)"),
        ("dict(range(1000)|batch(2))", "v.copy()"),
    ],
)
def test_copies_count_in_what_a_render_makes(value: str, copy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_sandbox, "_MAX_MADE", 1_000_000)
    with pytest.raises(jinja2.exceptions.SecurityError, match="over 1000000 characters in all"):
        render(f"{{% set v = {value} %}}{{% for i in range(10000) %}}{{% set c = {copy} %}}{{% endfor %}}")


@pytest.mark.parametrize(
    ("step", "refusal"),
    [("ns.n * ns.n", "multiplies numbers"), ("ns.n + ns.n", "adds numbers"), ("ns.n - (0 - ns.n)", "adds numbers")],
)
def test_numbers_grown_past_the_bound_are_refused(step: str, refusal: str) -> None:
    # Doubled four million times, a number has four million bits, and each addition takes longer.
    template = f"{{% set ns = namespace(n=7) %}}{{% for i in range(5000) %}}{{% set ns.n = {step} %}}{{% endfor %}}"
    with pytest.raises(jinja2.exceptions.SecurityError, match=refusal):
        render(template)


def doubled(times: int, pair: str = "[ns.x, ns.x]") -> str:
    """A template that makes ``ns.x`` hold the one before it twice (``pair``), ``times`` over, and ``ns.y`` the same
    (equal, not the same objects)."""
    return (
        f"{{% set ns = namespace(x=['ab'], y=['ab']) %}}{{% for i in range({times}) %}}"
        f"{{% set ns.x = {pair} %}}{{% set ns.y = {pair.replace('ns.x', 'ns.y')} %}}{{% endfor %}}"
    )


@pytest.mark.parametrize(
    "use",
    [
        "{{ ns.x }}",
        "{{ ns.x|tojson }}",
        "{{ ns.x|tojson|length }}",
        "{{ ns.x|string }}",
        "{{ ns.x|upper }}",
        "{{ ns.x|pprint }}",
        "{{ [ns.x]|join(',') }}",
        "{{ 'a' ~ ns.x }}",
        "{{ '%s' % [ns.x] }}",
        "{{ '{}'.format(ns.x) }}",
        "{{ ', '.join([ns.x|string]) }}",
        "{{ ns }}",  # a namespace is written as its attributes
        "{{ {'a': ns.x}.items() }}",  # and a dict view as its items
        "{{ {'a': ns.x}.values() }}",
        # compared or hashed along every path
        "{% if ns.x == ns.y %}{% endif %}",
        "{% if ns.x in [ns.y] %}{% endif %}",
        "{% if ns.x is eq(ns.y) %}{% endif %}",
        "{% if ns.x is lower %}{% endif %}",
        "{% set d = {ns.x: 1} %}",
        "{% set d = dict([(ns.x, 1)]) %}",
        "{{ [ns.x, ns.y]|unique|list|length }}",
    ],
)
@pytest.mark.parametrize("pair", ["[ns.x, ns.x]", "(ns.x, ns.x)", "{'k': ns.x, 'j': ns.x}", "[ns.x] * 2"])
def test_a_value_nested_by_reference_does_not_become_a_terabyte_of_text(use: str, pair: str) -> None:
    # Each object is walked once: refused long before the step budget is spent (a walk of every path would pass it).
    with pytest.raises(jinja2.exceptions.SecurityError, match=f"value of over {limits.CHAT_TEMPLATE_MAX_CHARS} char"):
        render(doubled(40, pair) + use)


def test_a_value_nested_by_reference_costs_the_objects_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2**17 paths, 18 objects: within a budget of 1000 steps, and written as Jinja writes it.
    monkeypatch.setattr(chat_sandbox, "_MAX_STEPS", 1000)
    template = doubled(16) + "{{ ns.x }}{{ ns.x|tojson|length }}{{ ns }}"
    assert len(render(template)) > 2**19
    assert render(template) == jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(template).render()


def test_what_a_walk_makes_stays_alive_until_it_ends() -> None:
    # A dict view's items are made as they are walked: were the first view's freed, the second's could take their ids.
    views = [{str(i): "" for i in range(100)}.items(), {str(i): "x" * 1000 for i in range(100)}.items()]
    assert chat_sandbox._measured(views) == chat_sandbox._measured([list(view) for view in views])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ([[0]] * 1000000)|sum(start=[])|length }}",
        "{{ ([[0] * 100] * 100000)|sum(start=[])|length }}",
        "{{ (range(100000)|map('string')|map('list')|list)|sum(start=[])|length }}",
        "{{ ([{'a': [0] * 100}] * 100000)|sum(attribute='a', start=[])|length }}",
        "{{ ([('x',) * 100] * 100000)|sum(start=())|length }}",
        "{{ ([[0]] * 1000000 + [[1]])|sum(start=[0] * 1000)|length }}",
    ],
)
def test_adding_lists_with_sum_is_bounded_before_it_runs(template: str) -> None:
    # Each partial sum is a copy: a million one-item lists would copy half a million million items.
    with pytest.raises(jinja2.exceptions.SecurityError, match=f"over {limits.CHAT_TEMPLATE_MAX_MADE} characters"):
        render(template)


@pytest.mark.parametrize(
    "use",
    [
        "{{ s.find('y') }}",
        "{{ 'y' in s }}",
        "{{ s == t }}",
        "{{ s|wordcount }}",
        "{{ s is in t }}",
        "{{ [s]|select('in', t)|list }}",
        "{{ l|max }}",
        "{{ l.index(0) }}",
        "{{ 1 in l }}",
        "{{ l|unique|list|length }}",
    ],
)
def test_what_a_render_reads_in_all_is_bounded(use: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Searching a long text or list makes nothing, and takes one step; two thousand times over, it reads 200 million
    # characters or two million items.
    monkeypatch.setattr(chat_sandbox, "_MAX_READ", 10_000_000)
    monkeypatch.setattr(chat_sandbox, "_MAX_STEPS", 100_000)
    values = "{% set s = 'x' * 100000 %}{% set t = 'x' * 100000 %}{% set l = [0] * 1000 %}"
    with pytest.raises(jinja2.exceptions.SecurityError, match=r"over (100000 steps|10000000 characters in all)"):
        render(values + "{% for i in range(2000) %}" + use + "{% endfor %}")


def test_namespace_and_dict_keep_any_number() -> None:
    assert render(f"{{% set ns = namespace(n={BIG}) %}}{{{{ ns.n }}}}{{{{ dict(a={BIG}).a }}}}") == str(BIG) * 2


def test_the_budget_is_per_render(few_steps: int) -> None:
    # Most of the budget, twice: each render has its own (a loop over a range counts its items and its iterations).
    template = f"{{% for i in range({few_steps // 2 - 1000}) %}}{{% endfor %}}done"
    assert render(template) == "done"
    assert render(template) == "done"


def test_apply_template_names_the_bound_a_template_passes(few_steps: int) -> None:
    # Not llama.cpp's matcher then: for a template it knows, it would format the chat another way.
    with pytest.raises(ChatTemplateError, match=r"passes a bound of llamacffi\.limits on these messages"):
        apply_template("{% for i in range(100000) %}{% for m in messages %}{% endfor %}{% endfor %}", [("user", "a")])
    with pytest.raises(ChatTemplateError, match=r"passes a bound .*Range too big"):  # Jinja's own bound on a range
        apply_template("{% for i in range(10**6) %}{% endfor %}{{ messages[0].content }}", [("user", "a")])


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{% if loop.last %}!{% endif %}{% endfor %}",
            "1/22/2!",
        ),
        ("{% for m in messages if m.role == 'user' %}{{ m.content }}{% else %}none{% endfor %}", "hi"),
        ("{% for m in [] %}x{% else %}none{% endfor %}", "none"),
        (
            "{% for x in [[1, [2]], [3]] recursive %}[{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}]"
            "{% endfor %}",
            "[[1][[2]]][[3]]",
        ),
        ("{{ {'a': [1, 'x'], 'b': none}|tojson }}", '{"a": [1, "x"], "b": null}'),
        ("{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(',') }}", "hi"),
        ("{{ '%-4s|%03d' % ('ab', 7) }}{{ '{:>4}'.format(1) }}{{ '%d'|format(5) }}", "ab  |007   15"),
        ("{{ messages[1].content|trim|upper }}{{ '-' * 3 }}{{ 'a' ~ 1 ~ [2] }}{{ [1] + [2] }}", "YO---a1[2][1, 2]"),
        ("{% autoescape true %}{{ '<' ~ messages[0].content }}{% endautoescape %}", "&lt;hi"),
        ("{{ 'x'|center(5) }}|{{ 'a\nb'|indent(2) }}|{{ range(3)|list }}|{{ 2 ** 10 }}", "  x  |a\n  b|[0, 1, 2]|1024"),
        ("{{ '%d'|format(1700000000000) }} {{ '{}'.format(1700000000000) }}", "1700000000000 1700000000000"),
        (
            "{{ ', '.join(messages|map(attribute='role')) }}|{{ messages|map(attribute='content')|join('/') }}",
            "user, assistant|hi/ yo ",
        ),
        (
            "{{ [[1], [2, 3]]|sum(start=[]) }}|{{ [{'n': 2}, {'n': 3}]|sum(attribute='n') }}|{{ range(4)|sum }}",
            "[1, 2, 3]|5|6",
        ),
    ],
)
def test_a_real_template_renders_as_jinja_renders_it(template: str, expected: str) -> None:
    assert render(template) == expected
    assert jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(template).render(messages=MESSAGES) == expected


# llama.cpp's collection of real templates (the vendored tree is there once the package is built).
TEMPLATES = Path(os.environ.get("LLAMACFFI_LLAMA_CPP_DIR") or Path(__file__).parent.parent / "vendor" / "llama.cpp")
TEMPLATES /= "models/templates"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATIONS: list[dict[str, object]] = [
    {"messages": [{"role": "user", "content": "Hi"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke."},
        ]
    },
    {"messages": [{"role": "user", "content": 'Quote: "x < y" & {braces}\nnew line'}], "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS},
    {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"t": 20}'},
            {"role": "assistant", "content": "It is 20."},
        ],
        "tools": TOOLS,
    },
]


def outcome(render: Callable[..., str], variables: dict[str, object]) -> str:
    """What a render gives: its text, or the kind of error it raises."""
    try:
        return render(**variables)
    except Exception as exc:
        return f"raises {type(exc).__name__}"


@pytest.mark.skipif(not TEMPLATES.is_dir(), reason="llama.cpp's models/templates is not there (package not built)")
@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.jinja")), ids=lambda p: p.stem)
def test_llama_cpps_templates_render_as_plain_jinja_renders_them(path: Path) -> None:
    source = path.read_text()
    plain = jinja2.sandbox.ImmutableSandboxedEnvironment(  # with Hugging Face's {% generation %} tag, as theirs
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", chat_sandbox._Generation]
    )
    plain.globals.update(raise_exception=chat_sandbox._raise_exception, strftime_now=chat_sandbox._strftime_now)
    plain.filters["tojson"] = chat_sandbox._tojson
    bounded = chat_sandbox.compile_template(source)
    try:
        theirs = plain.from_string(source)
    except jinja2.TemplateError:
        assert bounded is None
        return
    assert bounded is not None
    for given in CONVERSATIONS:
        variables = {"add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>", **given}
        assert outcome(functools.partial(chat_sandbox.render, bounded), variables) == outcome(theirs.render, variables)


def test_what_python_refuses_to_compile_is_a_template_jinja_cannot_compile() -> None:
    for template in ("{{ x" + "|abs" * 250 + " }}", "{{ " + "(" * 300 + "1" + ")" * 300 + " }}"):
        assert chat_sandbox.compile_template(template) is None  # SyntaxError, RecursionError: not raised


def test_hugging_face_s_generation_tag_renders_its_body() -> None:
    template = "{% for m in messages %}{% generation %}{{ m.content }};{% endgeneration %}{% endfor %}."
    assert render(template) == "".join(f"{m['content']};" for m in MESSAGES) + "."
    assert chat_sandbox.compile_template("{% generation %}x") is None  # not closed


def test_tojson_takes_hugging_face_s_arguments() -> None:
    assert render("{{ {'b': 'é', 'a': 1}|tojson(ensure_ascii=True, sort_keys=True) }}") == '{"a": 1, "b": "\\u00e9"}'
    assert render("{{ [1, 2]|tojson(separators=(',', ':')) }}") == "[1,2]"
    assert render("{{ {'a': 1}|tojson(indent=2) }}") == '{\n  "a": 1\n}'


def test_a_loop_s_own_variables_are_not_arguments_of_the_calls_in_it(few_steps: int) -> None:
    # Jinja passes them (_loop_vars) to every call in the loop: counted, they made a long chat quadratic.
    template = "{% set r = range(500)|list %}{% for i in range(1000) %}{% set a = r %}{{ 'x'.strip() }}{% endfor %}"
    assert render(template) == "x" * 1000
