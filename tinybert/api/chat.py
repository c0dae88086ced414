"""Chat templates: a conversation rendered into a prompt exactly as transformers' ``apply_chat_template`` renders it.

A template is Jinja code from the checkpoint (untrusted), so it runs in Jinja's immutable sandbox with what
transformers gives it (transformers/utils/chat_template_utils.py, ``_cached_compile_jinja_template`` and
``render_jinja_template``): ``trim_blocks`` and ``lstrip_blocks``, the loop-controls extension and a
``{% generation %}`` tag (transformers' AssistantTracker; rendering its body unchanged is all it does when no
assistant mask is asked for), the globals ``raise_exception``, ``strftime_now``, ``dict`` and ``namespace``, a
``tojson`` filter that does not escape HTML, and the variables ``messages``, ``tools`` (None), ``documents`` (None),
``add_generation_prompt`` and the tokenizer's named special tokens (``bos_token``, ``eos_token``, ...).
"""

from __future__ import annotations

import json
from datetime import datetime

from ..errors import InputError, ModelFileError

# A template's output is a prompt for one model context; far beyond any context it is a runaway template.
MAX_RENDERED_CHARS = 64 << 20
MAX_MESSAGES = 100_000


def check_messages(messages: object) -> list[dict[str, str]]:
    """The conversation as a fresh list of {"role", "content"} dicts, or InputError saying what is wrong."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, (list, tuple)):
        raise InputError(f"messages must be a list of {{'role': str, 'content': str}} dicts, "
                         f"got {type(messages).__name__}")
    if not messages:
        raise InputError("messages is empty: give at least one {'role': ..., 'content': ...} message")
    if len(messages) > MAX_MESSAGES:
        raise InputError(f"at most {MAX_MESSAGES} messages, got {len(messages)}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            keys = sorted(map(str, message)) if isinstance(message, dict) else type(message).__name__
            raise InputError(f"message {i} must be a dict with exactly the keys 'role' and 'content', got {keys}")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not role:
            raise InputError(f"message {i}: role must be a non-empty string, got {role!r:.60}")
        if not isinstance(content, str):
            raise InputError(f"message {i}: content must be a string, got {type(content).__name__}")
        try:        # a lone surrogate cannot be tokenized
            (role + content).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"message {i} is not valid Unicode (a lone surrogate?)") from None
        out.append({"role": str.__str__(role), "content": str.__str__(content)})
    return out


def _environment():
    """The Jinja environment transformers renders chat templates in (see the module docstring)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # transformers' AssistantTracker without a tracker: {% generation %}...{% endgeneration %} renders its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        # only dict() and dict.fromkeys(), not the dict type itself
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # no underscore-prefixed attributes: they lead to CPython internals
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def compile_template(text: str):
    """The compiled Jinja template; ModelFileError when it does not compile."""
    import jinja2

    try:
        return _environment().from_string(text)
    except jinja2.exceptions.TemplateError as exc:
        raise ModelFileError(f"the chat template does not compile: {exc}") from None
    except RecursionError:
        raise ModelFileError("the chat template does not compile: nested too deeply") from None


class ChatTemplate:
    """A file's chat template (format.check_chat_template's dict), compiled once."""

    def __init__(self, settings: dict) -> None:
        self.text: str = settings["template"]
        self.special_tokens: dict[str, str] = dict(settings["special_tokens"])
        self._template = compile_template(self.text)

    def render(self, messages: object, add_generation_prompt: bool = True) -> str:
        """The prompt text of ``messages`` (checked by check_messages), as
        ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``. A template's
        ``raise_exception`` (or any other failure of the template on these messages) is an InputError."""
        import jinja2

        if not isinstance(add_generation_prompt, bool):
            raise InputError(f"add_generation_prompt must be True or False, got {add_generation_prompt!r}")
        chat = check_messages(messages)
        variables = {**self.special_tokens, "messages": chat, "tools": None, "documents": None,
                     "add_generation_prompt": add_generation_prompt}
        pieces, size = [], 0
        try:
            for piece in self._template.generate(**variables):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise InputError(f"the chat template's output exceeds {MAX_RENDERED_CHARS} characters")
                pieces.append(piece)
        except jinja2.exceptions.TemplateError as exc:   # raise_exception, undefined names, sandbox refusals
            raise InputError(f"the chat template refused the messages: {exc.message or exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError,
                RecursionError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"the chat template failed on these messages: {type(exc).__name__}: {exc}") from None
        return "".join(pieces)
