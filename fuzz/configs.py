"""Fuzz the values of a file's config, task and rope parameters (atheris, structured), under a tight memory limit.

    python -m fuzz.configs [CORPUS_DIR] [-runs=100000] [-max_total_time=SECONDS] [libFuzzer options]

Each input takes one seed file of fuzz/seeds.py (every encoder head, the GPT-2 and Llama-style rotary decoders,
the T5 encoder-decoder) and makes one to three edits of its metadata: a field of the config, of its rope dict, of
the task, of the pooling or tokenizer options set to a hostile value of a typed set (integers from 2**31 to past
2**64, negative, zero, booleans, strings, very long strings, floats, NaN and infinities, None, nested lists and
dicts), a field deleted or an unknown one added, or a rope dict of any type with parameters missing, extra or
odd. Fields no tensor backs (max_positions, max_length, the rope parameters, the T5 buckets, token ids) are
among them. The file is rewritten with safetensors' own writer, opened with the API class its metadata names and
run once on short texts; then one call asks for a huge size (max_new_tokens / max_length up to 10**9, batch_size
up to 2**63), stopped after a CPU budget (fuzz/limits.py: such a call may run long; what it must not do is
allocate for the size asked).

Success and ``TinyBertError`` are the only acceptable outcomes. The process runs under -rss_limit_mb=4096 and an
address-space limit 1 GiB above its size after warm-up, so an allocation sized by a config value is a crash.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import atheris

from fuzz.instrumentation import kernel_modules

# Only tinybert's own Python is instrumented: Numba compiles the kernels from their bytecode, which
# instrumentation would change.
with atheris.instrument_imports(include=["tinybert"], exclude=kernel_modules()):
    from tinybert import Classifier, Encoder, FillMask, Generator, QuestionAnswerer, TokenClassifier, Translator
    from tinybert.errors import TinyBertError
    from tinybert.loader import load

from fuzz.limits import OutOfBudget, cpu_budget, limit_address_space

BUDGET_SECONDS = 2.0            # CPU time for the call with a huge size (--budget=SECONDS sets it)
_DIR = Path(tempfile.mkdtemp(prefix="tinybert-fuzz-configs-"))
_PATH = _DIR / "model.safetensors"
_SEEDS: list[tuple[str, dict, dict]] = []        # (name, tensors, metadata) of every seed file

HUGE_INTS = [2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64,
             2 ** 64 + 1, 10 ** 30]
NEGATIVE_INTS = [-1, -2, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 63), -(2 ** 64)]
FLOATS = [0.0, -0.0, 5e-324, 1e-45, 1e-300, 0.5, 1.5, 3.4e38, 3.5e38, 1e300, -1e300, -1.5]
STRINGS = ["", " ", "abc", "16", "1e9", "nan", "None", "null", "true", "gelu", "relu", "rope", "llama3", "rmsnorm",
           "layernorm", "absolute", "relative", "decoder", "encoder", "encoder-decoder", "t5", "bart", "\x00",
           "\ud800", "🙂", "[CLS]", "mat"]
LARGE_VALID_INTS = [2 ** 31 - 1, 2 ** 30, 2 ** 24, 2 ** 20, 2 ** 20 + 1, 65536, 4097, 4096, 1000]
SIZES = [10 ** 9, 2 ** 31 - 1, 2 ** 31, 2 ** 63, 10 ** 6, 2 ** 20, 4097]
ROPE_TYPES = ["default", "linear", "llama3", "dynamic", "yarn", "longrope", "", "LLAMA3", None, 3, ["llama3"]]
ROPE_KEYS = {"theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8, "attention_scaling": 1.0, "rope_type": "llama3",
             "beta_fast": 32.0, "mscale": 1.0, "factors": [1.0, 2.0], "long_factors": [1.0, 2.0]}
TEXTS = ["the cat sat on the mat", "café 你好 🙂"]
# Config fields no tensor backs (sizes, ids, scales): picked more often, since nothing but the loader's checks
# stands between them and an allocation or an index.
UNBACKED = ["max_positions", "max_length", "relative_max_distance", "relative_buckets", "rope", "pad_token_id",
            "bos_token_id", "eos_token_ids", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id",
            "bad_token_ids", "norm_eps", "lm_head_scale", "attn_scale", "positions", "position_scheme",
            "layer_windows", "local_rope", "score_scale", "qk_norm", "post_norms", "scale_embedding"]


def _seeds() -> list[tuple[str, dict, dict]]:
    if not _SEEDS:
        from safetensors import safe_open

        from fuzz.seeds import write_seeds

        for name, path in sorted(write_seeds(_DIR / "seeds").items()):
            with safe_open(str(path), framework="numpy") as fh:
                _SEEDS.append((name, {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())))
    return _SEEDS


def _nested(fdp: atheris.FuzzedDataProvider, leaf: object, as_dict: bool) -> object:
    value = leaf
    for _ in range(fdp.ConsumeIntInRange(1, 200 if fdp.ConsumeProbability() < 0.1 else 4)):
        value = {fdp.PickValueInList(["type", "x", ""]): value} if as_dict else [value]
    return value


def hostile(fdp: atheris.FuzzedDataProvider, current: object) -> object:
    """A value of the typed hostile set, some of them derived from the field's current value."""
    kind = fdp.ConsumeIntInRange(0, 14)
    if kind == 0:
        if fdp.ConsumeBool():
            return fdp.PickValueInList(HUGE_INTS)
        return (1 << fdp.ConsumeIntInRange(31, 64)) + fdp.ConsumeIntInRange(-2, 2)
    if kind == 1:
        return fdp.PickValueInList(NEGATIVE_INTS) if fdp.ConsumeBool() else -fdp.ConsumeIntInRange(1, 2 ** 40)
    if kind == 2:
        return fdp.ConsumeIntInRange(0, 4)
    if kind == 3 and isinstance(current, int) and not isinstance(current, bool):
        return current + fdp.ConsumeIntInRange(-3, 3) if fdp.ConsumeBool() else current << fdp.ConsumeIntInRange(1, 24)
    if kind == 4:           # integers the loader's ranges accept, far beyond what the tensors back
        return fdp.PickValueInList(LARGE_VALID_INTS)
    if kind == 5:
        return fdp.ConsumeBool()
    if kind == 6:
        return fdp.PickValueInList(STRINGS) if fdp.ConsumeBool() else fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 32))
    if kind == 7:           # very long strings
        unit = fdp.PickValueInList(["x", "é", "你好", "🙂", " ", "\x00", str(current)])
        return unit * fdp.ConsumeIntInRange(1, 1 << 20)
    if kind == 8:
        return fdp.PickValueInList(FLOATS) if fdp.ConsumeBool() else fdp.ConsumeRegularFloat()
    if kind == 9:
        return fdp.PickValueInList([float("nan"), float("inf"), float("-inf")])
    if kind == 10:
        return None
    if kind == 11:
        leaf = current if fdp.ConsumeBool() else hostile(fdp, None)
        return [] if fdp.ConsumeProbability() < 0.2 else _nested(fdp, leaf, as_dict=False)
    if kind == 12:
        leaf = current if fdp.ConsumeBool() else hostile(fdp, None)
        return {} if fdp.ConsumeProbability() < 0.2 else _nested(fdp, leaf, as_dict=True)
    if kind == 13:
        return rope_dict(fdp)
    if isinstance(current, float):
        return current * fdp.PickValueInList([-1.0, 0.0, 1e-30, 1e-10, 1e10, 1e30, 2.0 ** 128])
    if isinstance(current, list) and current:
        return current + [hostile(fdp, current[0])] if fdp.ConsumeBool() else current * fdp.ConsumeIntInRange(2, 1000)
    return str(current)


def rope_dict(fdp: atheris.FuzzedDataProvider) -> dict:
    """A rope dict of any type, each parameter present with a sane or a hostile value, or missing; extra keys."""
    rope: dict = {}
    if fdp.ConsumeProbability() < 0.9:
        rope["type"] = fdp.PickValueInList(ROPE_TYPES)
    for key, sane in ROPE_KEYS.items():
        if fdp.ConsumeBool():
            rope[key] = sane if fdp.ConsumeBool() else hostile(fdp, sane)
    if fdp.ConsumeProbability() < 0.1:
        rope[fdp.ConsumeUnicode(8)] = hostile(fdp, None)
    return rope


def _edit(fdp: atheris.FuzzedDataProvider, obj: dict, prefer: list[str] | None = None) -> None:
    """Set a field of ``obj`` (often one of ``prefer``) to a hostile value, delete it, or add an unknown one."""
    op = fdp.ConsumeIntInRange(0, 9)
    names = sorted(obj)
    if prefer and fdp.ConsumeProbability() < 0.5:
        names = [name for name in prefer if name in obj] or names
    if (op == 0 and fdp.ConsumeBool()) or not names:
        obj[fdp.PickValueInList(["unknown", "rope", "kind", "positions", fdp.ConsumeUnicode(8)])] = hostile(fdp, None)
    elif op == 1 and fdp.ConsumeBool():
        del obj[fdp.PickValueInList(names)]
    else:
        name = fdp.PickValueInList(names)
        obj[name] = hostile(fdp, obj[name])


def mutate(fdp: atheris.FuzzedDataProvider, metadata: dict) -> dict:
    """The seed's metadata with one to three edits of its config, rope, task, pooling or tokenizer options."""
    metadata = dict(metadata)
    parsed = {key: json.loads(metadata[key]) for key in ("config", "task", "pooling", "tokenizer_options")
              if key in metadata}
    for _ in range(1 if fdp.ConsumeProbability() < 0.6 else fdp.ConsumeIntInRange(2, 3)):
        target = fdp.ConsumeIntInRange(0, 19)
        config = parsed["config"]
        if target < 11 or (target < 15 and "rope" not in config and fdp.ConsumeProbability() < 0.9):
            _edit(fdp, config, UNBACKED)
        elif target < 15:       # the rope dict: edit it, or put one in (where there was none: rarely)
            if isinstance(config.get("rope"), dict) and fdp.ConsumeBool():
                _edit(fdp, config["rope"])
            else:
                config["rope"] = rope_dict(fdp)
                if fdp.ConsumeBool():
                    config["positions"] = "rope"
        elif target < 18:
            _edit(fdp, parsed["task"])
        else:
            key = fdp.PickValueInList(sorted(k for k in parsed if k not in ("config", "task")))
            _edit(fdp, parsed[key])
    for key, value in parsed.items():
        metadata[key] = json.dumps(value)
    return metadata


def run_file(path: Path, fdp: atheris.FuzzedDataProvider) -> None:
    """Open ``path`` with the API class its metadata names, run it once, then once with a huge size."""
    model_file = load(path)
    kind, task = model_file.config.kind, model_file.task.type
    # An input that runs out of bytes asks for 10**9 new tokens and a batch of 10**12.
    size = fdp.ConsumeIntInRange(1, 10 ** 9) if fdp.ConsumeBool() else fdp.PickValueInList(SIZES)
    batch = 16 if fdp.ConsumeBool() else fdp.PickValueInList([10 ** 12, 2 ** 63, 2 ** 31])
    big = fdp.ConsumeIntInRange(0, 2)
    if kind == "decoder":
        gen = Generator(path, threads=1)
        gen.generate("the cat", max_new_tokens=3)
        with cpu_budget(BUDGET_SECONDS):
            if big == 0:
                for i, _ in enumerate(gen.stream("the cat", max_new_tokens=size)):
                    if i >= 4:
                        break
            elif big == 1:
                gen.generate(TEXTS, max_new_tokens=size, num_beams=2, batch_size=batch)
            else:
                gen.generate_ids([[4, 6], [7]], max_new_tokens=size, temperature=0.8, seed=1, batch_size=batch)
    elif kind == "encoder-decoder":
        tr = Translator(path, threads=1)
        tr.translate("the cat", max_length=3, beam_size=2)
        with cpu_budget(BUDGET_SECONDS):
            if big == 0:
                tr.translate(TEXTS, max_length=size, beam_size=2, batch_size=batch, truncation=True)
            else:
                tr.translate_ids([[4, 6, 8, 23], [5]], max_length=size, beam_size=big, batch_size=batch)
    elif task == "token-classification":
        TokenClassifier(path, threads=1).ner(TEXTS, batch_size=batch)
    elif task == "masked-lm":
        FillMask(path, threads=1).fill(["the mat sat", "a mat and mat"], batch_size=batch)
    elif task == "question-answering":
        QuestionAnswerer(path, threads=1).answer("what sat", "the cat sat on the mat", batch_size=batch)
    elif task == "sequence-classification":
        clf = Classifier(path, threads=1)
        clf.classify(TEXTS)
        clf.classify(TEXTS * 3, top_k=None, batch_size=batch)
    else:
        enc = Encoder(path, threads=1)
        enc.encode(TEXTS)
        enc.encode(TEXTS * 3, batch_size=batch)


def check_config(data: bytes) -> None:
    from safetensors.numpy import save_file

    fdp = atheris.FuzzedDataProvider(data)
    seeds = _seeds()
    _, tensors, metadata = seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)]
    try:
        save_file(tensors, str(_PATH), metadata=mutate(fdp, metadata))
    except Exception:  # noqa: BLE001 - a header safetensors will not write (too large) is no input
        return
    try:
        run_file(_PATH, fdp)
    except (TinyBertError, OutOfBudget):
        pass


def warm_up() -> None:
    """Run every seed file once (compiling or loading the kernels they need) before the limits apply."""
    for name, tensors, metadata in _seeds():
        from safetensors.numpy import save_file

        path = _DIR / f"warm-{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        run_file(path, atheris.FuzzedDataProvider(b"\0" * 64))


def main(argv: list[str]) -> None:
    global BUDGET_SECONDS
    for arg in [a for a in argv[1:] if a.startswith("--budget=")]:
        # Long runs: a corpus that keeps the inputs with new coverage drifts toward huge calls that use their whole
        # budget (13 inputs/s at 2 s); what they check, nothing allocated up front for the size asked, shows at once.
        BUDGET_SECONDS = float(arg.split("=", 1)[1])
        argv = [a for a in argv if a != arg]
    for arg in argv[1:]:
        if not arg.startswith("-") and not os.path.isfile(arg):     # a file: an input to run again
            os.makedirs(arg, exist_ok=True)       # a corpus folder libFuzzer should keep inputs in
    warm_up()
    limit_address_space(1024)
    atheris.Setup([argv[0], "-rss_limit_mb=4096", "-timeout=120", "-len_control=0", "-max_len=1024", *argv[1:]],
                 check_config)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
