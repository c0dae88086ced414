"""The files of a conversion: every file the converter reads from a checkpoint folder, and the one it writes.

Reads go through ``source_file`` and the readers below. A name must stay inside the folder (no "..", nothing
absolute: names can come from the folder's own modules.json or shard index), and the file, its symlinks followed,
must lie inside ``source_region``: the folder itself, or for a snapshot of the Hugging Face cache the model's cache
folder, whose ``snapshots/<revision>/<file>`` links to ``../../blobs/<hash>``. Nothing else is followed. Any error
of reading or parsing (unreadable, not UTF-8, invalid JSON, JSON nested deeper than the parser's stack, a JSON
value of the wrong kind) is a ConversionError naming the file.

``check_output`` refuses, before anything is read, an output the conversion could not or must not write.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from tinybert.errors import ConversionError


def source_region(folder: Path) -> Path:
    """Where the files of ``folder`` may lie once their symlinks are followed: the folder, or for a folder inside a
    Hugging Face cache snapshot (``<repo>/snapshots/<revision>/...``, beside ``<repo>/blobs``) the cache folder of
    that model, ``<repo>``."""
    real = folder.resolve()
    for parent in real.parents:
        if parent.name == "snapshots" and (parent.parent / "blobs").is_dir():
            return parent.parent
    return real


def source_file(folder: Path, name: str) -> Path:
    """``folder / name``, checked to be a file of the checkpoint (see the module docstring)."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if (not parts or parts[0] == "/" or ".." in parts or "\\" in name or "\0" in name):
        raise ConversionError(f"{folder}: {name!r} points outside the model folder")
    path = folder.joinpath(*parts)
    real = path.resolve()
    if not real.is_relative_to(source_region(folder)):
        raise ConversionError(f"{path} leads outside the model folder (to {real})")
    return path


def read_bytes(folder: Path, name: str) -> bytes:
    path = source_file(folder, name)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def read_text(folder: Path, name: str) -> str:
    data = read_bytes(folder, name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{folder / name}: not UTF-8 text (byte {exc.start})") from None


def read_json(folder: Path, name: str, kind: type | None = None) -> object:
    """The JSON value of a file of the checkpoint; with ``kind`` (dict or list), a value of that kind."""
    text = read_text(folder, name)
    try:
        value = json.loads(text)
    except ValueError:
        raise ConversionError(f"{folder / name}: not valid JSON") from None
    except RecursionError:
        raise ConversionError(f"{folder / name}: not valid JSON (nested deeper than the parser's stack)") from None
    if kind is not None and not isinstance(value, kind):
        raise ConversionError(f"{folder / name}: not a JSON {'object' if kind is dict else 'list'}")
    return value


def check_output(src: Path, out: Path, force: bool) -> None:
    """Refuse an output that is a folder, lies in a missing or unwritable folder, lies inside the source's region
    (a conversion never replaces or adds to its own input: the checkpoint's files, the cache blobs they link to),
    or exists when ``force`` is not set. Checked before the checkpoint is read, so a bad output path fails at
    once rather than after the whole conversion."""
    if out.is_dir():
        raise ConversionError(f"output {out} is a folder; name the .safetensors file to write")
    folder = out.parent
    if not folder.is_dir():
        raise ConversionError(f"output folder {folder} does not exist")
    if out.resolve().is_relative_to(source_region(src)):
        raise ConversionError(f"output {out} lies inside the checkpoint folder {src}: write it somewhere else")
    if (out.exists() or out.is_symlink()) and not force:
        raise ConversionError(f"{out} exists; pass force=True (tinybert convert --force) to replace it")
    try:   # the writer's temporary file goes beside the output: make sure one can be created there
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".writable", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConversionError(f"cannot write in {folder} ({exc.strerror or exc})") from None
