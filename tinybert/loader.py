"""Open a tinybert file and check it completely before any kernel sees it.

Reading goes through the ``safetensors`` library (which rejects malformed headers, overlapping or
out-of-bounds offsets and truncated files); on top of that every tensor the config implies must
be present with the right dtype and shape, and nothing else may be present. No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open

from . import buffers
from . import format as fmt
from .config import DecoderConfig, EncoderConfig, Seq2SeqConfig, TaskConfig, config_from_dict
from .errors import ModelFileError
from .tokenizer import CompactText

_DTYPES = {"F32": np.dtype(np.float32), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
           "F16": np.dtype(np.float16)}
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of the tensors. Called only after safetensors has opened the file,
    which rejects malformed headers and out-of-bounds or overlapping offsets."""
    with open(path, "rb") as fh:
        (header_len,) = np.frombuffer(fh.read(8), dtype="<u8")
        header = json.loads(fh.read(int(header_len)))
    base = 8 + int(header_len)
    return {name: (base + int(info["data_offsets"][0]), base + int(info["data_offsets"][1]))
            for name, info in header.items() if name != "__metadata__"}


class TensorStore(Mapping):
    """The tensors of a validated file, read on access (each access returns a fresh array).

    Names, dtypes and shapes are the ones the config implies; a read that disagrees (the file
    changed underneath) raises ModelFileError.
    """

    def __init__(self, path: Path, expected: dict[str, tuple[tuple[int, ...], np.dtype]],
                 offsets: dict[str, tuple[int, int]]) -> None:
        self._path = path
        self._expected = expected
        self._offsets = offsets   # absolute [begin, end) byte ranges, checked against the file size

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._expected:
            raise KeyError(name)
        shape, dtype = self._expected[name]
        begin, end = self._offsets[name]
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ModelFileError(f"{self._path}: tensor {name} holds {end - begin} bytes, its shape needs "
                                 f"{int(np.prod(shape)) * dtype.itemsize}")
        # A plain read, not a memory map of the file: a mapped file's touched pages count as this process's
        # memory for as long as the mapping lives, on top of the packed copies the model makes. The raw copy
        # is short-lived, so it gets an anonymous map of its own (buffers.zeros).
        array = buffers.zeros(shape, dtype)
        with open(self._path, "rb") as fh:
            fh.seek(begin)
            if fh.readinto(memoryview(array).cast("B")) != end - begin:
                raise ModelFileError(f"{self._path}: tensor {name} is truncated")
        return array

    def __contains__(self, name: object) -> bool:
        return name in self._expected      # without reading the tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._expected)

    def __len__(self) -> int:
        return len(self._expected)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._expected[name][0]


class FileMetadata(Mapping[str, str]):
    """A file's metadata as a read-only mapping, as an opened model keeps it: its long values (the tokenizer JSON:
    81 MB as a str for a 151k vocabulary) held compressed, and decompressed when read."""

    LONG = 1 << 14

    def __init__(self, metadata: Mapping[str, str]) -> None:
        self._values = {k: CompactText(v) if len(v) > self.LONG else v for k, v in metadata.items()}

    def __getitem__(self, key: str) -> str:
        value = self._values[key]
        return str(value) if isinstance(value, CompactText) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass
class ModelFile:
    """Everything in one tinybert file, validated."""

    path: Path
    config: EncoderConfig | DecoderConfig | Seq2SeqConfig
    tensors: TensorStore          # read on access: see TensorStore
    tokenizer_json: CompactText   # str() gives the JSON text
    pooling: dict | None      # encoders only
    quantization: str
    metadata: Mapping[str, str]   # a dict from load(); FileMetadata once a model holds it
    task: TaskConfig
    tokenizer_options: dict
    target_tokenizer_json: str | None = None     # encoder-decoders with separate target pieces (Marian)
    source_id_map: np.ndarray | None = None      # with it: model id of each source-tokenizer id, int32
    # (unk id, unknown text → model id, whether the text is the source's under the token rather than the token's)
    source_unknown_pieces: tuple[int, dict[str, int], bool] | None = None
    # encoders: prompts, similarity, ... (format.check_sentence_transformers); the defaults for older files
    sentence_transformers: dict = field(default_factory=fmt.default_sentence_transformers)
    # decoders: the chat template and the special tokens it reads (format.check_chat_template); None without one
    chat_template: dict | None = None
    # encoders and decoder embedders: sentence-transformers' Dense modules after pooling (format.check_dense)
    dense: list = field(default_factory=list)


def _json_key(metadata: dict[str, str], key: str) -> object:
    if key not in metadata:
        raise ModelFileError(f"metadata key {key!r} is missing")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):     # RecursionError: nesting deeper than the parser's stack
        raise ModelFileError(f"metadata {key!r} is not valid JSON") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a tinybert file, with its format name and version checked."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for any malformed file
        raise ModelFileError(f"{path}: not a valid safetensors file ({exc})") from None
    if metadata.get(fmt.KEY_FORMAT) != fmt.FORMAT_NAME:
        raise ModelFileError(f"{path}: not a tinybert file (metadata format={metadata.get(fmt.KEY_FORMAT)!r})")
    version = metadata.get(fmt.KEY_VERSION)
    if version != str(fmt.FORMAT_VERSION):
        raise ModelFileError(f"{path}: format version {version!r}, this tinybert reads version "
                             f"{fmt.FORMAT_VERSION}; convert the checkpoint again")
    return metadata


def _expected(config: EncoderConfig | DecoderConfig | Seq2SeqConfig, task: TaskConfig,
              quantization: str, dense: list) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    expected = {}
    if isinstance(config, DecoderConfig):
        shapes = fmt.decoder_tensor_shapes(config.to_dict(), lm_head=task.type == "text-generation")
    elif isinstance(config, Seq2SeqConfig):
        shapes = fmt.seq2seq_tensor_shapes(config.to_dict())
    else:
        shapes = fmt.encoder_tensor_shapes(config.to_dict())
        shapes.update(fmt.head_tensor_shapes(task.to_dict(), config.to_dict()))
    shapes.update(fmt.dense_tensor_shapes(dense))
    for name, shape in shapes.items():
        if quantization in ("int8", "int4") and fmt.is_quantized_name(name):
            expected[name] = (shape, np.dtype(np.int8))
            expected[name + fmt.SCALE_SUFFIX] = ((shape[0],), np.dtype(np.float32))
        else:
            expected[name] = (shape, np.dtype(np.float32))
    return expected


def load(path: str | Path) -> ModelFile:
    """Read and validate a tinybert file; raises ModelFileError on anything inconsistent."""
    path = Path(path)
    metadata = read_metadata(path)
    config = config_from_dict(_json_key(metadata, fmt.KEY_CONFIG))
    task = TaskConfig.from_dict(_json_key(metadata, fmt.KEY_TASK))
    # a decoder embedder: a decoder with task feature-extraction, pooled like an encoder
    embedder = isinstance(config, DecoderConfig) and task.type == "feature-extraction"
    if isinstance(config, DecoderConfig) and not config.causal and not embedder:
        raise ModelFileError(f"{path}: a decoder with bidirectional attention (causal false) only embeds: its task "
                             "must be feature-extraction")
    pooling = None
    if isinstance(config, EncoderConfig) or embedder:
        pooling = _json_key(metadata, fmt.KEY_POOLING)
        if (not isinstance(pooling, dict) or pooling.get("mode") not in fmt.POOLING_MODES
                or not isinstance(pooling.get("normalize"), bool)):
            raise ModelFileError(f"{path}: bad pooling metadata {metadata.get(fmt.KEY_POOLING)!r}")
    st_settings = fmt.default_sentence_transformers()
    if fmt.KEY_SENTENCE_TRANSFORMERS in metadata:
        if not (isinstance(config, EncoderConfig) or embedder):
            raise ModelFileError(f"{path}: sentence_transformers metadata in a {config.kind} file")
        st_settings = _json_key(metadata, fmt.KEY_SENTENCE_TRANSFORMERS)
        problem = fmt.check_sentence_transformers(st_settings)
        if problem:
            raise ModelFileError(f"{path}: bad sentence_transformers metadata: {problem}")
    dense = []
    if fmt.KEY_DENSE in metadata:
        if pooling is None:
            raise ModelFileError(f"{path}: dense metadata in a {config.kind} file without pooling")
        dense = _json_key(metadata, fmt.KEY_DENSE)
        problem = fmt.check_dense(dense, config.hidden_size)
        if problem:
            raise ModelFileError(f"{path}: bad dense metadata: {problem}")
    chat_template = None
    if fmt.KEY_CHAT_TEMPLATE in metadata:
        if not isinstance(config, DecoderConfig):
            raise ModelFileError(f"{path}: chat_template metadata in a {config.kind} file")
        chat_template = _json_key(metadata, fmt.KEY_CHAT_TEMPLATE)
        problem = fmt.check_chat_template(chat_template)
        if problem:
            raise ModelFileError(f"{path}: bad chat_template metadata: {problem}")
    quantization = metadata.get(fmt.KEY_QUANTIZATION)
    if quantization not in fmt.QUANTIZATIONS:
        raise ModelFileError(f"{path}: unknown quantization {quantization!r}")
    if not metadata.get(fmt.KEY_TOKENIZER):
        raise ModelFileError(f"{path}: metadata has no tokenizer")
    try:
        # compressed at once: as a str, a byte-level vocabulary's JSON takes two bytes a character (17 MB for
        # SmolLM2's 49k tokens), held through the tensor checks below
        tokenizer = CompactText(fmt.unpack_tokenizer(metadata[fmt.KEY_TOKENIZER]))
    except ValueError as exc:
        raise ModelFileError(f"{path}: bad tokenizer metadata: {exc}") from None
    if ((task.type == "text-generation") != (isinstance(config, DecoderConfig) and not embedder)
            or (task.type == "text2text-generation") != isinstance(config, Seq2SeqConfig)):
        raise ModelFileError(f"{path}: task {task.type!r} does not fit a {config.kind} model")
    target_tokenizer, source_id_map, unknown_pieces = _target_tokenizer(path, metadata, config)
    if task.type in ("masked-lm", "pretraining") and task.mlm_tied and task.mlm_size != config.embedding_size:
        raise ModelFileError(f"{path}: a tied MLM decoder must have the embedding width {config.embedding_size}")
    options = _json_key(metadata, fmt.KEY_TOKENIZER_OPTIONS)
    if (not isinstance(options, dict) or set(options) != {"mask_token", "clean_up_tokenization_spaces"}
            or not (options["mask_token"] is None or isinstance(options["mask_token"], str))
            or not isinstance(options["clean_up_tokenization_spaces"], bool)):
        raise ModelFileError(f"{path}: bad tokenizer_options metadata {metadata.get(fmt.KEY_TOKENIZER_OPTIONS)!r}")

    try:
        fh = safe_open(str(path), framework="numpy")
        names = set(fh.keys())
        # Check the layer count against the file before building a table from it, so a
        # hostile config cannot make the loader allocate without bound.
        if config.num_layers * 6 > len(names):
            raise ModelFileError(f"{path}: config claims {config.num_layers} layers, "
                                 f"the file holds only {len(names)} tensors")
        expected = _expected(config, task, quantization, dense)
        tied_head = fmt.LM_HEAD + ".weight" + fmt.SMOOTH_SUFFIX
        if quantization == "int8":      # optional: 8-bit input layers (see format.SMOOTH_SUFFIX)
            for name, (shape, dtype) in list(expected.items()):
                if dtype == np.int8 and name.endswith(".weight") and name + fmt.SMOOTH_SUFFIX in names:
                    expected[name + fmt.SMOOTH_SUFFIX] = ((shape[1],), np.dtype(np.float32))
            if tied_head in names and fmt.LM_HEAD + ".weight" not in expected and task.type in _GENERATION_TASKS:
                expected[tied_head] = ((config.hidden_size,), np.dtype(np.float32))
        if quantization == "int4":      # each linear int8 (as expected so far) or int4: the stored dtype tells
            for name, (shape, dtype) in list(expected.items()):
                if (dtype == np.int8 and fmt.is_int4_candidate(name) and name in names
                        and fmt.int4_shapes(shape) is not None and fh.get_slice(name).get_dtype() == "U8"):
                    codes, groups = fmt.int4_shapes(shape)
                    del expected[name + fmt.SCALE_SUFFIX]
                    expected[name] = (codes, np.dtype(np.uint8))
                    expected[name + fmt.GROUP_SCALE_SUFFIX] = (groups, np.dtype(np.float16))
                    expected[name + fmt.GROUP_MIN_SUFFIX] = (groups, np.dtype(np.float16))
        missing = sorted(set(expected) - names)
        if missing:
            raise ModelFileError(f"{path}: tensors missing: {', '.join(missing[:5])}"
                                 + (" ..." if len(missing) > 5 else ""))
        extra = sorted(names - set(expected))
        if extra:
            raise ModelFileError(f"{path}: unexpected tensors: {', '.join(extra[:5])}")
        for name, (shape, dtype) in expected.items():
            view = fh.get_slice(name)
            if _DTYPES.get(view.get_dtype()) != dtype or tuple(view.get_shape()) != shape:
                stored = _DTYPE_NAMES.get(view.get_dtype(), view.get_dtype())
                raise ModelFileError(f"{path}: tensor {name} is {stored}{list(view.get_shape())}, "
                                     f"expected {dtype}{list(shape)}")
        del fh
        tensors = TensorStore(path, expected, _data_offsets(path))
        # Every tensor is read and checked once here, one at a time, so a bad file fails now;
        # the model then reads each again as it packs it (from the page cache) and frees the raw
        # copy, so peak memory holds one raw tensor, not the whole file next to its packed copy.
        for name in expected:
            array = tensors[name]
            if array.dtype in (np.float32, np.float16) and not np.isfinite(array).all():
                raise ModelFileError(f"{path}: tensor {name} holds NaN or infinite values")
            if name.endswith(fmt.SMOOTH_SUFFIX) and not (array > 0).all():
                raise ModelFileError(f"{path}: tensor {name} must be positive")
            if name == tied_head and fmt.LM_HEAD + ".weight" not in expected and not (array == 1).all():
                # The tied head's weight is also the token table: it cannot have been smoothed.
                raise ModelFileError(f"{path}: tensor {name} of a tied LM head must be all ones")
            del array
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path}: cannot read tensors ({exc})") from None
    return ModelFile(path, config, tensors, tokenizer, pooling, quantization, metadata, task, options,
                     target_tokenizer, source_id_map, unknown_pieces, st_settings, chat_template, dense)


_GENERATION_TASKS = ("text-generation", "text2text-generation")


def _target_tokenizer(path: Path, metadata: dict[str, str], config: EncoderConfig | DecoderConfig | Seq2SeqConfig
                      ) -> tuple[str | None, np.ndarray | None, tuple[int, dict[str, int], bool] | None]:
    """The target tokenizer, the source id map and the unknown-piece table of an encoder-decoder whose source
    tokenizer is not over the model's ids (Marian, M2M-100's own folders)."""
    has_target, has_map = fmt.KEY_TARGET_TOKENIZER in metadata, fmt.KEY_SOURCE_ID_MAP in metadata
    if not has_target and not has_map:
        if fmt.KEY_SOURCE_UNKNOWN_PIECES in metadata:
            raise ModelFileError(f"{path}: source_unknown_pieces without a source_id_map")
        return None, None, None
    if not isinstance(config, Seq2SeqConfig) or not (has_target and has_map):
        raise ModelFileError(f"{path}: target_tokenizer and source_id_map go together, in encoder-decoder files")
    ids = _json_key(metadata, fmt.KEY_SOURCE_ID_MAP)
    if (not isinstance(ids, list) or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < config.vocab_size for i in ids)):
        raise ModelFileError(f"{path}: source_id_map must be a list of ids below the vocabulary size "
                             f"{config.vocab_size}")
    if not metadata[fmt.KEY_TARGET_TOKENIZER]:
        raise ModelFileError(f"{path}: empty target_tokenizer")
    unknown = None
    if fmt.KEY_SOURCE_UNKNOWN_PIECES in metadata:
        table = _json_key(metadata, fmt.KEY_SOURCE_UNKNOWN_PIECES)

        def is_id(value: object, limit: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit

        if (not isinstance(table, dict) or not {"unk_id", "pieces"} <= set(table) <= {"unk_id", "pieces", "match"}
                or not is_id(table["unk_id"], len(ids)) or not isinstance(table["pieces"], dict)
                or table.get("match", "token") not in ("token", "text")
                or not all(isinstance(k, str) and is_id(v, config.vocab_size) for k, v in table["pieces"].items())):
            raise ModelFileError(f"{path}: bad source_unknown_pieces metadata")
        unknown = (table["unk_id"], table["pieces"], table.get("match") == "text")
    return metadata[fmt.KEY_TARGET_TOKENIZER], np.asarray(ids, dtype=np.int32), unknown
