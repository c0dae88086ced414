"""One way to open a model file for every public class (Encoder and the task classes, Generator,
Translator): the same validation, the same kind check and message, the same tokenizer set-up and the
same thread check, in the same order, so the classes cannot drift apart on what a bad file or a bad
argument gives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import DecoderConfig, EncoderConfig, Seq2SeqConfig
from ..errors import ModelFileError, ModelKindError
from ..loader import FileMetadata, ModelFile, TensorStore, load
from ..tokenizer import TextTokenizer, load_tokenizer
from .resolve import resolve
from .scheduler import check_process, check_threads
from .warmup import notice_compile

# kind → (its config, how a message names it, the class that opens it)
_KINDS: dict[str, tuple[type, str, str]] = {
    "encoder": (EncoderConfig, "an encoder (BERT family)", "Encoder or a task class"),
    "decoder": (DecoderConfig, "a decoder (GPT-2, Llama family, Qwen3, Phi-3, Gemma 3)", "Generator"),
    "encoder-decoder": (Seq2SeqConfig, "an encoder-decoder (T5, BART, Marian)", "Translator"),
}


@dataclass(frozen=True)
class Opened:
    """A validated model file of the kind asked for, its tokenizer and the thread count to use."""

    path: Path
    file: ModelFile           # everything the file holds, for what only one kind needs (pooling, task, ...)
    tokenizer: TextTokenizer      # truncates to the model's length, never pads
    threads: int

    @property
    def config(self) -> EncoderConfig | DecoderConfig | Seq2SeqConfig:
        return self.file.config

    @property
    def tensors(self) -> TensorStore:
        return self.file.tensors

    @property
    def metadata(self) -> FileMetadata:
        return self.file.metadata

    @property
    def quantization(self) -> str:
        return self.file.quantization


def open_model(path: str | Path, kind: str, threads: int | None, user: str, dtype: str = "int8",
               revision: str | None = None, local_files_only: bool | None = None) -> Opened:
    """Open ``path`` for the class named ``user``, which needs a model of ``kind`` ("encoder",
    "decoder" or "encoder-decoder"). ``path`` is a tinybert file, a Hugging Face folder or a Hub id
    (resolve.py: folders and ids are converted to ``dtype`` once, into the tinybert cache).

    Raises ModelFileError for a file that does not validate or a name that resolves to nothing,
    ModelKindError for another kind, InputError for a bad ``threads`` (see scheduler.check_threads). The
    tokenizer truncates to what the model can take: an encoder's ``max_length``, the other kinds'
    ``max_positions``.
    """
    config_type, needed, _ = _KINDS[kind]
    check_process()
    path, rebuild = resolve(path, dtype, revision, local_files_only)
    try:
        model_file = load(path)
    except ModelFileError:
        if rebuild is None:
            raise
        path = rebuild()            # a damaged or stale cache entry: convert it again
        model_file = load(path)
    config = model_file.config
    embedder = isinstance(config, DecoderConfig) and model_file.task.type == "feature-extraction"
    if embedder != (kind == "encoder") and isinstance(config, DecoderConfig):
        # a decoder embedder (no LM head) opens with Encoder, never with Generator
        raise ModelKindError(f"{path} holds a decoder {'embedder' if embedder else 'language model'}; {user} "
                             f"needs {needed} model: open it with {'Encoder' if embedder else 'Generator'}")
    if not isinstance(config, config_type) and not embedder:
        _, held, opener = _KINDS[config.kind]
        raise ModelKindError(f"{path} holds {held} model; {user} needs {needed} model: open it with {opener}")
    notice_compile(kind)
    length = config.max_length if isinstance(config, EncoderConfig) else config.max_positions
    tokenizer = load_tokenizer(model_file.tokenizer_json, length)
    # From here the file's metadata is kept compressed: its tokenizer JSON as a str would outweigh a small model.
    model_file = dataclasses.replace(model_file, metadata=FileMetadata(model_file.metadata))
    return Opened(Path(path), model_file, tokenizer, check_threads(threads))


class OpenedModel:
    """What Generator and Translator expose of their file, taken from ``open_model``'s result in one place."""

    path: Path
    quantization: str
    metadata: FileMetadata
    tokenizer: TextTokenizer
    threads: int

    def _take(self, opened: Opened) -> None:
        self.path, self.config, self.quantization = opened.path, opened.config, opened.quantization
        self.metadata, self.tokenizer, self.threads = opened.metadata, opened.tokenizer, opened.threads
