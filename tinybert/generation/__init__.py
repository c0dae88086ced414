"""One generation engine for every model kind: settings, logits processors (written once), greedy search,
sampling and beam search, and one batched driver over a model's ``step(tokens, slots, positions)``.

Knows nothing of models, files or text beyond ``text.py``'s stop strings and incremental decoding; the
API classes (Generator, Translator) adapt their models to ``driver.Stepper``.
"""

from .beam import BeamSearch, beam_search, log_softmax, top_k
from .driver import Stepper, decode, run_all
from .params import MAX_BEAMS, GenerationParams
from .processors import Processors, apply_repetition_penalty, banned_ngram_tokens, pick, warp
from .sampling import SampleSearch
from .text import IncrementalDecoder, StopMatcher

__all__ = ["MAX_BEAMS", "BeamSearch", "GenerationParams", "IncrementalDecoder", "Processors", "SampleSearch",
           "StopMatcher", "Stepper", "apply_repetition_penalty", "banned_ngram_tokens", "beam_search", "decode",
           "log_softmax", "pick", "run_all", "top_k", "warp"]
