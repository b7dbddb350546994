"""headwise.models._chat: chat templates rendered as transformers' apply_chat_template renders them.

The oracle is transformers' ``apply_chat_template(..., tokenize=False)`` on a minimal tokenizer
with the same special tokens; the SmolLM2 GGUF's own template is compared in test_gguf.py.
"""

from __future__ import annotations

import re
import sys

import jinja2
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from headwise.models._chat import render_chat

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@pytest.fixture(scope="module")
def hf() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL)


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Héllo <b>&</b> \"wörld\" 😀"},
    {"role": "assistant", "content": "Hi!\n  indented", "reasoning": "greet back", "tool_calls": None},
    {"role": "user", "content": "Again?", "name": "bob"},
]

TEMPLATES = {
    "tojson": "{{ messages | tojson }}|{{ messages[1] | tojson(indent=2) }}|"
    "{{ {'b': 1, 'a': '<é>'} | tojson(sort_keys=True, separators=(',', ':')) }}",
    "loopcontrols": "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
    "{{ m.content }};{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}",
    "trim-and-lstrip-blocks": (
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n"
        "User: {{ m.content }}\n"
        "    {% elif m.role == 'assistant' %}\n"
        "Assistant: {{ m.content }}{{ eos_token }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "Assistant:\n"
        "{% endif %}"
    ),
    "namespace": "{% set ns = namespace(n=0, last='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{% set ns.last = m.role %}{% endfor %}{{ ns.n }} {{ ns.last }}",
    "special-tokens": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{{ unk_token }}",
    "tools-and-documents": "{% if tools is none %}no tools{% endif %} {% if documents is none %}no documents{% endif %}",
    "generation": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]"
    "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
    "strftime": "{{ strftime_now('%Y') }}",
    "dict": "{{ dict(a=1, b=messages[0].role) | tojson }} {{ messages[3].name }}",
    "extra-variable": "{% if enable_thinking %}<think>{% endif %}{{ messages[-1].content }}",
    "none-and-reasoning-fields": "{% for m in messages %}{{ m.role }}:{{ m.tool_calls is defined }},"
    "{{ m.reasoning_content }},{{ m.thinking }},{{ m.reasoning }};{% endfor %}",
}


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_renders_as_transformers(hf, name, add_generation_prompt):
    template = TEMPLATES[name]
    extra = {"enable_thinking": True} if name == "extra-variable" else {}
    ours = render_chat(template, CHAT, add_generation_prompt=add_generation_prompt, **SPECIAL, **extra)
    theirs = hf.apply_chat_template(
        CHAT, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    assert ours == theirs


def test_tojson_writes_unicode_and_html_unescaped():
    assert render_chat("{{ messages[0].content | tojson }}", [{"role": "u", "content": "<é>&'"}]) == '"<é>&\'"'


def test_messages_are_not_changed():
    messages = [{"role": "user", "content": "a", "meta": {"k": [1, 2]}}]
    render_chat("{{ messages[0].meta.k | length }}", messages)
    assert messages == [{"role": "user", "content": "a", "meta": {"k": [1, 2]}}]


# ---------------------------------------------------------------- bad messages


@pytest.mark.parametrize(
    ("messages", "error", "pattern"),
    [
        ("Hi", TypeError, "messages must be a list of dicts.*got str"),
        ({"role": "user", "content": "Hi"}, TypeError, "messages must be a list of dicts.*got dict"),
        ([], ValueError, "messages is empty"),
        ([["user", "Hi"]], TypeError, r"messages\[0\] is a list .*each message is a dict"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], ValueError, r"messages\[1\] has no 'role' \(keys: \['content'\]\)"),
        ([{"role": "user"}], ValueError, r"messages\[0\] has no 'content'"),
        ([{"role": None, "content": "a"}], TypeError, r"messages\[0\]\['role'\] is a NoneType"),
        ([{"role": "user", "content": ["a", "b"]}], TypeError, r"messages\[0\]\['content'\] is a list"),
        ([{"role": "user", "content": "a", "x": object()}], TypeError, r"messages\[0\]\['x'\] is a object; .*plain data"),
        ([{"role": "user", "content": "a", 3: "x"}], TypeError, r"messages\[0\] has a key 3 of type int"),
    ],
)
def test_bad_messages(messages, error, pattern):
    with pytest.raises(error, match=pattern):
        render_chat("{{ messages }}", messages)


def test_bad_arguments():
    chat = [{"role": "user", "content": "a"}]
    with pytest.raises(TypeError, match=r"template must be a str \(Jinja text\), got bytes \(from my.gguf\)"):
        render_chat(b"{{ messages }}", chat, source="my.gguf")
    with pytest.raises(TypeError, match=r"tools\[0\] is a set"):
        render_chat("{{ tools }}", chat, tools=[{1, 2}])


# ---------------------------------------------------------------- template errors


@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("{% for m in messages %}{{ m }}", "does not compile: Unexpected end of template.*line 1"),
        ("{{ raise_exception('Only user and assistant roles are supported') }}", "TemplateError: Only user and assistant"),
        ("{{ messages.__class__.__mro__ }}", "SecurityError"),
        ("{{ ''.__class__.__subclasses__() }}", "SecurityError"),
        ("{{ messages.append(1) }}", "SecurityError"),
        ("{% set ns = namespace(_hidden=1) %}", "SecurityError.*underscore name '_hidden'"),
        ("{% set ns = namespace() %}{% set ns._x = 1 %}", "SecurityError.*underscore name '_x'"),
        ("{{ messages[0].content + 1 }}", r"raised TypeError .*while rendering"),
    ],
)
def test_template_errors_name_the_source(template, pattern):
    with pytest.raises(ValueError, match=re.escape("/models/m.gguf: tokenizer.chat_template") + ".*" + pattern):
        render_chat(template, [{"role": "user", "content": "a"}], source="/models/m.gguf: tokenizer.chat_template")


def test_missing_or_old_jinja(monkeypatch):
    chat = [{"role": "user", "content": "a"}]
    monkeypatch.setattr(jinja2, "__version__", "3.1.5")
    with pytest.raises(ImportError, match=r"jinja2 3.1.5 has known sandbox escapes.*jinja2>=3.1.6"):
        render_chat("{{ 1 }}", chat)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match="needs the 'jinja2' package"):
        render_chat("{{ 2 }}", chat)
