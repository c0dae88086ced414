"""Typed reads of Hugging Face config values (config.json, sentence_bert_config.json, ...).

A config.json may state anything: ``int(x)`` and ``float(x)`` on its values raise ValueError or TypeError, and a
zero head count divides by zero later. Every number the converter takes from such a file goes through these
readers, which give the value with the right type and in range, or a ConversionError naming the file and key.
"""

from __future__ import annotations

import sys

from tinybert.errors import ConversionError

INT_LIMIT = 2 ** 31      # the runtime's ints are int32 (tinybert/config.py checks the same bound at load)
_REQUIRED = object()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first(config: dict, names: tuple[str, ...]) -> tuple[str, object]:
    """The first of ``names`` the config sets to something other than null, with its value."""
    for name in names:
        if config.get(name) is not None:
            return name, config[name]
    return names[0], None


def integer(config: dict, *names: str, default: object = _REQUIRED, minimum: int = 0,
            source: str = "config.json") -> int:
    """The first of ``names`` that is set, an integer (not a boolean) in [minimum, 2**31); ``default`` when none is
    set (required when no default is given)."""
    name, value = _first(config, names)
    if value is None:
        if default is _REQUIRED:
            raise ConversionError(f"{source} has none of {', '.join(names)}")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < INT_LIMIT:
        raise ConversionError(f"{source} {name} must be an integer in [{minimum}, 2**31), got {_short(value)}")
    return value


def number(config: dict, *names: str, default: float | None = None, source: str = "config.json") -> float:
    """The first of ``names`` that is set, a finite positive number (epsilons, rope theta); ``default`` when none is
    set (required when it is None)."""
    name, value = _first(config, names)
    if value is None:
        if default is None:
            raise ConversionError(f"{source} has none of {', '.join(names)}")
        return default
    # NaN fails the comparison; an int too large for a float compares exactly, without converting.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= sys.float_info.max:
        raise ConversionError(f"{source} {name} must be a positive number, got {_short(value)}")
    return float(value)


def string(config: dict, *names: str, default: str | None = None, source: str = "config.json") -> str | None:
    """The first of ``names`` that is set, a string (model_type, activation names); ``default`` when none is."""
    name, value = _first(config, names)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConversionError(f"{source} {name} must be a string, got {_short(value)}")
    return value


def strings(config: dict, name: str, source: str = "config.json") -> list[str]:
    """A list of strings (``architectures``); empty when the key is not set."""
    value = config.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConversionError(f"{source} {name} must be a list of strings, got {_short(value)}")
    return value
