"""The checkpoint's chat template and the special tokens it reads, for the file's ``chat_template`` metadata.

Found where transformers' tokenizer finds them (tokenization_utils_base.py, ``from_pretrained`` and
``get_chat_template``): chat_template.jinja first; else tokenizer_config.json's ``chat_template``, a string or a list
of ``{"name", "template"}`` of which "default" is the one used; else the processor's legacy chat_template.json
(``{"chat_template": ...}``). The named special tokens (bos_token, eos_token, ...) come from tokenizer_config.json;
a tokenizer_config.json without ``added_tokens_decoder`` (the legacy layout) takes them from special_tokens_map.json
over its own, as transformers does.
"""

from __future__ import annotations

from pathlib import Path

from tinybert import format as fmt
from tinybert.errors import ConversionError, ModelFileError

from .files import read_json, read_text


def _template(folder: Path, config: dict) -> tuple[str, str] | None:
    """(template, the file it came from), or None when the checkpoint has none."""
    if (folder / "chat_template.jinja").is_file():
        return read_text(folder, "chat_template.jinja"), "chat_template.jinja"
    value = config.get("chat_template")
    where = "tokenizer_config.json"
    if value is None and (folder / "chat_template.json").is_file():
        value, where = read_json(folder, "chat_template.json", dict).get("chat_template"), "chat_template.json"
    if value is None:
        return None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" not in named:
            raise ConversionError(f"{folder / where}: chat_template lists templates {sorted(map(str, named))} "
                                  "but none named 'default'")
        value = named["default"]
    if not isinstance(value, str):
        raise ConversionError(f"{folder / where}: chat_template is not a string")
    return value, where


def _token(value: object) -> str | None:
    # a token is stored as a string or an AddedToken dict
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def chat_template_settings(folder: Path) -> dict | None:
    """The ``chat_template`` metadata of the checkpoint in ``folder`` (format.check_chat_template), or None when
    it has no chat template. A template that is malformed or does not compile is a ConversionError."""
    config = read_json(folder, "tokenizer_config.json", dict) if (folder / "tokenizer_config.json").is_file() else {}
    found = _template(folder, config)
    if found is None:
        return None
    template, where = found
    settings = dict(config)
    if "added_tokens_decoder" not in config and (folder / "special_tokens_map.json").is_file():
        settings.update(read_json(folder, "special_tokens_map.json", dict))
    tokens = {name: _token(settings.get(name)) for name in fmt.CHAT_SPECIAL_TOKENS}
    return template_settings(template, {k: v for k, v in tokens.items() if v is not None}, str(folder / where))


def template_settings(template: str, special_tokens: dict[str, str], where: str) -> dict:
    """The ``chat_template`` metadata of ``template`` and the named special tokens it reads, checked and compiled
    (a ConversionError naming ``where`` when it is malformed or does not compile)."""
    value = {"template": template, "special_tokens": special_tokens}
    problem = fmt.check_chat_template(value)
    if problem:
        raise ConversionError(f"{where}: chat template: {problem}")
    from tinybert.api.chat import compile_template

    try:
        compile_template(template)
    except ModelFileError as exc:
        raise ConversionError(f"{where}: {exc}") from None
    return value
