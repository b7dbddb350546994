"""Chat templates: a model's Jinja template rendered over a conversation, as transformers renders it.

A chat template is Jinja text that ships with a model (a GGUF's ``tokenizer.chat_template``, a
tokenizer_config.json's ``chat_template``).  It comes from the model's author, so it is untrusted:
it runs in jinja2's ``ImmutableSandboxedEnvironment``, sees only plain data (str, int, float,
bool, None, lists and dicts of those), and cannot store underscore names on a ``namespace``.
The environment is transformers' (``apply_chat_template``): ``trim_blocks`` and
``lstrip_blocks`` on, the ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``),
``{% generation %}`` blocks rendered as their body, the globals ``raise_exception(message)`` and
``strftime_now(format)``, and a ``tojson`` filter that is ``json.dumps`` without HTML escaping
or ASCII escaping (``ensure_ascii``, ``indent``, ``separators``, ``sort_keys`` accepted)::

    text = render_chat(template, [{"role": "user", "content": "Hi"}], bos_token="<s>", eos_token="</s>")

Needs the ``jinja2`` package (3.1.6 or newer: older releases have known sandbox escapes).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["render_chat"]

#: jinja2 releases before this one have known sandbox escapes
_MIN_JINJA = (3, 1, 6)
#: names a message's reasoning comes under; templates read the first or the second
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
#: JSON-like types a template may see
_SCALARS = (str, int, float, bool, type(None))


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    source: str = "chat template",
    **extra: Any,
) -> str:
    """Render ``template`` over ``messages``: the prompt text a chat model expects.

    Equal to transformers' ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)`` with the same template and special tokens.

    Args:
        template: the Jinja chat template.
        messages: the conversation, a list of dicts with str ``role`` and ``content``.  Further
            keys (``name``, ``tool_calls``, ...) are passed through when they hold plain data,
            and dropped when None; a ``reasoning_content``, ``thinking`` or ``reasoning`` is
            given under the first two names as well (both as transformers does).
        add_generation_prompt: end with the template's prompt for the assistant's reply.
        bos_token, eos_token: the model's special token strings, for templates that write them
            (left undefined when None).
        source: where the template came from (a file and key), named in error messages.
        **extra: further variables the template reads (``tools``, ``documents`` — both None
            unless given —, ``pad_token``, ``enable_thinking``, ...); plain data only.

    Raises:
        TypeError: ``messages`` is not a list of dicts, a role or content is not a str, or a
            value is not plain data.
        ValueError: a message lacks ``role`` or ``content``, the list is empty, or the template
            fails to compile or render (the message names ``source``).
        ImportError: jinja2 is missing or older than 3.1.6.
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be a str (Jinja text), got {type(template).__name__} (from {source}).")
    chat = _checked_messages(messages)
    variables: dict[str, Any] = {"tools": None, "documents": None}
    for name, value in (("bos_token", bos_token), ("eos_token", eos_token)):
        if value is not None:
            variables[name] = _plain(value, name)
    for name, value in extra.items():
        variables[name] = _plain(value, name)
    variables.update(messages=chat, add_generation_prompt=bool(add_generation_prompt))
    compiled = _compile(template, source)
    jinja2 = _import_jinja()
    try:
        return compiled.render(**variables)
    except jinja2.TemplateError as err:
        raise ValueError(f"{source}: the chat template failed: {type(err).__name__}: {err}") from err
    except (TypeError, ValueError, LookupError, ArithmeticError, AttributeError) as err:
        raise ValueError(
            f"{source}: the chat template raised {type(err).__name__} ({err}) while rendering; the messages "
            "may lack a field this template expects."
        ) from err


def _checked_messages(messages: Any) -> list[dict[str, Any]]:
    """A plain-data copy of ``messages``, after checking it is a conversation."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"messages must be a list of dicts like {{'role': 'user', 'content': 'Hi'}}, got "
            f"{type(messages).__name__}."
        )
    if not messages:
        raise ValueError("messages is empty; a chat needs at least one message, e.g. [{'role': 'user', 'content': 'Hi'}].")
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(
                f"messages[{index}] is a {type(message).__name__} ({message!r:.60}); each message is a dict "
                "with 'role' and 'content'."
            )
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(
                    f"messages[{index}] has no {key!r} (keys: {sorted(map(str, message))}); each message is a "
                    "dict with 'role' and 'content'."
                )
            if not isinstance(message[key], str):
                raise TypeError(
                    f"messages[{index}][{key!r}] is a {type(message[key]).__name__} ({message[key]!r:.60}); "
                    "role and content must be str."
                )
        # transformers drops keys whose value is None (APIs send content=None, tool_calls=None)
        plain = _plain({k: v for k, v in message.items() if v is not None}, f"messages[{index}]")
        reasoning = next((plain[k] for k in _REASONING_FIELDS if k in plain), None)
        if reasoning is not None:  # every name templates read the reasoning under, as transformers does
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        chat.append(plain)
    return chat


def _plain(value: Any, where: str) -> Any:
    """A copy of ``value`` made of plain JSON-like Python types (the sandbox sees nothing else)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; keys must be str.")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}; a chat template sees only plain data (str, int, float, bool, "
        "None, lists and dicts of those). Convert it first, e.g. str(value) or value.tolist()."
    )


def _import_jinja() -> Any:
    try:
        import jinja2
    except ImportError as err:
        raise ImportError("rendering a chat template needs the 'jinja2' package; install it with `pip install jinja2`.") from err
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < _MIN_JINJA:
        raise ImportError(
            f"jinja2 {jinja2.__version__} has known sandbox escapes, and chat templates are untrusted; "
            f"upgrade it with `pip install -U 'jinja2>={'.'.join(map(str, _MIN_JINJA))}'`."
        )
    return jinja2


@functools.lru_cache(maxsize=16)
def _compile(template: str, source: str) -> Any:
    """The compiled template (cached: a chat loop renders the same template again and again)."""
    jinja2 = _import_jinja()
    environment = _environment()
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{source}: the chat template does not compile: {err.message} (line {err.lineno}).") from err
    except jinja2.TemplateError as err:
        raise ValueError(f"{source}: the chat template does not compile: {err}.") from err


@functools.cache
def _environment() -> Any:
    """transformers' chat-template environment (see the module docstring)."""
    jinja2 = _import_jinja()
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's text; it renders its body."""

        tags = {"generation"}  # noqa: RUF012 (jinja2 reads this class attribute)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses underscore names, so a template cannot reach Python internals."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own signature: `self` may be an attribute
            self, rest = args[0], args[1:]
            attributes = dict(*rest, **kwargs)
            for name in attributes:
                _check_attribute(name)
            jinja2.utils.Namespace.__init__(self, attributes)

        def __setitem__(self, name: str, value: Any) -> None:
            _check_attribute(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _check_attribute(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template cannot store the underscore name {name!r} on a namespace; rename it."
            )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(*args, **kwargs)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals.update(
        raise_exception=raise_exception, strftime_now=strftime_now, namespace=Namespace, dict=make_dict
    )
    return environment
