"""A model name → a tinybert file: what every public class and CLI command accepts as its model.

    a tinybert file         used as it is
    a Hugging Face folder   converted once into the tinybert cache
    a GGUF file             (llama.cpp's format, a decoder) converted once into the tinybert cache
    a Hub id                "org/name" (or "name"), with a revision as ``revision=`` or "org/name@revision":
                            looked up in the Hugging Face cache first, downloaded through huggingface_hub when
                            the network is allowed, then converted once into the tinybert cache

Offline first: an id whose snapshot is in the Hugging Face cache never touches the network, and nothing is
downloaded when ``local_files_only=True`` or ``HF_HUB_OFFLINE`` is set. ``HF_HOME`` / ``HF_HUB_CACHE`` say where
that cache is (huggingface_hub reads them). Downloads go through huggingface_hub alone, never hand-written HTTP.

The tinybert cache is ``$TINYBERT_CACHE``, else ``$XDG_CACHE_HOME/tinybert``, else ``~/.cache/tinybert``. Each
converted model is one file under ``models/``, named by what it was made from and how: the id and the commit
of its snapshot (or a folder's path and a fingerprint of its files' names, sizes and modification times, or a
GGUF file's path, size and modification time), the
dtype, the file format version and the converter version; a change to any of them makes a new entry. The
converter writes a temporary file and renames it (a reader never sees half a file); a lock file beside the
entry makes two processes that convert the same model at once produce one file (the second waits, then uses
it); an entry that no longer validates is converted again (``open_model`` asks for that when loading fails).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from .. import format as fmt
from ..errors import InputError, ModelFileError

DTYPES = ("int8", "int4", "fp32")

# What a conversion reads from a Hub repository: configs, tokenizer files, safetensors weights and the
# sentence-transformers module folders (1_Pooling/config.json, ...). Not ONNX, OpenVINO, TF or Flax copies.
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.spm", "*.tiktoken"]
_HUB_TORCH_FILES = ["pytorch_model*.bin"]       # only when a repository has no safetensors weights
_HUB_SKIP = ["onnx/*", "openvino/*", "*.onnx", "tf_*", "flax_*", "*.msgpack", "*.h5"]

# A Hub id: "name" or "org/name" (letters, digits, "-", "_", "."), optionally "@revision".
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}(?:/[A-Za-z0-9][\w.-]{0,95})?)(?:@(?P<rev>[\w./-]{1,200}))?$")


def cache_dir() -> Path:
    """The tinybert cache: $TINYBERT_CACHE, else $XDG_CACHE_HOME/tinybert, else ~/.cache/tinybert."""
    if os.environ.get("TINYBERT_CACHE"):
        return Path(os.environ["TINYBERT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinybert"


def resolve(name: str | Path, dtype: str = "int8", revision: str | None = None,
            local_files_only: bool | None = None) -> tuple[Path, Callable[[], Path] | None]:
    """The tinybert file for ``name`` (see the module docstring), and for a cache entry a function that converts
    it again (None for the user's own file). ``dtype``: "int8", "int4" or "fp32", for folders and ids.

    Raises ModelFileError when ``name`` is neither an existing file or folder nor a Hub id that can be found
    (offline) or downloaded, and ConversionError / UnsupportedModelError from the converter."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    path = Path(name)
    if path.is_file():
        if is_gguf(path):
            return _cached(path, _file_key(path), dtype)
        return path, None
    if path.is_dir():
        if (path / "config.json").is_file():
            return _cached(path, _folder_key(path), dtype)
        raise ModelFileError(f"{path} is a folder without config.json: not a Hugging Face model folder")
    text = str(name)
    hub = _hub_id(text, revision)
    if hub is None or text.endswith((".safetensors", ".gguf")) or os.sep in text.replace("/", "", 1):
        raise ModelFileError(f"no such model file or folder: {text}")
    repo, revision = hub
    snapshot = _hub_snapshot(repo, revision, local_files_only)
    return _cached(snapshot, f"{repo.replace('/', '--')}@{snapshot.name}", dtype)


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file (llama.cpp's format): it starts with the magic "GGUF". A tinybert file
    never does (a safetensors file starts with its header's length)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def hf_folder(name: str | Path, revision: str | None = None, local_files_only: bool | None = None) -> Path:
    """A Hugging Face folder for ``name``: the folder itself, or a Hub id's snapshot (from the Hugging Face cache,
    else downloaded, as ``resolve`` finds it); a GGUF file is returned as it is. What ``tinybert convert``
    reads."""
    if Path(name).is_dir() or (Path(name).is_file() and is_gguf(Path(name))):
        return Path(name)
    hub = _hub_id(str(name), revision)
    if hub is None or Path(name).exists():
        raise ModelFileError(f"{name} is not a Hugging Face model folder or Hub id")
    return _hub_snapshot(*hub, local_files_only)


def _hub_id(text: str, revision: str | None) -> tuple[str, str | None] | None:
    """(repo, revision) of a Hub id ("org/name", "org/name@rev" or ``revision``), None when ``text`` is not one."""
    match = _HUB_ID.match(text)
    if match is None:
        return None
    if revision is not None and match.group("rev") is not None:
        raise ModelFileError(f"{text} names a revision and revision={revision!r} names another: give one")
    return match.group("repo"), revision or match.group("rev")


def _hub_snapshot(repo: str, revision: str | None, local_files_only: bool | None) -> Path:
    """The snapshot folder of ``repo`` at ``revision``: from the Hugging Face cache, else downloaded."""
    try:
        from huggingface_hub import errors as hub
        from huggingface_hub import is_offline_mode, snapshot_download
    except ImportError:        # a dependency of tokenizers, so normally present
        raise ModelFileError(f"{repo} is not a file or folder here, and loading Hub ids needs huggingface_hub: "
                             "pip install huggingface_hub") from None
    offline = bool(local_files_only) or is_offline_mode()
    errors = (hub.LocalEntryNotFoundError, hub.RepositoryNotFoundError, hub.RevisionNotFoundError,
              hub.OfflineModeIsEnabled, hub.HfHubHTTPError, OSError, ValueError)

    def snapshot(patterns: list[str], local: bool) -> Path:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, ignore_patterns=_HUB_SKIP,
                                      local_files_only=local))

    try:
        try:
            folder = snapshot(_HUB_FILES, True)
            if not (folder / "config.json").is_file():
                raise hub.LocalEntryNotFoundError(f"{repo}: the cached snapshot has no config.json")
        except hub.LocalEntryNotFoundError:
            if offline:
                raise
            print(f"tinybert: downloading {repo} from the Hugging Face Hub", file=sys.stderr)
            folder = snapshot(_HUB_FILES, False)
        if not any(folder.glob("*.safetensors")):
            folder = snapshot(_HUB_FILES + _HUB_TORCH_FILES, offline)
    except errors as err:
        where = ("not in the Hugging Face cache, and downloads are off (HF_HUB_OFFLINE or local_files_only)"
                 if offline else "could not be found or downloaded")
        raise ModelFileError(f"{repo}{'@' + revision if revision else ''} is not a file or folder here, and as a "
                             f"Hugging Face Hub id it {where}: {type(err).__name__}: {err}") from None
    return folder


def _folder_key(folder: Path) -> str:
    """A key for a Hugging Face folder: its real path and every file's name, size and modification time (a
    changed or replaced checkpoint gets a new entry; hashing gigabytes of weights at every load would not do)."""
    folder = folder.resolve()
    digest = hashlib.sha256(str(folder).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{folder.name}-{digest.hexdigest()[:16]}"


def _file_key(path: Path) -> str:
    """A key for a GGUF file: its real path, size and modification time (as for a folder: a replaced file gets a
    new entry, without hashing gigabytes at every load)."""
    real = path.resolve()
    stat = real.stat()
    digest = hashlib.sha256(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{real.stem}-gguf-{digest}"


def _converter_version() -> str:
    from tinybert_convert import CONVERTER_VERSION

    return str(CONVERTER_VERSION)


def _cached(source: Path, key: str, dtype: str) -> tuple[Path, Callable[[], Path]]:
    """The cache entry converted from ``source``, converting it now if it is not there yet."""
    entry = (cache_dir() / "models" /
             f"{key}.{dtype}.f{fmt.FORMAT_VERSION}.c{_converter_version()}.safetensors")

    def convert(replace: bool) -> Path:
        from filelock import FileLock
        from tinybert_convert import convert as convert_folder

        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            if replace or not entry.is_file():     # another process may have made it while this one waited
                print(f"tinybert: converting {source} to {dtype} (once) → {entry}", file=sys.stderr)
                convert_folder(source, entry, dtype=dtype, force=True)
        return entry

    if not entry.is_file():
        convert(False)
    return entry, lambda: convert(True)
