"""Read a checkpoint's tensors into float32 numpy arrays.

safetensors is parsed here directly (header + memory map) so that bf16 and fp16 inputs convert
without torch. ``pytorch_model.bin`` needs torch and is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from tinybert.errors import ConversionError

from .files import read_json, source_file

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


def _to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # bf16 is the top half of an fp32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All floating-point tensors of one safetensors file, as float32 (integer buffers are skipped)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            if size < 8:
                raise ConversionError(f"{path}: not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8 or header_len > 100_000_000:
                raise ConversionError(f"{path}: safetensors header length is out of range")
            header = json.loads(fh.read(header_len))
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, RecursionError) as exc:    # RecursionError: JSON nested past the parser's stack
        raise ConversionError(f"{path}: cannot read safetensors file: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: safetensors header is not a JSON object")
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if (not isinstance(info, dict) or not isinstance(info.get("shape"), list)
                or not isinstance(info.get("data_offsets"), list) or len(info["data_offsets"]) != 2
                or not all(isinstance(v, int) and v >= 0 for v in info["shape"] + info["data_offsets"])):
            raise ConversionError(f"{path}: header entry of tensor {name} is malformed")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {dtype!r:.60}")
        if dtype not in ("F64", "F32", "F16", "BF16"):
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        np_dtype = np.dtype(_DTYPES[dtype])
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * np_dtype.itemsize or base + end > size or start < 0:
            raise ConversionError(f"{path}: tensor {name} has inconsistent offsets")
        raw = np.frombuffer(data, dtype=np_dtype, count=count, offset=base + start).reshape(shape)
        tensors[name] = _to_float32(raw, dtype)
    return tensors


def read_pytorch_bin(path: Path) -> dict[str, np.ndarray]:
    """A ``pytorch_model.bin`` state dict; torch is needed here and only here."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading pytorch_model.bin needs torch (pip install torch); "
                              "safetensors checkpoints convert without it") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ConversionError(f"{path}: cannot load with torch.load(weights_only=True): {exc}") from None
    return {name: t.detach().to(torch.float32).numpy()
            for name, t in state.items() if hasattr(t, "is_floating_point") and t.is_floating_point()}


def read_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    """Tensors of a Hugging Face model folder: single or sharded safetensors, else pytorch_model.bin."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(source_file(folder, single.name))
    if index.is_file():
        weight_map = read_json(folder, index.name, dict).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"{index}: weight_map must map tensor names to shard file names")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            # A shard is a file of this folder: no path separators, no "..", nothing absolute.
            if not shard or shard in (".", "..") or "/" in shard or "\\" in shard or "\0" in shard:
                raise ConversionError(f"{index}: shard name {shard!r} points outside the model folder")
            shard_path = source_file(folder, shard)     # a symlink may lead into the HF cache's blobs, nowhere else
            if not shard_path.is_file():
                raise ConversionError(f"{folder}: shard {shard} named in the index is missing")
            tensors.update(read_safetensors(shard_path))
        return tensors
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        return read_pytorch_bin(source_file(folder, binary.name))
    raise ConversionError(f"{folder}: no weights found (model.safetensors, "
                          "model.safetensors.index.json or pytorch_model.bin)")
