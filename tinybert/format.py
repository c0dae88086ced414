"""The tinybert file format: one safetensors file whose metadata carries everything but the weights.

Shared by the converter (writes) and the loader (reads); the only place where names are defined.

Metadata keys (all values are strings, as safetensors requires):
    format           "tinybert"
    format_version   FORMAT_VERSION as a decimal string
    config           canonical model config, JSON (see ``EncoderConfig``)
    tokenizer        the Hugging Face ``tokenizer.json`` text, zlib-compressed UTF-8 in base64 (pack_tokenizer):
                     as plain escaped JSON it was 9.8 MB of a 105 MB int4 SmolLM2-135M-shape file; packed, 0.4 MB
    pooling          {"mode": "mean"|"cls"|"max"|"mean_sqrt_len"|"lasttoken", "normalize": bool}, JSON: encoders
                     and decoder embedders (a decoder file with task feature-extraction, no LM head)
    sentence_transformers  encoders and decoder embedders, optional (older files lack it): what
                     sentence-transformers reads from config_sentence_transformers.json, the Pooling module and a
                     cross-encoder's config.json, JSON:
                     {"prompts": {name: text}, "default_prompt_name": str | null, "similarity_fn_name": one of
                     SIMILARITY_FUNCTIONS | null, "truncate_dim": int | null, "include_prompt": bool,
                     "activation_fn": one of CROSS_ENCODER_ACTIVATIONS | null}; see check_sentence_transformers
    dense            encoders and decoder embedders, optional (absent: none): sentence-transformers' Dense
                     modules, applied in order to the pooled vector before the Normalize, JSON:
                     [{"in_features": int, "out_features": int, "activation": one of DENSE_ACTIVATIONS}, ...];
                     layer i's weights are dense.i.weight [out, in] and dense.i.bias [out], float32 in every
                     file (a few rows a batch: no GEMM time to save); see check_dense
    quantization     "int8", "int4" or "fp32"
    source           free-form description of the converted checkpoint, JSON
    task             the head the file carries, JSON (see ``TaskConfig``): {"type": one of TASKS, ...}
    tokenizer_options  {"mask_token": str | null, "clean_up_tokenization_spaces": bool}, JSON:
                     what transformers keeps in tokenizer_config.json and decoding needs
    target_tokenizer   encoder-decoders whose ``tokenizer`` is not over the model's ids (Marian, M2M-100's own
                     SentencePiece folders): the tokenizer.json text that decodes generated ids; without it
                     ``tokenizer`` decodes too
    source_id_map    with target_tokenizer: JSON list, model id of each id ``tokenizer`` produces (SentencePiece
                     ids → Marian's joint vocabulary / M2M-100's vocab.json, special tokens after them). The
                     language code and </s> put around a source for ``src_lang`` are model ids, not mapped
    chat_template    decoders, optional (older files and checkpoints without a template lack it): what
                     transformers' ``apply_chat_template`` renders with, JSON: {"template": the Jinja text,
                     "special_tokens": {name: text}} with names from CHAT_SPECIAL_TOKENS (the tokenizer's
                     bos_token, eos_token, ... as tokenizer_config.json names them); see check_chat_template.
                     Chat stops on the config's eos_token_ids (generation_config.json's, as transformers' generate)
    source_unknown_pieces  with it, optional: {"unk_id": id, "pieces": {text: model id}, "match": "token" |
                     "text" (optional, default "token")}, JSON: a token the source tokenizer yields as unknown
                     (``unk_id``) whose text is in ``pieces`` takes that model id (MarianTokenizer and
                     M2M100Tokenizer look unknown text up in their vocabulary); the text is the token's own, or
                     with "text" the source text under the token's offsets (BPE tokenizers name it <unk>)

Canonical tensor names (``L`` is the layer index). A quantised 2-D tensor ``T`` is stored as int8
``T`` plus float32 ``T.scale`` with one scale per row (per output channel for linear weights, per
token for embedding tables): ``T_fp32[r, :] = T[r, :] * T.scale[r]``.

int4 weights (quantization "int4"): a quantised linear weight ``T`` [N, K] is either int8 as above or, the
stored dtype tells, 4-bit codes in groups of 32 along K (G = K / 32 groups; only a layer whose K is a
multiple of 32, as every real model's are, may be int4, so K = 2 × the codes' width):

    T         uint8 [N, K / 2]   two codes per byte: byte 16 g + i of row n holds q[n, 32 g + i] in its
                                 low nibble and q[n, 32 g + 16 + i] in its high nibble
    T.gscale  float16 [N, G]     s
    T.gmin    float16 [N, G]     m:   T_fp32[n, k] = s[n, g] · q[n, k] − m[n, g],  g = k // 32,  q in 0..15

(asymmetric; llama.cpp's Q4_0 blocks are s = d, m = 8d, and Q4_K's 32-weight sub-blocks s = d · sc,
m = dmin · mn, both in this nibble order). The layer's input is quantised per row to 8 bits, centred
(kernels/gemm_int4.py). An int4 file has no ``.smooth`` tensors; its embedding tables, task heads and a
tied LM head are int8, and so is any layer the converter measured too inaccurate at 4 bits (convert/int4.py).

A quantised linear weight ``T`` [N, K] may also carry float32 ``T.smooth`` [K] (all > 0): the layer's
input is then quantised to 8 bits per row instead of 12 (centred on the row's midpoint), after
dividing its column k by ``T.smooth[k]``; ``T`` was multiplied column-wise by it before quantisation, so the product is
unchanged (SmoothQuant; the converter's convert/smooth.py decides which layers get it). A
runtime that predates it rejects such a file as holding unexpected tensors. A tied LM head (its weight is
the token table) may carry ``lm_head.weight.smooth`` [H], all ones: 8-bit inputs without smoothing.

    embed.tokens [vocab, E]            embed.positions [max_positions, E]   (unless position_scheme "none")
    embed.token_types [types, E]       (only when the model has token types)
    embed.norm.weight / .bias [E]
    embed.proj.weight [H, E] / .bias   (only when E != H, ELECTRA)
    layers.L.attn.qkv.weight [3H, H] / .bias [3H]     (q, k, v stacked: one GEMM)
    layers.L.attn.out.weight [H, H] / .bias [H]
    layers.L.attn_norm.weight / .bias [H]
    layers.L.mlp.up.weight [I, H] / .bias [I]
    layers.L.mlp.down.weight [H, I] / .bias [H]
    layers.L.mlp_norm.weight / .bias [H]
    rel_embeddings [2 · span, H]       DeBERTa's relative position embeddings (config ``disentangled``)
    rel_norm.weight / .bias [H]        their LayerNorm (config ``rel_norm``)

Decoder files (config kind "decoder") use the same layer names, pre-norm, plus ``final_norm`` and,
when the LM head is not tied to embed.tokens, ``lm_head.weight`` [V, H]; see decoder_tensor_shapes. Blocks
with the config switches below also have:

    layers.L.attn.q_norm.weight [d]    qk_norm: a norm of each head's query and key (d = head_dim), after
    layers.L.attn.k_norm.weight [d]    the projection and before the rotary positions (Qwen3, Gemma 3)
    layers.L.attn_post_norm.weight [H] post_norms: a norm of the sublayer's output before the residual add
    layers.L.mlp_post_norm.weight [H]  (Gemma 3: x = x + post_norm(f(norm(x))))

A norm stored as (1 + w) by its checkpoint (Gemma) is stored here with the 1 added: every RMSNorm is w · x̂.

Encoder-decoder files (config kind "encoder-decoder"): every tensor under ``encoder.`` or ``decoder.``
except the token tables and the LM head; see seq2seq_tensor_shapes (float32 before quantisation; ``S`` is
``encoder`` or ``decoder``, ``L`` the layer index; ``A`` = num_heads · head_dim, which need not equal H for
T5; ``I`` the FFN width; every ``.bias`` is optional and taken as zero when absent, every norm has a ``.bias``
only when it is a LayerNorm):

    embed.tokens [V, H]                    token table of the encoder (and of the decoder unless below)
    decoder.embed.tokens [Vd, H]           only when the decoder has its own table (Marian, unshared)
    S.embed.positions [P, H]               learned positions (BART, mBART), row p = position p (offset removed)
    S.embed.norm.weight / .bias [H]        LayerNorm on the embeddings (BART / mBART layernorm_embedding)
    S.rel_bias [buckets, num_heads]        T5 relative attention bias (layer 0's, shared by all layers)
    S.layers.L.attn_norm.weight [H]        self-attention norm (before it: pre-norm; after the add: post)
    S.layers.L.attn.qkv.weight [3A, H]     q | k | v stacked
    S.layers.L.attn.out.weight [H, A]
    decoder.layers.L.cross_norm.weight [H]
    decoder.layers.L.cross.q.weight [A, H]
    decoder.layers.L.cross.kv.weight [2A, H]   k | v stacked, applied to the encoder output
    decoder.layers.L.cross.out.weight [H, A]
    S.layers.L.mlp_norm.weight [H]
    S.layers.L.mlp.up.weight [I, H]        or [2I, H] for a gated FFN (gate rows first, then linear)
    S.layers.L.mlp.down.weight [H, I]
    S.final_norm.weight [H]                pre-norm models (T5, mBART, M2M-100)
    lm_head.weight [Vd, H]                 only when not tied to the decoder token table
    lm_head.bias [Vd]                      final_logits_bias (BART, mBART, Marian)

sentence-transformers Dense modules (metadata ``dense``; encoders and decoder embedders), float32 in every file:

    dense.i.weight [out, in] / .bias [out]  module i after pooling: act(W x + b) (a zero bias where it had none)

Head tensors, by task (``N`` labels, ``M`` the MLM transform width, ``V`` the vocabulary):

    head.pooler.weight [H, H] / .bias       first-token dense + activation (BERT pooler, RoBERTa/ELECTRA
                                            classifier.dense, DistilBERT pre_classifier)
    head.pooler_norm.weight / .bias [H]     LayerNorm after the pooler (ModernBERT's prediction head)
    head.classifier.weight [N, H] / .bias   sequence/token classification; question answering (N = 2)
    head.nsp.weight [2, H] / .bias          next-sentence prediction (pretraining)
    head.mlm.dense.weight [M, H] / .bias    masked-LM transform → activation → head.mlm.norm [M]
    head.mlm.norm.weight / .bias [M]
    head.mlm.decoder.weight [V, M]          only when not tied to embed.tokens
    head.mlm.decoder.bias [V]
"""

from __future__ import annotations

import base64
import binascii
import zlib

FORMAT_NAME = "tinybert"
FORMAT_VERSION = 3      # 3: the tokenizer packed (pack_tokenizer); 2 held its JSON text
MAX_TOKENIZER_BYTES = 1 << 28   # a packed tokenizer's JSON, unpacked (a 151k vocabulary's: 28 MB)

KEY_FORMAT = "format"
KEY_VERSION = "format_version"
KEY_CONFIG = "config"
KEY_TOKENIZER = "tokenizer"
KEY_POOLING = "pooling"
KEY_SENTENCE_TRANSFORMERS = "sentence_transformers"
KEY_QUANTIZATION = "quantization"
KEY_SOURCE = "source"
KEY_TASK = "task"
KEY_TOKENIZER_OPTIONS = "tokenizer_options"
KEY_TARGET_TOKENIZER = "target_tokenizer"
KEY_SOURCE_ID_MAP = "source_id_map"
KEY_SOURCE_UNKNOWN_PIECES = "source_unknown_pieces"
KEY_CHAT_TEMPLATE = "chat_template"
KEY_DENSE = "dense"

TASKS = ("feature-extraction", "sequence-classification", "token-classification", "question-answering",
         "masked-lm", "pretraining", "text-generation", "text2text-generation")
NORMS = ("layernorm", "rmsnorm")
DECODER_POSITIONS = ("learned", "rope")
ENCODER_POSITIONS = ("learned", "rope")
SEQ2SEQ_FAMILIES = ("t5", "bart", "marian", "mbart", "m2m_100")
LANGUAGE_POSITIONS = ("prefix", "suffix")     # where a multilingual source puts its language code
MAX_LANGUAGES = 4096                           # language codes of a file (NLLB-200: 202)
SEQ2SEQ_POSITIONS = ("relative", "learned", "sinusoidal")
HEAD_ACTIVATIONS = ("tanh", "relu", "gelu", "gelu_tanh")
TASK_POOLINGS = ("first", "mean")        # what a sequence classifier reads (TaskConfig.pooling)
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")

SCALE_SUFFIX = ".scale"
SMOOTH_SUFFIX = ".smooth"
GROUP_SCALE_SUFFIX = ".gscale"     # int4 weights: float16 scale per (row, group of 32)
GROUP_MIN_SUFFIX = ".gmin"         # int4 weights: float16 offset per (row, group of 32)
INT4_GROUP = 32
QUANTIZATIONS = ("int8", "int4", "fp32")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")
SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")    # sentence-transformers' similarity_fn_name
CROSS_ENCODER_ACTIVATIONS = ("sigmoid", "identity", "tanh")            # a CrossEncoder's activation_fn
DENSE_ACTIVATIONS = ("identity", "tanh")        # a sentence-transformers Dense module's activation_function
MAX_DENSE = 16                                  # Dense modules of a file (real models: one or two)
# Bounds on the sentence_transformers metadata: real models carry a handful of short prompts.
MAX_PROMPTS = 64
MAX_PROMPT_NAME_CHARS = 256
MAX_PROMPT_CHARS = 16384
# The named special tokens transformers passes to a chat template (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES).
CHAT_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Bounds on the chat_template metadata: real templates are a few KB (the largest, with tool use, tens of KB).
MAX_CHAT_TEMPLATE_CHARS = 1 << 20
MAX_SPECIAL_TOKEN_CHARS = 1024
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")     # of every block (config.BlockConfig)
POSITIONS = ("learned", "sinusoidal", "rope", "relative", "disentangled")  # where positions enter a block (BlockConfig)
POSITION_SCHEMES = ("absolute", "padding_offset", "none")     # how an encoder numbers its position table (or none)
DISENTANGLED_TERMS = ("c2p", "p2c")     # DeBERTa's content-to-position and position-to-content attention terms
# The canonical rope dict (tinybert/kernels/rope.py): each type's parameters besides "type" and the optional
# "attention_scaling". Kernels import nothing from here, so kernels/rope.py's SUPPORTED_TYPES repeats the types
# (a test keeps the two equal).
ROPE_PARAMETERS = {"default": ("theta",), "linear": ("theta", "factor"),
                   "llama3": ("theta", "factor", "low_freq_factor", "high_freq_factor",
                              "original_max_position_embeddings"),
                   "longrope": ("theta", "factors", "original_max_position_embeddings")}
# Optional parameters of a type: longrope's long factors (files of earlier converters lack them, and their context
# ends at original_max_position_embeddings).
ROPE_OPTIONAL = {"longrope": ("long_factors",)}

# Tensors quantised to int8 (+ .scale) in an int8 file (an int4 file: the linears int8 or int4); everything else
# stays float32.
QUANTIZED_LINEARS = ("attn.qkv", "attn.out", "mlp.up", "mlp.down", "cross.q", "cross.kv", "cross.out",
                     "head.pooler", "head.mlm.dense", "head.mlm.decoder", "lm_head")
QUANTIZED_EMBEDDINGS = ("embed.tokens", "embed.positions", "decoder.embed.tokens", "encoder.embed.positions",
                        "decoder.embed.positions")


# Canonical tensor names. A file of kind "encoder" or "decoder" has one stack (stack ""); an encoder-decoder
# has two, "encoder" and "decoder", whose tensors sit under "encoder." / "decoder." except the token table
# they may share and the LM head.
EMBED_TOKENS = "embed.tokens"
REL_BIAS = "rel_bias"                 # T5's relative position bias [buckets, heads], one per stack
REL_EMBEDDINGS = "rel_embeddings"     # DeBERTa's relative position embeddings [2 · span, H], shared by the layers
REL_NORM = "rel_norm"                 # the LayerNorm applied to them (norm_rel_ebd = layer_norm)
FINAL_NORM = "final_norm"
LM_HEAD = "lm_head"
# Within a layer (after layer_prefix):
ATTN_NORM, ATTN_QKV, ATTN_OUT = "attn_norm", "attn.qkv", "attn.out"
CROSS_NORM, CROSS_Q, CROSS_KV, CROSS_OUT = "cross_norm", "cross.q", "cross.kv", "cross.out"
MLP_NORM, MLP_UP, MLP_DOWN = "mlp_norm", "mlp.up", "mlp.down"
ATTN_Q_NORM, ATTN_K_NORM = "attn.q_norm", "attn.k_norm"          # per-head query / key norms (qk_norm)
ATTN_POST_NORM, MLP_POST_NORM = "attn_post_norm", "mlp_post_norm"    # sublayer output norms (post_norms)


def pack_tokenizer(text: str) -> str:
    """tokenizer.json text as a file's ``tokenizer`` value: zlib-compressed UTF-8, base64."""
    return base64.b64encode(zlib.compress(text.encode("utf-8", "surrogatepass"), 9)).decode("ascii")


def unpack_tokenizer(value: str) -> str:
    """pack_tokenizer's inverse; ValueError for a value that is not its output or unpacks to more than
    MAX_TOKENIZER_BYTES (read in bounded steps: a small value cannot make a large allocation)."""
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not base64") from None
    stream = zlib.decompressobj()
    try:
        raw = stream.decompress(data, MAX_TOKENIZER_BYTES)
    except zlib.error as exc:
        raise ValueError(f"not zlib data ({exc})") from None
    if stream.unconsumed_tail:
        raise ValueError(f"unpacks to more than {MAX_TOKENIZER_BYTES} bytes")
    if not stream.eof or stream.unused_data:
        raise ValueError("truncated or followed by other data")
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def dense_prefix(i: int) -> str:
    """The tensors of sentence-transformers Dense module i (after pooling): ``dense.i.weight`` / ``.bias``."""
    return f"dense.{i}"


def stack_prefix(stack: str = "") -> str:
    return f"{stack}." if stack else ""


def layer_prefix(i: int, stack: str = "") -> str:
    return f"{stack_prefix(stack)}layers.{i}."


def embed_names(stack: str = "", shared_tokens: bool = True) -> dict[str, str]:
    """The embedding tensors of a stack: the token table (an encoder-decoder's decoder has its own,
    ``decoder.embed.tokens``, unless ``shared_tokens``), positions, token types, norm and projection."""
    p = stack_prefix(stack) + "embed."
    tokens = EMBED_TOKENS if shared_tokens else "decoder." + EMBED_TOKENS
    return {"tokens": tokens, "positions": p + "positions", "token_types": p + "token_types", "norm": p + "norm",
            "proj": p + "proj"}


def relative_span(buckets: int, max_distance: int) -> int:
    """DeBERTa's attention span: relative positions run over [-span, span) after bucketing (the relative
    embedding table has 2 · span rows): the buckets when there are any, else the maximum distance."""
    return buckets if buckets > 0 else max_distance


def encoder_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor an encoder file must hold (without .scale companions), with its shape.

    Keys of EncoderConfig that files of earlier converters lack take their defaults (BERT's). A gated MLP stores
    gate and up stacked in ``mlp.up`` ([2I, H]: gate rows first); rotary positions have no table; a relative
    bias is ``rel_bias`` [buckets, heads]; pre-norm encoders end in ``final_norm``, and with ``first_attn_norm``
    False layer 0 has no ``attn_norm`` (ModernBERT). Projections and norms without a bias in the checkpoint are
    stored with a zero one.
    """
    e, h, i_dim = cfg["embedding_size"], cfg["hidden_size"], cfg["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embed.tokens": (cfg["vocab_size"], e),
        "embed.norm.weight": (e,),
        "embed.norm.bias": (e,),
    }
    if cfg.get("positions", "learned") == "learned" and cfg["position_scheme"] != "none":
        shapes["embed.positions"] = (cfg["max_positions"], e)
    if cfg.get("disentangled"):     # files of earlier converters have none of these keys
        span = relative_span(cfg.get("relative_buckets", 0), cfg.get("relative_max_distance", 0))  # 0: left out
        shapes[REL_EMBEDDINGS] = (2 * span, h)
        if cfg.get("rel_norm"):
            shapes[REL_NORM + ".weight"] = (h,)
            shapes[REL_NORM + ".bias"] = (h,)
    elif cfg.get("relative_buckets", 0) > 0:
        shapes[REL_BIAS] = (cfg["relative_buckets"], cfg["num_heads"])
    if cfg["type_vocab_size"] > 0:
        shapes["embed.token_types"] = (cfg["type_vocab_size"], e)
    if e != h:
        shapes["embed.proj.weight"] = (h, e)
        shapes["embed.proj.bias"] = (h,)
    up = 2 * i_dim if cfg.get("gated_mlp", False) else i_dim
    for layer in range(cfg["num_layers"]):
        p = layer_prefix(layer)
        shapes.update({
            p + "attn.qkv.weight": (3 * h, h),
            p + "attn.qkv.bias": (3 * h,),
            p + "attn.out.weight": (h, h),
            p + "attn.out.bias": (h,),
            p + "attn_norm.weight": (h,),
            p + "attn_norm.bias": (h,),
            p + "mlp.up.weight": (up, h),
            p + "mlp.up.bias": (up,),
            p + "mlp.down.weight": (h, i_dim),
            p + "mlp.down.bias": (h,),
            p + "mlp_norm.weight": (h,),
            p + "mlp_norm.bias": (h,),
        })
    if not cfg.get("first_attn_norm", True):
        del shapes[layer_prefix(0) + "attn_norm.weight"], shapes[layer_prefix(0) + "attn_norm.bias"]
    if cfg.get("pre_norm", False):
        shapes[FINAL_NORM + ".weight"] = (h,)
        shapes[FINAL_NORM + ".bias"] = (h,)
    return shapes


def decoder_tensor_shapes(cfg: dict, lm_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor a decoder file must hold (without .scale companions), with its shape; without ``lm_head``
    (an embedder: task feature-extraction) no LM head even when it is not tied.

    A gated MLP stores gate and up stacked in ``mlp.up`` ([2I, H]: gate rows first), so one GEMM
    computes both; norms have a bias only when they are LayerNorms.
    """
    h, d = cfg["hidden_size"], cfg["head_dim"]
    q_dim, kv_dim, i_dim = cfg["num_heads"] * d, cfg["num_kv_heads"] * d, cfg["intermediate_size"]
    has_norm_bias = cfg["norm"] == "layernorm"

    def norm(name: str) -> dict[str, tuple[int, ...]]:
        return {name + ".weight": (h,), **({name + ".bias": (h,)} if has_norm_bias else {})}

    def linear(name: str, out_dim: int, in_dim: int, bias: bool) -> dict[str, tuple[int, ...]]:
        return {name + ".weight": (out_dim, in_dim), **({name + ".bias": (out_dim,)} if bias else {})}

    shapes: dict[str, tuple[int, ...]] = {"embed.tokens": (cfg["vocab_size"], h)}
    if cfg["positions"] == "learned":
        shapes["embed.positions"] = (cfg["max_positions"], h)
    for layer in range(cfg["num_layers"]):
        p = layer_prefix(layer)
        shapes.update(norm(p + "attn_norm"))
        shapes.update(linear(p + "attn.qkv", q_dim + 2 * kv_dim, h, cfg["attn_bias"]))
        shapes.update(linear(p + "attn.out", h, q_dim, cfg["attn_out_bias"]))
        shapes.update(norm(p + "mlp_norm"))
        shapes.update(linear(p + "mlp.up", 2 * i_dim if cfg["gated_mlp"] else i_dim, h, cfg["mlp_bias"]))
        shapes.update(linear(p + "mlp.down", h, i_dim, cfg["mlp_bias"]))
        if cfg.get("qk_norm"):
            shapes.update({p + ATTN_Q_NORM + ".weight": (d,), p + ATTN_K_NORM + ".weight": (d,)})
            if has_norm_bias:
                shapes.update({p + ATTN_Q_NORM + ".bias": (d,), p + ATTN_K_NORM + ".bias": (d,)})
        if cfg.get("post_norms"):
            shapes.update(norm(p + ATTN_POST_NORM))
            shapes.update(norm(p + MLP_POST_NORM))
    shapes.update(norm("final_norm"))
    if lm_head and not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def seq2seq_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor an encoder-decoder file must hold (without .scale companions), with its shape.

    T5 has no biases and RMS norms; BART and Marian a bias on every linear and LayerNorms; see
    tinybert/models/seq2seq.py for the names.
    """
    h, a, i_dim = cfg["hidden_size"], cfg["num_heads"] * cfg["head_dim"], cfg["intermediate_size"]
    bias = cfg["family"] != "t5"
    has_norm_bias = cfg["norm"] == "layernorm"

    def norm(name: str) -> dict[str, tuple[int, ...]]:
        return {name + ".weight": (h,), **({name + ".bias": (h,)} if has_norm_bias else {})}

    def linear(name: str, out_dim: int, in_dim: int) -> dict[str, tuple[int, ...]]:
        return {name + ".weight": (out_dim, in_dim), **({name + ".bias": (out_dim,)} if bias else {})}

    shapes: dict[str, tuple[int, ...]] = {"embed.tokens": (cfg["vocab_size"], h)}
    if not cfg["share_embeddings"]:
        shapes["decoder.embed.tokens"] = (cfg["decoder_vocab_size"], h)
    for side, layers in (("encoder", cfg["num_encoder_layers"]), ("decoder", cfg["num_decoder_layers"])):
        if cfg["positions"] == "relative":
            shapes[side + ".rel_bias"] = (cfg["relative_buckets"], cfg["num_heads"])
        elif cfg["positions"] == "learned":
            shapes[side + ".embed.positions"] = (cfg["max_positions"], h)
        if cfg["layernorm_embedding"]:
            shapes.update(norm(side + ".embed.norm"))
        for layer in range(layers):
            p = f"{side}.layers.{layer}."
            shapes.update(norm(p + "attn_norm"))
            shapes.update(linear(p + "attn.qkv", 3 * a, h))
            shapes.update(linear(p + "attn.out", h, a))
            if side == "decoder":
                shapes.update(norm(p + "cross_norm"))
                shapes.update(linear(p + "cross.q", a, h))
                shapes.update(linear(p + "cross.kv", 2 * a, h))
                shapes.update(linear(p + "cross.out", h, a))
            shapes.update(norm(p + "mlp_norm"))
            shapes.update(linear(p + "mlp.up", 2 * i_dim if cfg["gated_mlp"] else i_dim, h))
            shapes.update(linear(p + "mlp.down", h, i_dim))
        if cfg["pre_norm"]:
            shapes.update(norm(side + ".final_norm"))
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["decoder_vocab_size"], h)
    if cfg["final_logits_bias"]:
        shapes["lm_head.bias"] = (cfg["decoder_vocab_size"],)
    return shapes


def head_tensor_shapes(task: dict, cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every head tensor a file with ``task`` (a TaskConfig dict) must hold, with its shape."""
    h, kind = cfg["hidden_size"], task["type"]
    shapes: dict[str, tuple[int, ...]] = {}
    if task.get("pooler_activation") is not None:
        shapes["head.pooler.weight"] = (h, h)
        shapes["head.pooler.bias"] = (h,)
    if task.get("pooler_norm_eps") is not None:
        shapes["head.pooler_norm.weight"] = (h,)
        shapes["head.pooler_norm.bias"] = (h,)
    if kind in ("sequence-classification", "token-classification", "question-answering"):
        n = 2 if kind == "question-answering" else len(task["labels"])
        shapes["head.classifier.weight"] = (n, h)
        shapes["head.classifier.bias"] = (n,)
    if kind == "pretraining":
        shapes["head.nsp.weight"] = (2, h)
        shapes["head.nsp.bias"] = (2,)
    if kind in ("masked-lm", "pretraining"):
        m = task["mlm_size"]
        shapes.update({
            "head.mlm.dense.weight": (m, h),
            "head.mlm.dense.bias": (m,),
            "head.mlm.norm.weight": (m,),
            "head.mlm.norm.bias": (m,),
            "head.mlm.decoder.bias": (cfg["vocab_size"],),
        })
        if not task["mlm_tied"]:
            shapes["head.mlm.decoder.weight"] = (cfg["vocab_size"], m)
    return shapes


def int4_shapes(shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(codes shape, scale / offset shape) of an int4 linear weight of float shape [N, K], or None when K is not
    a multiple of INT4_GROUP (such a layer is int8 in every file)."""
    n, k = shape
    if k % INT4_GROUP:
        return None
    return (n, k // 2), (n, k // INT4_GROUP)


def is_int4_candidate(name: str) -> bool:
    """Whether an int4 file may store ``name`` as int4 codes (a quantised linear weight; not a table)."""
    return name not in QUANTIZED_EMBEDDINGS and is_quantized_name(name)


def is_quantized_name(name: str) -> bool:
    """Whether an int8 file stores ``name`` as int8 + ``name.scale``."""
    if name in QUANTIZED_EMBEDDINGS:
        return True
    return name.endswith(".weight") and any(f".{q}.weight" in "." + name for q in QUANTIZED_LINEARS)


def dense_tensor_shapes(dense: list[dict]) -> dict[str, tuple[int, ...]]:
    """The tensors of the Dense modules a checked ``dense`` list describes, with their shapes."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(dense):
        shapes[dense_prefix(i) + ".weight"] = (layer["out_features"], layer["in_features"])
        shapes[dense_prefix(i) + ".bias"] = (layer["out_features"],)
    return shapes


def check_dense(value: object, width: int) -> str | None:
    """What is wrong with a ``dense`` list for pooled vectors of ``width`` values, or None when it is valid:
    at most MAX_DENSE layers, each {"in_features", "out_features", "activation"}, the sizes positive integers
    below 2**31, each layer's input the width before it. The converter and the loader both check with it."""
    if not isinstance(value, list) or len(value) > MAX_DENSE:
        return f"must be a list of at most {MAX_DENSE} layers"
    for i, layer in enumerate(value):
        if not isinstance(layer, dict) or set(layer) != {"in_features", "out_features", "activation"}:
            return f"layer {i} must be an object with exactly the keys activation, in_features, out_features"
        for name in ("in_features", "out_features"):
            size = layer[name]
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < 2 ** 31:
                return f"layer {i} {name} must be a positive integer"
        if layer["in_features"] != width:
            return f"layer {i} takes {layer['in_features']} values, the vector before it has {width}"
        if layer["activation"] not in DENSE_ACTIVATIONS:
            return f"layer {i} activation must be one of {DENSE_ACTIVATIONS}"
        width = layer["out_features"]
    return None


def default_sentence_transformers() -> dict:
    """The sentence_transformers settings of a file without them: no prompts, cosine similarity, no truncation,
    prompt tokens pooled, the CrossEncoder's default activation."""
    return {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": None, "truncate_dim": None,
            "include_prompt": True, "activation_fn": None}


def check_sentence_transformers(value: object) -> str | None:
    """What is wrong with a sentence_transformers settings dict (types, names, sizes), or None when it is
    valid. The converter and the loader both check with it (a file is untrusted input)."""
    if not isinstance(value, dict) or set(value) != set(default_sentence_transformers()):
        return f"must be an object with exactly the keys {sorted(default_sentence_transformers())}"
    prompts = value["prompts"]
    if not isinstance(prompts, dict) or len(prompts) > MAX_PROMPTS:
        return f"prompts must be an object of at most {MAX_PROMPTS} prompts"
    for name, text in prompts.items():
        if not isinstance(name, str) or not name or len(name) > MAX_PROMPT_NAME_CHARS:
            return f"prompt names must be strings of 1 to {MAX_PROMPT_NAME_CHARS} characters"
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            return f"prompt {name[:40]!r} must be a string of at most {MAX_PROMPT_CHARS} characters"
        try:        # JSON escapes can make lone surrogates, which no tokenizer takes
            (name + text).encode("utf-8")
        except UnicodeEncodeError:
            return f"prompt {name[:40]!r} is not valid Unicode"
    default = value["default_prompt_name"]
    if default is not None and (not isinstance(default, str) or default not in prompts):
        return f"default_prompt_name {str(default)[:40]!r} is not one of the prompts"
    if value["similarity_fn_name"] not in (None, *SIMILARITY_FUNCTIONS):
        return f"similarity_fn_name must be one of {SIMILARITY_FUNCTIONS} or null"
    dim = value["truncate_dim"]
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim < 2 ** 31):
        return "truncate_dim must be a positive integer or null"
    if not isinstance(value["include_prompt"], bool):
        return "include_prompt must be a boolean"
    if value["activation_fn"] not in (None, *CROSS_ENCODER_ACTIVATIONS):
        return f"activation_fn must be one of {CROSS_ENCODER_ACTIVATIONS} or null"
    return None


def check_chat_template(value: object) -> str | None:
    """What is wrong with a chat_template settings dict (types, names, sizes), or None when it is valid. The
    converter and the loader both check with it; whether the template compiles is checked where it is compiled
    (tinybert/api/chat.py)."""
    if not isinstance(value, dict) or set(value) != {"template", "special_tokens"}:
        return "must be an object with exactly the keys ['special_tokens', 'template']"
    template, tokens = value["template"], value["special_tokens"]
    if not isinstance(template, str) or not template or len(template) > MAX_CHAT_TEMPLATE_CHARS:
        return f"template must be a non-empty string of at most {MAX_CHAT_TEMPLATE_CHARS} characters"
    if not isinstance(tokens, dict) or not set(tokens) <= set(CHAT_SPECIAL_TOKENS):
        return f"special_tokens must be an object whose keys are among {CHAT_SPECIAL_TOKENS}"
    for name, text in tokens.items():
        if not isinstance(text, str) or len(text) > MAX_SPECIAL_TOKEN_CHARS:
            return f"special token {name} must be a string of at most {MAX_SPECIAL_TOKEN_CHARS} characters"
    try:        # JSON escapes can make lone surrogates, which no tokenizer takes
        "".join([template, *tokens.values()]).encode("utf-8")
    except UnicodeEncodeError:
        return "template or special tokens are not valid Unicode"
    return None
