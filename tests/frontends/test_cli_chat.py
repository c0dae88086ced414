"""`tinybert chat` as a real subprocess fed through a pipe, against transformers on the same weights: each reply
equals transformers' greedy ``generate`` on ``apply_chat_template`` of the conversation so far."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EOT, build_hf_decoder

pytestmark = pytest.mark.usefixtures("quiet_torch")

TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "chat_templates" / "smollm2.jinja"


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory, bpe_tokenizer_file):
    """(transformers tokenizer, transformers model, fp32 tinybert file) of a random Llama with SmolLM2's template."""
    from tinybert_convert import convert
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("cli-chat")
    model = build_hf_decoder("llama", folder / "hf", bpe_tokenizer_file)
    (folder / "hf" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": TEMPLATE.read_text(), "eos_token": EOT}))
    eot = json.loads(bpe_tokenizer_file.read_text())["model"]["vocab"][EOT]
    (folder / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": [eot]}))
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "hf"))
    return tokenizer, model, convert(folder / "hf", folder / "model.safetensors", dtype="fp32")


def _reference(tokenizer, model, messages: list[dict], new: int) -> str:
    import torch

    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    ids = list(ids["input_ids"])
    eos = tokenizer.convert_tokens_to_ids(EOT)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=new, do_sample=False, eos_token_id=eos,
                             pad_token_id=0)[0, len(ids):].tolist()
    if out and out[-1] == eos:
        out = out[:-1]
    return tokenizer.decode(out, skip_special_tokens=True)


def _run(*args: object, stdin: str = "") -> subprocess.CompletedProcess:
    # bytes, decoded here: text mode would turn a "\r" of a random model's reply into "\n"
    proc = subprocess.run([sys.executable, "-m", "tinybert", "chat", *map(str, args)], input=stdin.encode(),
                          capture_output=True, env=dict(os.environ), timeout=600)
    proc.stdout, proc.stderr = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    return proc


def test_cli_chat_pipe_keeps_history(chat_files):
    tokenizer, model, path = chat_files
    system = "You answer briefly."
    turns = ["The option can also be used to compare files", "If no matching line exists"]
    proc = _run(path, "--system", system, "--max-new-tokens", 12, stdin="\n".join([turns[0], "", turns[1], "/exit",
                                                                                   "never read"]) + "\n")
    assert proc.returncode == 0, proc.stderr
    history = [{"role": "system", "content": system}]
    expected = []
    for turn in turns:
        history.append({"role": "user", "content": turn})
        reply = _reference(tokenizer, model, history, 12)
        history.append({"role": "assistant", "content": reply})
        expected.append(reply)
    assert proc.stdout == "".join(r + "\n" for r in expected)
    assert "> " not in proc.stdout + proc.stderr        # no prompt when stdin is not a terminal


def test_cli_chat_prompt_answers_once(chat_files):
    tokenizer, model, path = chat_files
    proc = _run(path, "--prompt", "Where is the café? 😀", "--max-new-tokens", 10, stdin="ignored\n")
    assert proc.returncode == 0, proc.stderr
    messages = [{"role": "user", "content": "Where is the café? 😀"}]
    assert proc.stdout == _reference(tokenizer, model, messages, 10) + "\n"
    proc = _run(path, "--prompt", "hi", "--temperature", "-1")
    assert proc.returncode == 2 and "temperature" in proc.stderr
    proc = _run(path, "--top-p", "2", stdin="hello\n")        # before any turn, not as a failed turn
    assert proc.returncode == 2 and "top_p" in proc.stderr and proc.stdout == ""


def test_cli_chat_without_template(decoder_model):
    _, files = decoder_model("llama")
    proc = _run(files["fp32"], "--prompt", "hi")
    assert proc.returncode == 2 and "has no chat template" in proc.stderr and "tinybert generate" in proc.stderr


def test_cli_info_shows_the_template(chat_files, decoder_model):
    def info(path, *extra):
        proc = subprocess.run([sys.executable, "-m", "tinybert", "info", str(path), *extra], capture_output=True,
                              env=dict(os.environ), timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode("utf-8")

    assert "tinybert generate, tinybert chat" in info(chat_files[2])
    assert json.loads(info(chat_files[2], "--json"))["chat_template"] == {
        "template": TEMPLATE.read_text(), "special_tokens": {"eos_token": EOT}}
    plain = decoder_model("llama")[1]["fp32"]
    assert "no template" in info(plain) and "chat_template" not in json.loads(info(plain, "--json"))
