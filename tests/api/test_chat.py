"""Chat: real chat templates rendered as transformers' ``apply_chat_template`` renders them, and replies equal to
transformers' greedy ``generate`` on that prompt, stopping on every EOS id generation_config.json lists.

The templates are the public ones of Qwen2.5, Qwen3, Llama 3.1 / 3.2, Gemma 3, Phi-3 and SmolLM2 (verbatim copies
in tests/data/chat_templates/, sources in SOURCES.md), each written into a random test model's
tokenizer_config.json with the special tokens it uses; the references are transformers' tokenizer and model on
that folder. Never tinybert's own output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EOT, build_hf_decoder

import tinybert
from tinybert import format as fmt
from tinybert.errors import ConversionError, InputError, ModelFileError

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "chat_templates"

# The special tokens each family's template and generation_config use, as its tokenizer_config.json names them.
FAMILIES = {
    "qwen2.5": dict(model="qwen2", tokens={"eos_token": "<|im_end|>", "pad_token": EOT},
                    stops=["<|im_end|>", EOT]),
    "qwen3": dict(model="qwen2", tokens={"eos_token": "<|im_end|>", "pad_token": EOT}, stops=["<|im_end|>", EOT]),
    "llama3.1": dict(model="llama", tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                     stops=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], prepend_bos=True),
    "llama3.2": dict(model="llama", tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                     stops=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], prepend_bos=True),
    "gemma3": dict(model="llama", tokens={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
                   stops=["<eos>", "<end_of_turn>"], prepend_bos=True),
    "phi3": dict(model="llama", tokens={"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
                 stops=[EOT, "<|assistant|>", "<|end|>"]),
    "smollm2": dict(model="llama", tokens={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": EOT},
                    stops=["<|im_end|>"]),
}
SPECIAL = [EOT, "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<bos>", "<eos>", "<pad>", "<start_of_turn>",
           "<end_of_turn>", "<s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "If no matching line exists, what happens?"}],
    "system-user": [SYSTEM, {"role": "user", "content": "The option can also be used to compare files"}],
    "multi-turn": [SYSTEM,
                   {"role": "user", "content": "  Where is the café? 😀 "},
                   {"role": "assistant", "content": "<think>\nthe user asks\n</think>\n\nNear the station."},
                   {"role": "user", "content": "And after that?"}],
    "ends-with-assistant": [{"role": "user", "content": "Especially a keybox"},
                            {"role": "assistant", "content": "with some initial certificates"},
                            {"role": "user", "content": "is often desired"},
                            {"role": "assistant", "content": "when it starts."}],
}


@pytest.fixture(scope="module")
def chat_tokenizer_file(tmp_path_factory, sentences) -> Path:
    """A byte-level BPE like conftest's, with the chat templates' special tokens in its vocabulary (so they are
    ids the random model has)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences, trainer=trainer)
    path = tmp_path_factory.mktemp("chat-bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


def _write_folder(family: str, folder: Path, tokenizer_file: Path, stop_ids: list[int] | None = None):
    """A random decoder with ``family``'s template in tokenizer_config.json; returns the transformers model."""
    spec = FAMILIES[family]
    model = build_hf_decoder(spec["model"], folder, tokenizer_file)
    vocab = json.loads(tokenizer_file.read_text())["model"]["vocab"]
    if spec.get("prepend_bos"):       # as Llama's and Gemma's tokenizers do; chat must not add it twice
        from tokenizers import Tokenizer, processors

        tok = Tokenizer.from_file(str(tokenizer_file))
        bos = spec["tokens"]["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
        tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "chat_template": (TEMPLATES / f"{family}.jinja").read_text(), **spec["tokens"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    stops = stop_ids if stop_ids is not None else [vocab[t] for t in spec["stops"]]
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": stops}))
    return model


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, chat_tokenizer_file):
    """family → (transformers tokenizer, transformers model, fp32 tinybert file), built once."""
    from tinybert_convert import convert
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            folder = tmp_path_factory.mktemp(f"chat-{family}")
            model = _write_folder(family, folder / "hf", chat_tokenizer_file)
            tokenizer = AutoTokenizer.from_pretrained(str(folder / "hf"))
            cache[family] = (tokenizer, model, convert(folder / "hf", folder / "model.safetensors", dtype="fp32"))
        return cache[family]

    return get


def _hf_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=True)
    return list(out["input_ids"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rendering_equals_apply_chat_template(family, chat_model):
    tokenizer, _, path = chat_model(family)
    gen = tinybert.Generator(path)
    assert json.loads(gen.metadata[fmt.KEY_CHAT_TEMPLATE]) == {
        "template": (TEMPLATES / f"{family}.jinja").read_text(), "special_tokens": FAMILIES[family]["tokens"]}
    checked = 0
    for name, messages in CONVERSATIONS.items():
        for add_generation_prompt in (True, False):
            try:
                ref = tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt)
            except Exception as exc:        # the template refuses this conversation: so must tinybert
                with pytest.raises(InputError, match="refused"):
                    gen.render_chat(messages, add_generation_prompt)
                assert family == "gemma3" and name == "ends-with-assistant" and add_generation_prompt, exc
                continue
            assert gen.render_chat(messages, add_generation_prompt) == ref, (family, name, add_generation_prompt)
            # tokenized as transformers tokenizes a chat: the template writes the special tokens, none are added
            assert gen._chat_ids(messages, add_generation_prompt).tolist() == \
                _hf_ids(tokenizer, messages, add_generation_prompt), (family, name)
            checked += 1
    assert checked >= 7


def _hf_reply(tokenizer, model, messages, max_new_tokens: int, eos: list[int] | None) -> list[int]:
    import torch

    ids = _hf_ids(tokenizer, messages, True)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", ["qwen2.5", "llama3.2", "gemma3"])
def test_chat_equals_transformers_greedy(family, chat_model):
    tokenizer, model, path = chat_model(family)
    gen = tinybert.Generator(path)
    for messages in (CONVERSATIONS["system-user"], CONVERSATIONS["multi-turn"]):
        eos = [tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family]["stops"]]
        ref = _hf_reply(tokenizer, model, messages, 24, eos)
        if ref and ref[-1] in eos:
            ref = ref[:-1]
        got = gen.chat(messages, max_new_tokens=24, return_ids=True)
        assert got["token_ids"] == ref
        assert got["text"] == tokenizer.decode(ref, skip_special_tokens=True)
        assert gen.chat(messages, max_new_tokens=24) == got["text"]
        assert "".join(gen.stream_chat(messages, max_new_tokens=24)) == got["text"]


@pytest.mark.parametrize("family", ["qwen3", "phi3"])
def test_chat_stops_on_every_eos_id(family, tmp_path, chat_tokenizer_file):
    """generation_config.json lists several EOS ids: chat stops at whichever comes first, as transformers does.
    The second id is a token this random model produces mid-reply, so the stop is certain to be exercised."""
    from tinybert_convert import convert
    from transformers import AutoTokenizer

    messages = CONVERSATIONS["system-user"]
    model = _write_folder(family, tmp_path / "probe", chat_tokenizer_file)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "probe"))
    free = _hf_reply(tokenizer, model, messages, 16, eos=[])
    k = next(i for i in range(4, 16) if free[i] not in free[:i])
    first = tokenizer.convert_tokens_to_ids(FAMILIES[family]["stops"][0])
    stops = [first, free[k]]
    _write_folder(family, tmp_path / "hf", chat_tokenizer_file, stop_ids=stops)
    gen = tinybert.Generator(convert(tmp_path / "hf", tmp_path / "model.safetensors", dtype="fp32"))
    assert gen.config.eos_token_ids == tuple(stops)
    ref = _hf_reply(tokenizer, model, messages, 16, eos=stops)
    assert ref[-1] == free[k] and len(ref) == k + 1
    got = gen.chat(messages, max_new_tokens=16, return_ids=True)
    assert got["token_ids"] == ref[:-1] and got["finish_reason"] == "eos"
    assert "".join(gen.stream_chat(messages, max_new_tokens=16)) == got["text"]


@pytest.mark.parametrize("messages, match", [
    ("hello", "must be a list"),
    ([], "is empty"),
    ({"role": "user", "content": "hi"}, "must be a list"),
    (["hi"], "message 0 must be a dict"),
    ([{"role": "user"}], "exactly the keys"),
    ([{"role": "user", "content": "hi", "name": "x"}], "exactly the keys"),
    ([{"role": "user", "content": None}], "content must be a string"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "content must be a string"),
    ([{"role": 3, "content": "hi"}], "role must be a non-empty string"),
    ([{"role": "", "content": "hi"}], "role must be a non-empty string"),
    ([{"role": "user", "content": "\ud800"}], "not valid Unicode"),
])
def test_bad_messages_are_input_errors(messages, match, chat_model):
    gen = tinybert.Generator(chat_model("smollm2")[2])
    with pytest.raises(InputError, match=match):
        gen.chat(messages)
    with pytest.raises(InputError, match=match):
        list(gen.stream_chat(messages))


def test_template_raise_exception_is_an_input_error(chat_model):
    gen = tinybert.Generator(chat_model("gemma3")[2])
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InputError, match="Conversation roles must alternate user/assistant"):
        gen.chat(twice)
    with pytest.raises(InputError, match="add_generation_prompt must be True or False"):
        gen.chat(CONVERSATIONS["user"], add_generation_prompt="yes")
    with pytest.raises(InputError, match="unknown setting"):
        gen.chat(CONVERSATIONS["user"], max_tokens=3)


def test_file_without_chat_template(decoder_model):
    """Files converted from a checkpoint without a template (and files written before chat templates were kept)
    load as before; chat on them says why it cannot work."""
    _, files = decoder_model("llama")
    gen = tinybert.Generator(files["fp32"])
    assert fmt.KEY_CHAT_TEMPLATE not in gen.metadata
    assert gen.generate("If no matching line exists", max_new_tokens=2)
    with pytest.raises(InputError, match="has no chat template"):
        gen.chat(CONVERSATIONS["user"])


def _folder_with(tmp_path: Path, chat_tokenizer_file: Path, **files: object) -> Path:
    folder = tmp_path / f"hf{len(list(tmp_path.glob('hf*')))}"
    build_hf_decoder("llama", folder, chat_tokenizer_file)
    for name, value in files.items():
        (folder / name.replace("__", ".")).write_text(value if isinstance(value, str) else json.dumps(value))
    return folder


def test_template_sources(tmp_path, chat_tokenizer_file):
    """chat_template.jinja over tokenizer_config.json; a list of named templates gives "default"; the legacy
    chat_template.json; special tokens from special_tokens_map.json in the legacy layout."""
    from tinybert_convert import convert

    from tinybert.loader import load

    def converted(**files):
        folder = _folder_with(tmp_path, chat_tokenizer_file, **files)
        out = convert(folder, tmp_path / "m.safetensors", dtype="fp32", force=True)
        return load(out).chat_template

    assert converted(chat_template__jinja="A{{ bos_token }}",
                     tokenizer_config__json={"chat_template": "B", "bos_token": "<s>"}) == \
        {"template": "A{{ bos_token }}", "special_tokens": {"bos_token": "<s>"}}
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert converted(tokenizer_config__json={"chat_template": named})["template"] == "D"
    assert converted(chat_template__json={"chat_template": "J"},
                     tokenizer_config__json={"eos_token": {"content": "<eos>", "__type": "AddedToken"}},
                     special_tokens_map__json={"eos_token": "<|im_end|>", "bos_token": "<bos>"}) == \
        {"template": "J", "special_tokens": {"eos_token": "<|im_end|>", "bos_token": "<bos>"}}
    assert converted(tokenizer_config__json={"chat_template": "K", "eos_token": "<eos>", "added_tokens_decoder": {}},
                     special_tokens_map__json={"eos_token": "<|im_end|>"})["special_tokens"] == {"eos_token": "<eos>"}
    with pytest.raises(ConversionError, match="none named 'default'"):
        converted(tokenizer_config__json={"chat_template": named[:1]})
    with pytest.raises(ConversionError, match="does not compile"):
        converted(tokenizer_config__json={"chat_template": "{% for %}"})


@pytest.mark.parametrize("value, match", [
    ("[]", "exactly the keys"),
    ('{"template": "x"}', "exactly the keys"),
    ('{"template": "", "special_tokens": {}}', "non-empty string"),
    ('{"template": 3, "special_tokens": {}}', "non-empty string"),
    ('{"template": "x", "special_tokens": {"additional": "y"}}', "keys are among"),
    ('{"template": "x", "special_tokens": {"bos_token": 1}}', "special token bos_token"),
    ('{"template": "x", "special_tokens": {"bos_token": "' + "y" * 2000 + '"}}', "at most 1024"),
    ('{"template": "\\ud800", "special_tokens": {}}', "not valid Unicode"),
    ("{", "not valid JSON"),
])
def test_loader_refuses_bad_chat_metadata(value, match, tmp_path, chat_model):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = chat_model("smollm2")[2]
    with safe_open(str(path), framework="numpy") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**metadata, fmt.KEY_CHAT_TEMPLATE: value})
    with pytest.raises(ModelFileError, match=match):
        tinybert.Generator(bad)


def test_template_that_does_not_compile_in_a_file(tmp_path, chat_model):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = chat_model("smollm2")[2]
    with safe_open(str(path), framework="numpy") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**metadata, fmt.KEY_CHAT_TEMPLATE: json.dumps(
        {"template": "{{ messages[0].__class__ }}{% if %}", "special_tokens": {}})})
    gen = tinybert.Generator(bad)       # opens: generate does not need the template
    with pytest.raises(ModelFileError, match="does not compile"):
        gen.chat(CONVERSATIONS["user"])


def test_sandbox_refuses_escapes(tmp_path, chat_model):
    """A hostile template cannot reach Python internals (the sandbox transformers uses) or run away."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = chat_model("smollm2")[2]
    with safe_open(str(path), framework="numpy") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    for template, match in (("{{ messages.__class__.__mro__ }}", "refused"),
                            ("{% set ns = namespace() %}{% set ns._x = 1 %}", "refused"),
                            ("{{ raise_exception.__globals__.os }}", "refused"),
                            ("{% for i in range(100000) %}{% for j in range(100000) %}" + "x" * 64
                             + "{% endfor %}{% endfor %}", "exceeds")):
        bad = tmp_path / "bad.safetensors"
        save_file(tensors, str(bad), metadata={**metadata, fmt.KEY_CHAT_TEMPLATE: json.dumps(
            {"template": template, "special_tokens": {}})})
        with pytest.raises(InputError, match=match):
            tinybert.Generator(bad).render_chat(CONVERSATIONS["user"])
