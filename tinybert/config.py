"""The canonical model config: the few numbers and switches that tell one block implementation
which family it is running. The converter fills it from a Hugging Face config; the loader checks it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import ModelFileError
from .format import (
    ACTIVATIONS,
    DECODER_POSITIONS,
    DISENTANGLED_TERMS,
    ENCODER_POSITIONS,
    HEAD_ACTIVATIONS,
    LANGUAGE_POSITIONS,
    MAX_LANGUAGES,
    NORMS,
    POSITION_SCHEMES,
    POSITIONS,
    PROBLEM_TYPES,
    ROPE_OPTIONAL,
    ROPE_PARAMETERS,
    SEQ2SEQ_FAMILIES,
    SEQ2SEQ_POSITIONS,
    TASK_POOLINGS,
    TASKS,
)

# Counts, sizes, ids and positions are int32 in the runtime (token ids, positions, offsets): every integer a
# config states lies in [0, INT_LIMIT).
INT_LIMIT = 2 ** 31
# Rotary tables, T5's bucket tables, sinusoidal tables and the KV cache get max_positions rows that no tensor of
# the file backs: this bound keeps a hostile count from making the loader allocate without limit. It is above the
# context of any supported checkpoint (Qwen2.5-1M: 1,010,000).
MAX_POSITIONS = 1 << 20
MAX_LABELS = 100_000                    # classes of a classification head: more is implausible, and costly
_FLOAT32_MAX = 3.4028234663852886e38    # the kernels compute in float32: a larger number is an infinity there


def _short(value: object) -> str:
    """A value for a message: a hostile file's value can be megabytes long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < INT_LIMIT


def _is_number(value: object) -> bool:
    # NaN fails both comparisons; a huge int compares exactly, without converting to float.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -_FLOAT32_MAX <= value <= _FLOAT32_MAX


_FIELD_TYPES = {
    "int": (_is_int, "an integer in [0, 2**31)"),
    "float": (_is_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "a JSON object"),
    "tuple[int, ...]": (lambda v: isinstance(v, tuple) and all(_is_int(x) for x in v),
                        "a list of integers in [0, 2**31)"),
    "tuple[str, ...]": (lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def _check_fields(obj: object, what: str = "config") -> None:
    """Every field of a config dataclass has its annotated type, before anything computes with it: integers (never
    booleans) in [0, 2**31), numbers finite in float32, true/false, strings; ``X | None`` fields may be null. The
    range checks of each ``validate`` come after, on values of the right type."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind, _, optional = f.type.partition(" | ")     # annotations are strings (from __future__ import annotations)
        if value is None and optional == "None":
            continue
        check, words = _FIELD_TYPES[kind]
        if not check(value):
            raise ModelFileError(f"{what} {f.name} must be {words}{' or null' if optional else ''}, "
                                 f"got {_short(value)}")


def _check_rope(rope: object) -> None:
    """The canonical rope dict of kernels/rope.py: a known type with exactly its parameters (format.ROPE_PARAMETERS,
    plus an optional attention_scaling and the type's format.ROPE_OPTIONAL ones), each a positive number
    (original_max_position_embeddings a positive integer, longrope's factors and long_factors lists of them), and
    for llama3 a low frequency factor below the high one: the tables divide by each of them and by their
    difference."""
    if not isinstance(rope, dict):
        raise ModelFileError("config rope must be a JSON object for rotary positions")
    kind = rope.get("type")
    if not isinstance(kind, str) or kind not in ROPE_PARAMETERS:
        raise ModelFileError(f"config rope type {_short(kind)} is not one of {', '.join(ROPE_PARAMETERS)}")
    names = ROPE_PARAMETERS[kind]
    optional = ROPE_OPTIONAL.get(kind, ())
    missing = [name for name in names if name not in rope]
    unknown = sorted(set(rope) - {"type", "attention_scaling", *names, *optional})
    if missing or unknown:
        raise ModelFileError(f"config rope of type {kind} " + (f"lacks {', '.join(missing)}" if missing else
                                                               f"has unknown keys {_short(unknown)}"))
    for name in (*names, "attention_scaling", *(name for name in optional if name in rope)):
        value = rope.get(name, 1.0)
        if name in ("factors", "long_factors"):    # longrope: one factor per frequency (the block checks how many)
            if not (isinstance(value, list) and value and all(_is_number(v) and v > 0 for v in value)):
                raise ModelFileError(f"config rope {name} must be a list of positive numbers, got {_short(value)}")
            continue
        integer = name == "original_max_position_embeddings"
        if not (_is_int(value) if integer else _is_number(value)) or not value > 0:
            raise ModelFileError(f"config rope {name} must be a positive {'integer' if integer else 'number'}, "
                                 f"got {_short(value)}")
    if kind == "llama3" and not rope["low_freq_factor"] < rope["high_freq_factor"]:
        raise ModelFileError("config rope low_freq_factor must be below high_freq_factor")


def _check_keys(cls: type, data: object, optional: tuple[str, ...] = ("kind",)) -> None:
    """A config read from a file has exactly the dataclass's fields (``optional`` ones may be left out)."""
    if not isinstance(data, dict):
        raise ModelFileError("config metadata is not a JSON object")
    names = {f.name for f in fields(cls)}
    missing = sorted(n for n in names if n not in data and n not in optional)
    if missing:
        raise ModelFileError(f"config is missing {', '.join(missing)}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModelFileError(f"config has unknown keys {', '.join(unknown)}")


# Keys files of earlier converters wrote, by kind, and their names in the one vocabulary (BlockConfig's).
_OLD_KEYS = {"encoder": {"layer_norm_eps": "norm_eps"}}


def _from_file(cls: type, data: object, optional: tuple[str, ...] = ("kind",), tuples: tuple[str, ...] = ()):
    """A config dataclass from a file's JSON: exactly its fields (``optional`` ones may be missing; keys of
    earlier converters are read under their new names), the ``tuples`` fields given as JSON lists, then
    ``validate()``; any inconsistency is a ModelFileError."""
    if isinstance(data, dict):
        data = dict(data)
        for old, new in _OLD_KEYS.get(data.get("kind", cls.kind), {}).items():
            if old in data:
                if new in data:
                    raise ModelFileError(f"config has both {old} and {new}")
                data[new] = data.pop(old)
    _check_keys(cls, data, optional)
    data = dict(data)
    for name in tuples:
        value = data.get(name, [])
        if not isinstance(value, list):
            raise ModelFileError(f"config {name} must be a list")
        data[name] = tuple(value)
    try:
        cfg = cls(**data)
    except TypeError as exc:
        raise ModelFileError(f"bad config: {exc}") from None
    cfg.validate()
    return cfg


def _positive_int(name: str, value: int) -> None:
    if value <= 0:
        raise ModelFileError(f"config {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BlockConfig:
    """The block-level vocabulary: what one TransformerBlock (tinybert/layers/block.py) needs to run any family.
    Every model config maps its fields onto it (``block``, or ``encoder_block`` / ``decoder_block``), and its
    ``validate`` is the one check of them.

    ``norm`` ("layernorm" | "rmsnorm") with ``norm_eps``; ``pre_norm``: x + f(norm(x)), else norm(x + f(x)).
    ``activation``, ``gated_mlp`` (down(act(gate) · up)). ``positions`` says where positions enter:
    "learned" / "sinusoidal" tables in the embeddings, "rope" on q and k (``rope``: the canonical dict of
    kernels/rope.py), "relative" as T5's bias on the scores (``relative_buckets``, ``relative_max_distance``),
    "disentangled" as DeBERTa's content-to-position / position-to-content terms (``disentangled``: which of
    format.DISENTANGLED_TERMS; ``relative_buckets``: position_buckets, 0 for none; ``relative_max_distance``:
    max_relative_positions). ``attn_scale``: scores times 1/√head_dim (False for T5), 1/√(head_dim · (1 + number
    of disentangled terms)) for DeBERTa. ``causal``: self-attention over the slot cache
    A T5-style relative bias may also come on top of learned or rotary positions (MPNet): ``relative_buckets`` > 0
    without disentangled terms says there is one (``has_relative_bias``).
    (decoders) rather than bidirectional over packed sequences; ``cross_attention`` over the slot's source.
    Grouped-query attention is ``num_kv_heads`` < ``num_heads``.

    ``qk_norm``: each head's query and key go through a norm of the block's kind (weights [head_dim]) after the
    projection, before rotary positions (Qwen3, Gemma 3). ``post_norms``: the sublayers' outputs are normed
    before the residual add, x + post_norm(f(norm(x))) (Gemma 3). ``score_scale`` replaces 1/√head_dim
    (Gemma 3's query_pre_attn_scalar^-1/2). ``layer_windows``: per layer, the sliding attention window (a query
    sees the keys less than that many positions away, back in causal attention, either way in bidirectional
    attention: ModernBERT's local layers; 0: all of them), empty when no layer has one; windowed layers use the
    rotary ``local_rope`` when it is set (Gemma 3's and ModernBERT's local base frequency).
    """

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str
    norm_eps: float
    pre_norm: bool
    activation: str
    gated_mlp: bool
    positions: str
    max_positions: int
    rope: dict | None = None
    relative_buckets: int = 0
    relative_max_distance: int = 0
    attn_scale: bool = True
    causal: bool = False
    cross_attention: bool = False
    disentangled: tuple[str, ...] = ()
    qk_norm: bool = False
    post_norms: bool = False
    score_scale: float | None = None
    layer_windows: tuple[int, ...] = ()
    local_rope: dict | None = None

    @property
    def windowed(self) -> bool:
        return any(self.layer_windows)

    @property
    def has_relative_bias(self) -> bool:
        """T5's bucketed bias on the scores: as the position scheme (T5) or on top of learned positions (MPNet)."""
        return self.positions == "relative" or (self.relative_buckets > 0 and not self.disentangled)

    def validate(self) -> None:
        _check_fields(self)
        for name in ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "max_positions"):
            _positive_int(name, getattr(self, name))
        if self.max_positions > MAX_POSITIONS:
            raise ModelFileError(f"config max_positions {self.max_positions} is above tinybert's limit {MAX_POSITIONS}")
        if self.num_heads % self.num_kv_heads:
            raise ModelFileError("config num_heads is not a multiple of num_kv_heads")
        if self.norm not in NORMS:
            raise ModelFileError(f"config norm {self.norm!r} is not one of {NORMS}")
        if not self.norm_eps > 0:
            raise ModelFileError("config norm_eps must be a positive number")
        if self.activation not in ACTIVATIONS:
            raise ModelFileError(f"config activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.positions not in POSITIONS:
            raise ModelFileError(f"config positions {self.positions!r} is not one of {POSITIONS}")
        if self.positions == "rope":
            if self.head_dim % 2:
                raise ModelFileError("rotary positions need an even head_dim")
            for rope in (self.rope, *((self.local_rope,) if self.local_rope is not None else ())):
                _check_rope(rope)
                if rope["type"] == "longrope":
                    for name in ("factors", "long_factors"):
                        if name in rope and len(rope[name]) != self.head_dim // 2:
                            raise ModelFileError(f"config rope {name} must be head_dim / 2 = {self.head_dim // 2} "
                                                 "numbers")
                    # the factors are transformers' short ones, which it uses only within the original context:
                    # without the long ones (files of earlier converters) the context ends there
                    if "long_factors" not in rope and self.max_positions > rope["original_max_position_embeddings"]:
                        raise ModelFileError("config max_positions is above the longrope "
                                             "original_max_position_embeddings and the rope has no long_factors")
        elif self.local_rope is not None:
            raise ModelFileError("config local_rope needs rotary positions")
        if self.post_norms and not self.pre_norm:
            raise ModelFileError("config post_norms need pre-norm blocks")
        if self.score_scale is not None and not self.score_scale > 0:
            raise ModelFileError("config score_scale must be a positive number")
        if self.windowed and ((self.causal and self.has_relative_bias) or self.disentangled):
            raise ModelFileError("config layer_windows go with bidirectional attention (a relative bias allowed) or "
                                 "causal attention without a relative bias, never with disentangled attention")
        # T5's bucketing (layers/attention.py) halves the buckets per direction and takes a logarithm with base
        # max_distance / max_exact, where max_exact is half the buckets of a direction: fewer than 4 buckets divide
        # by zero, and a distance not above max_exact makes the logarithm zero or negative (buckets out of range).
        if self.has_relative_bias and (self.relative_buckets < 4
                                       or self.relative_max_distance <= self.relative_buckets // 2):
            raise ModelFileError(f"config relative_buckets {self.relative_buckets} / relative_max_distance "
                                 f"{self.relative_max_distance} are invalid: T5's bucketing needs at least 4 buckets "
                                 "and a distance above half of them")
        if self.positions == "sinusoidal" and self.hidden_size % 2:
            raise ModelFileError("sinusoidal positions need an even hidden_size")
        if (self.positions == "disentangled") != bool(self.disentangled):
            raise ModelFileError("config disentangled terms go with disentangled positions, and only with them")
        if self.positions == "disentangled":
            _check_disentangled(self.disentangled, self.relative_buckets, self.relative_max_distance)


def _check_disentangled(terms: tuple[str, ...], buckets: int, max_distance: int) -> None:
    """DeBERTa's relative attention: known terms, each once; a distance and bucket count that keep the relative
    embedding table bounded, and a log-bucket base (max_distance − 1) / (buckets / 2) above 1 (at 1 the bucketing
    divides by log 1 = 0; below it the buckets run backwards)."""
    if not terms or len(set(terms)) != len(terms) or not set(terms) <= set(DISENTANGLED_TERMS):
        raise ModelFileError(f"config disentangled {_short(terms)} must be distinct terms of {DISENTANGLED_TERMS}")
    if not 1 <= max_distance <= MAX_POSITIONS or buckets > MAX_POSITIONS:
        raise ModelFileError(f"config relative_max_distance {max_distance} / relative_buckets {buckets} must lie in "
                             f"[1, {MAX_POSITIONS}]")
    if buckets and (buckets < 2 or max_distance - 1 <= buckets // 2):
        raise ModelFileError(f"config relative_buckets {buckets} needs relative_max_distance above buckets / 2 + 1, "
                             f"got {max_distance}")


@dataclass(frozen=True)
class EncoderConfig:
    """A BERT-family encoder: post-LayerNorm blocks unless ``pre_norm``.

    ``position_scheme`` is "absolute" (position i for token i), "padding_offset" (RoBERTa:
    non-pad tokens count up from ``pad_token_id + 1``, pads sit at ``pad_token_id``) or "none" (no position
    table: DeBERTa-v3, whose positions are relative, in attention). ``disentangled``: DeBERTa's attention
    terms (BlockConfig), over ``relative_buckets`` log buckets (0: none) up to ``relative_max_distance``, with
    the relative embeddings LayerNorm'ed when ``rel_norm``.
    ``max_length`` is the longest token sequence the model accepts (positions table minus the
    offset, capped by sentence-transformers' ``max_seq_length`` where the checkpoint sets it).

    Optional (files of earlier converters lack them; the defaults are BERT's): ``positions`` "learned" (a table
    in the embeddings) or "rope" (``rope`` on q and k, positions restarting per sequence);
    ``relative_buckets`` / ``relative_max_distance`` > 0: a T5-style relative bias shared by the layers
    (MPNet); ``pre_norm`` blocks with a ``final_norm`` (ModernBERT), whose first layer may have no attention
    norm (``first_attn_norm`` False); ``gated_mlp``; local attention (``window``, ``window_layers``,
    ``window_rope``) as in BlockConfig.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    embedding_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    activation: str
    norm_eps: float
    position_scheme: str
    pad_token_id: int
    max_length: int
    kind: str = "encoder"
    disentangled: tuple[str, ...] = ()
    relative_buckets: int = 0
    relative_max_distance: int = 0
    rel_norm: bool = False
    positions: str = "learned"
    rope: dict | None = None
    pre_norm: bool = False
    first_attn_norm: bool = True
    gated_mlp: bool = False
    window: int = 0
    window_layers: tuple[int, ...] = ()
    window_rope: dict | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1 if self.position_scheme == "padding_offset" else 0

    @property
    def block(self) -> BlockConfig:
        return BlockConfig(hidden_size=self.hidden_size, num_heads=self.num_heads, num_kv_heads=self.num_heads,
                           head_dim=self.head_dim, intermediate_size=self.intermediate_size, norm="layernorm",
                           norm_eps=self.norm_eps, pre_norm=self.pre_norm, activation=self.activation,
                           gated_mlp=self.gated_mlp, positions="disentangled" if self.disentangled else self.positions,
                           max_positions=self.max_positions, rope=self.rope, relative_buckets=self.relative_buckets,
                           relative_max_distance=self.relative_max_distance, disentangled=self.disentangled,
                           # local attention: keys within ±window of the query, i.e. |i − j| < window + 1
                           layer_windows=tuple(self.window + 1 if i in self.window_layers else 0
                                               for i in range(self.num_layers)) if self.window else (),
                           local_rope=self.window_rope)

    def to_dict(self) -> dict:
        """The file's config: the optional fields only where they differ from their defaults, so that a
        BERT-family file is the same as before them (and readable by a runtime that predates them)."""
        data = asdict(self)
        data["disentangled"] = list(self.disentangled)
        data["window_layers"] = list(self.window_layers)
        defaults = {f.name: f.default for f in fields(self)}
        for name in _ENCODER_OPTIONAL[1:]:
            if getattr(self, name) == defaults[name]:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        """Build and check a config read from a file; any inconsistency is a ModelFileError."""
        return _from_file(cls, data, optional=_ENCODER_OPTIONAL, tuples=("disentangled", "window_layers"))

    def validate(self) -> None:
        _check_fields(self)
        for name in ("vocab_size", "hidden_size", "embedding_size", "num_layers", "num_heads",
                     "intermediate_size", "max_positions", "max_length"):
            if getattr(self, name) == 0:
                raise ModelFileError(f"config {name} must be positive")
        if self.kind != "encoder":
            raise ModelFileError(f"config kind {self.kind!r} is not an encoder")
        if self.hidden_size % self.num_heads:
            raise ModelFileError("config hidden_size is not a multiple of num_heads")
        if self.position_scheme not in POSITION_SCHEMES:
            raise ModelFileError(f"config position_scheme {self.position_scheme!r} is unknown")
        if self.positions not in ENCODER_POSITIONS:
            raise ModelFileError(f"config positions {self.positions!r} is not one of {ENCODER_POSITIONS}")
        if bool(self.window) != bool(self.window_layers):
            raise ModelFileError("config window and window_layers must be given together")
        if list(self.window_layers) != sorted(set(self.window_layers)) or any(
                i >= self.num_layers for i in self.window_layers):
            raise ModelFileError("config window_layers must be distinct layer indices in rising order")
        if self.window >= INT_LIMIT - 1:
            raise ModelFileError("config window is too large")
        if not self.first_attn_norm and not self.pre_norm:
            raise ModelFileError("config first_attn_norm False needs pre_norm blocks")
        self.block.validate()
        if self.rel_norm and not self.disentangled:
            raise ModelFileError("config rel_norm needs disentangled attention")
        if self.pad_token_id >= self.vocab_size:
            raise ModelFileError("config pad_token_id is outside the vocabulary")
        if self.max_length + self.position_offset > self.max_positions:
            raise ModelFileError("config max_length reaches past the position table")


# Encoder fields files of earlier converters do not have (their defaults are BERT's).
_ENCODER_OPTIONAL = ("kind", "disentangled", "relative_buckets", "relative_max_distance", "rel_norm", "positions",
                     "rope", "pre_norm", "first_attn_norm", "gated_mlp", "window", "window_layers", "window_rope")


@dataclass(frozen=True)
class TaskConfig:
    """The head a file carries, as data.

    ``type`` is one of ``TASKS``. ``labels`` are the class names by index (sequence and token
    classification). ``problem_type`` is transformers' (None lets the number of labels decide, as
    its pipeline does). ``pooler_activation`` is set when a first-token dense layer precedes the
    classifier (BERT tanh pooler, RoBERTa/ELECTRA classification head, DistilBERT pre_classifier).
    Masked-LM heads: transform width ``mlm_size``, its ``mlm_activation``, its LayerNorm
    ``mlm_norm_eps``, and whether the decoder is tied to the token embeddings (``mlm_tied``).
    ModernBERT's prediction head is the pooler followed by a LayerNorm (``pooler_norm_eps``), read by sequence
    classification from the first token or the mean of the tokens (``pooling`` "first" | "mean"); a token
    classification or question-answering head with a pooler runs it on every token.
    """

    type: str = "feature-extraction"
    labels: tuple[str, ...] = ()
    problem_type: str | None = None
    pooler_activation: str | None = None
    mlm_size: int = 0
    mlm_activation: str | None = None
    mlm_norm_eps: float = 1e-12
    mlm_tied: bool = True
    pooling: str = "first"
    pooler_norm_eps: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TaskConfig:
        """Build and check a task read from a file; any inconsistency is a ModelFileError."""
        if not isinstance(data, dict):
            raise ModelFileError("task metadata is not a JSON object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ModelFileError(f"task has unknown keys {', '.join(unknown)}")
        data = dict(data)
        if "labels" in data:
            if not isinstance(data["labels"], list) or not all(isinstance(x, str) for x in data["labels"]):
                raise ModelFileError("task labels must be a list of strings")
            data["labels"] = tuple(data["labels"])
        task = cls(**data)
        task.validate()
        return task

    def validate(self) -> None:
        _check_fields(self, "task")
        if self.type not in TASKS:
            raise ModelFileError(f"task type {self.type!r} is not one of {TASKS}")
        if self.type in ("sequence-classification", "token-classification") and not self.labels:
            raise ModelFileError(f"a {self.type} task needs labels")
        if len(self.labels) > MAX_LABELS:
            raise ModelFileError("task has an implausible number of labels")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ModelFileError(f"task problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        for name in ("pooler_activation", "mlm_activation"):
            value = getattr(self, name)
            if value is not None and value not in HEAD_ACTIVATIONS:
                raise ModelFileError(f"task {name} {value!r} is not one of {HEAD_ACTIVATIONS}")
        if self.pooling not in TASK_POOLINGS:
            raise ModelFileError(f"task pooling {self.pooling!r} is not one of {TASK_POOLINGS}")
        if self.pooler_norm_eps is not None and (self.pooler_activation is None or not self.pooler_norm_eps > 0):
            raise ModelFileError("task pooler_norm_eps must be a positive number, and needs the pooler")
        if self.type == "pretraining" and self.pooler_activation is None:
            raise ModelFileError("a pretraining task needs the pooler")
        if self.type in ("masked-lm", "pretraining"):
            if self.mlm_size <= 0:
                raise ModelFileError("task mlm_size must be a positive integer")
            if self.mlm_activation is None:
                raise ModelFileError("a masked-lm task needs mlm_activation")
            if not self.mlm_norm_eps > 0:
                raise ModelFileError("task mlm_norm_eps must be a positive number")


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only Transformer (GPT-2, Llama family), pre-norm blocks:
    ``x = x + attn(norm(x)); x = x + mlp(norm(x))``, then a final norm and the LM head.

    Family differences are data: ``norm`` ("layernorm" with bias | "rmsnorm"), ``activation`` and
    ``gated_mlp`` (SwiGLU: ``down(act(gate) · up)``), ``positions`` ("learned" table | "rope" with
    the canonical ``rope`` dict of tinybert/kernels/rope.py), grouped-query attention
    (``num_kv_heads`` ≤ ``num_heads``), which projections carry biases, and whether the LM head is
    the token embedding table (``tie_word_embeddings``). ``max_positions`` is the context length.
    ``scale_embedding``: token rows times √hidden_size (Gemma). ``qk_norm``, ``post_norms``, ``score_scale``,
    ``layer_windows`` (one entry per layer, or none) and ``local_rope`` are BlockConfig's (Qwen3, Gemma 3);
    files of earlier converters lack them and mean their defaults. ``causal`` False: every token attends to the
    whole sequence, windowed layers to the keys less than their window away on either side (EmbeddingGemma,
    Gemma 3 with use_bidirectional_attention); such a decoder only embeds (no LM head, no KV cache). The file
    states it only when False, so a causal decoder's file is the same as before the field.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm: str
    norm_eps: float
    activation: str
    gated_mlp: bool
    positions: str
    rope: dict | None
    attn_bias: bool
    attn_out_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    scale_embedding: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    score_scale: float | None = None
    layer_windows: tuple[int, ...] = ()
    local_rope: dict | None = None
    causal: bool = True
    kind: str = "decoder"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["layer_windows"] = list(self.layer_windows)
        if self.causal:     # the default: left out, so that causal files stay readable by earlier runtimes
            del data["causal"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        """Build and check a config read from a file; any inconsistency is a ModelFileError."""
        return _from_file(cls, data, optional=("kind", *_DECODER_ADDITIONS),
                          tuples=("eos_token_ids", "layer_windows"))

    @property
    def block(self) -> BlockConfig:
        return BlockConfig(hidden_size=self.hidden_size, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                           head_dim=self.head_dim, intermediate_size=self.intermediate_size, norm=self.norm,
                           norm_eps=self.norm_eps, pre_norm=True, activation=self.activation, gated_mlp=self.gated_mlp,
                           positions=self.positions, max_positions=self.max_positions, rope=self.rope,
                           causal=self.causal, qk_norm=self.qk_norm, post_norms=self.post_norms,
                           score_scale=self.score_scale, layer_windows=self.layer_windows, local_rope=self.local_rope)

    @property
    def decoder_block(self) -> BlockConfig:
        """The block a KV cache is shaped for (as Seq2SeqConfig.decoder_block)."""
        return self.block

    # What Encoder reads of an encoder's config, for a decoder embedder: positions from 0, no token types.
    position_offset = 0
    type_vocab_size = 0

    @property
    def num_decoder_layers(self) -> int:
        return self.num_layers

    def validate(self) -> None:
        _check_fields(self)
        for name in ("vocab_size", "num_layers"):
            _positive_int(name, getattr(self, name))
        if self.kind != "decoder":
            raise ModelFileError(f"config kind {self.kind!r} is not a decoder")
        if self.positions not in DECODER_POSITIONS:
            raise ModelFileError(f"config positions {self.positions!r} is not one of {DECODER_POSITIONS}")
        if self.layer_windows and len(self.layer_windows) != self.num_layers:
            raise ModelFileError("config layer_windows must have one entry per layer")
        self.block.validate()
        for name, value in (("bos_token_id", self.bos_token_id), ("pad_token_id", self.pad_token_id),
                            *(("eos_token_ids", e) for e in self.eos_token_ids)):
            if value is not None and value >= self.vocab_size:
                raise ModelFileError(f"config {name} {value!r} is outside the vocabulary")


# DecoderConfig fields later converters added: a file without them means their defaults (as before them).
_DECODER_ADDITIONS = ("scale_embedding", "qk_norm", "post_norms", "score_scale", "layer_windows", "local_rope",
                      "causal")


@dataclass(frozen=True)
class Seq2SeqConfig:
    """An encoder-decoder Transformer (T5 v1.0 / v1.1, BART, Marian); see tinybert/models/seq2seq.py.

    ``head_dim`` is T5's d_kv (num_heads · head_dim may differ from hidden_size). ``max_positions`` is the
    longest source and the longest decoder sequence the model takes (the position table for learned and
    sinusoidal positions; T5's ``n_positions`` for relative ones, which have no table). ``lm_head_scale``
    multiplies the decoder output before the LM head (T5 v1.0: d_model**-0.5). Generation constraints the
    checkpoint's generation config sets and every search must honour: ``forced_bos_token_id`` (first token
    after the decoder start), ``forced_eos_token_id`` (the token at the length limit) and
    ``bad_token_ids`` (never generated, e.g. Marian's pad).

    ``position_padding_idx`` (sinusoidal positions only): None is Marian's table, position p its row p; a
    number is fairseq's table (M2M-100 / NLLB: tensor2tensor frequencies), position p its row
    padding_idx + 1 + p and a pad token's position the all-zero row padding_idx (the encoder numbers only
    the non-pad tokens). Multilingual models (M2M-100, NLLB, mBART-50) name their languages by tokens:
    ``language_codes`` maps each code a caller passes ("fra_Latn", "fr", "fr_XX") to its token id; a source
    is ``[code] text </s>`` (``language_position`` "prefix") or ``text </s> [code]`` ("suffix", NLLB's
    legacy behaviour), with ``source_eos_token_id`` as </s>; the target code is forced as the first token.
    """

    family: str
    vocab_size: int
    decoder_vocab_size: int
    hidden_size: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    norm: str                      # "rmsnorm" | "layernorm"
    norm_eps: float
    pre_norm: bool
    activation: str                # one of ACTIVATIONS
    gated_mlp: bool
    positions: str                 # one of SEQ2SEQ_POSITIONS
    max_positions: int
    relative_buckets: int
    relative_max_distance: int
    attn_scale: bool               # scores · 1/√head_dim (False for T5)
    scale_embedding: bool          # token embeddings · √hidden_size
    layernorm_embedding: bool
    final_logits_bias: bool
    tie_word_embeddings: bool
    lm_head_scale: float
    share_embeddings: bool         # the decoder reads embed.tokens
    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    bad_token_ids: tuple[int, ...] = ()
    position_padding_idx: int | None = None
    language_codes: dict = field(default_factory=dict)
    language_position: str = "prefix"
    source_eos_token_id: int | None = None
    kind: str = "encoder-decoder"

    @property
    def num_layers(self) -> int:
        return self.num_encoder_layers + self.num_decoder_layers

    @property
    def multilingual(self) -> bool:
        """The model takes its source and target languages as tokens (``language_codes``)."""
        return bool(self.language_codes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["bad_token_ids"] = list(self.bad_token_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Seq2SeqConfig:
        """Build and check a config read from a file; any inconsistency is a ModelFileError."""
        return _from_file(cls, data, optional=("kind", "forced_bos_token_id", "forced_eos_token_id", "bad_token_ids",
                                               "position_padding_idx", "language_codes", "language_position",
                                               "source_eos_token_id"),
                          tuples=("eos_token_ids", "bad_token_ids"))

    def _block(self, decoder: bool) -> BlockConfig:
        return BlockConfig(hidden_size=self.hidden_size, num_heads=self.num_heads, num_kv_heads=self.num_heads,
                           head_dim=self.head_dim, intermediate_size=self.intermediate_size, norm=self.norm,
                           norm_eps=self.norm_eps, pre_norm=self.pre_norm, activation=self.activation,
                           gated_mlp=self.gated_mlp, positions=self.positions, max_positions=self.max_positions,
                           relative_buckets=self.relative_buckets, relative_max_distance=self.relative_max_distance,
                           attn_scale=self.attn_scale, causal=decoder, cross_attention=decoder)

    @property
    def encoder_block(self) -> BlockConfig:
        return self._block(decoder=False)

    @property
    def decoder_block(self) -> BlockConfig:
        return self._block(decoder=True)

    def validate(self) -> None:
        _check_fields(self)
        if self.kind != "encoder-decoder":
            raise ModelFileError(f"config kind {self.kind!r} is not an encoder-decoder")
        if self.family not in SEQ2SEQ_FAMILIES:
            raise ModelFileError(f"config family {self.family!r} is not one of {SEQ2SEQ_FAMILIES}")
        for name in ("vocab_size", "decoder_vocab_size", "num_encoder_layers", "num_decoder_layers"):
            _positive_int(name, getattr(self, name))
        if self.positions not in SEQ2SEQ_POSITIONS:
            raise ModelFileError(f"config positions {self.positions!r} is not one of {SEQ2SEQ_POSITIONS}")
        self.decoder_block.validate()
        if self.share_embeddings and self.vocab_size != self.decoder_vocab_size:
            raise ModelFileError("shared embeddings need one vocabulary size")
        if not self.lm_head_scale > 0:
            raise ModelFileError("config lm_head_scale must be a positive number")
        ids = [("decoder_start_token_id", self.decoder_start_token_id), ("pad_token_id", self.pad_token_id),
               ("forced_bos_token_id", self.forced_bos_token_id), ("forced_eos_token_id", self.forced_eos_token_id),
               *(("eos_token_ids", e) for e in self.eos_token_ids),
               *(("bad_token_ids", e) for e in self.bad_token_ids)]
        for name, value in ids:
            if value is not None and value >= self.decoder_vocab_size:
                raise ModelFileError(f"config {name} {value!r} is outside the vocabulary")
        if self.position_padding_idx is not None:
            if self.positions != "sinusoidal":
                raise ModelFileError("config position_padding_idx is for sinusoidal positions")
            if self.pad_token_id is None:
                raise ModelFileError("config position_padding_idx needs the pad_token_id whose positions it pads")
            if self.hidden_size < 4:
                raise ModelFileError("fairseq sinusoidal positions need a hidden size of at least 4")
            if self.position_padding_idx + 1 + self.max_positions > MAX_POSITIONS:
                raise ModelFileError(f"config position_padding_idx + max_positions exceeds {MAX_POSITIONS}")
        self._validate_languages()

    def _validate_languages(self) -> None:
        if self.language_position not in LANGUAGE_POSITIONS:
            raise ModelFileError(f"config language_position {_short(self.language_position)} is not one of "
                                 f"{LANGUAGE_POSITIONS}")
        codes = self.language_codes
        if len(codes) > MAX_LANGUAGES:
            raise ModelFileError(f"config language_codes has more than {MAX_LANGUAGES} codes")
        for code, token in codes.items():
            if not 0 < len(code) <= 64 or not _is_int(token) or token >= min(self.vocab_size, self.decoder_vocab_size):
                raise ModelFileError(f"config language_codes entry {_short(code)}: {_short(token)} is not a short "
                                     "code and a token id of both vocabularies")
        if codes and (self.source_eos_token_id is None or self.source_eos_token_id >= self.vocab_size):
            raise ModelFileError("config source_eos_token_id must be a source token id when there are language "
                                 "codes")


def config_from_dict(data: object) -> EncoderConfig | DecoderConfig | Seq2SeqConfig:
    """The config of a file, by its ``kind`` (files without one are encoders)."""
    if not isinstance(data, dict):
        raise ModelFileError("config metadata is not a JSON object")
    kind = data.get("kind", "encoder")
    if kind == "encoder":
        return EncoderConfig.from_dict(data)
    if kind == "decoder":
        return DecoderConfig.from_dict(data)
    if kind == "encoder-decoder":
        return Seq2SeqConfig.from_dict(data)
    raise ModelFileError(f"config kind {kind!r} is not one of encoder, decoder, encoder-decoder")
