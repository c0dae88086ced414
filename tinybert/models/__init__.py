"""Model stacks built from layers: the encoder (``encoder.py``), the decoder-only stack (``decoder.py``), the
encoder-decoder (``seq2seq.py``, two stacks of the same block) and the task heads (``heads.py``). Arrays in,
arrays out: no files, text or generation settings here (those are ``tinybert.api`` and ``tinybert.generation``)."""

from .decoder import DecoderModel
from .encoder import EncoderModel
from .seq2seq import Seq2SeqModel

__all__ = ["DecoderModel", "EncoderModel", "Seq2SeqModel"]
