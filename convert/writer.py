"""Write one safetensors file deterministically and atomically.

Written here rather than with ``safetensors.numpy.save_file`` because that serialises metadata
from a hash map, so key order (and the file's bytes) could change between runs; here tensors and
metadata keys are sorted, so the same input always gives the same bytes. The file is written to a
temporary name in the target folder and renamed over the target only when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tinybert.errors import ConversionError

# safetensors (and so the loader) refuses a header above 100,000,000 bytes: the converter stays well inside that,
# so a file it writes always opens. Metadata is most of the header (the tokenizer, escaped as ASCII JSON).
HEADER_LIMIT = 80_000_000

_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
          np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}


def _ordered(tensors: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    # Widest dtype first keeps every tensor naturally aligned without gaps (safetensors forbids gaps).
    return sorted(tensors.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))


def header_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, array in _ordered(tensors):
        if array.dtype not in _NAMES:
            raise ConversionError(f"tensor {name}: dtype {array.dtype} cannot be written")
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, sort_keys=False, separators=(",", ":"), ensure_ascii=True).encode()
    if len(raw) > HEADER_LIMIT:
        sizes = {key: len(json.dumps(value)) for key, value in metadata.items()}
        largest = max(sizes, key=sizes.get)
        raise ConversionError(f"the file's header would take {len(raw) / 1e6:.1f} MB, above the converter's limit of "
                              f"{HEADER_LIMIT / 1e6:.0f} MB (the loader reads up to 100 MB); its largest entry is "
                              f"metadata {largest!r} ({sizes[largest] / 1e6:.1f} MB)")
    raw += b" " * (-(len(raw)) % 8)  # data section starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str],
                      progress=None) -> None:
    """Write ``tensors`` and string ``metadata`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConversionError(f"output folder {folder} does not exist")
    header = header_bytes(tensors, metadata)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConversionError(f"cannot write in {folder} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header)
            for _, array in _ordered(tensors):
                fh.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
                if progress is not None:
                    progress(array.nbytes)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException as exc:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):    # a full disk, a folder that went away: the output's problem, named
            raise ConversionError(f"cannot write {path}: {exc}") from exc
        raise
