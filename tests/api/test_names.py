"""Models by name (tinybert/api/resolve.py): a tinybert file, a Hugging Face folder, or a Hub id found in a
Hugging Face cache laid out on disk as huggingface_hub lays it out (``models--org--name/blobs``,
``snapshots/<commit>/`` of symlinks, ``refs/main``), loaded under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinybert
from tinybert.errors import InputError, ModelFileError

REPO = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"   # any 40-hex commit: the cache layout is what counts
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["A man is eating food.", "Zoë lives in São Paulo.", "The option can also be used to compare files"]


def hf_cache(home: Path, folder: Path, repo: str = REPO, commit: str = COMMIT) -> Path:
    """``folder``'s files as huggingface_hub caches a snapshot of ``repo`` at ``commit`` under HF_HOME=``home``."""
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            data = path.read_bytes()
            blob = base / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / path.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def child_env(env: dict) -> dict:
    paths = [str(ROOT), str(ROOT / ".alias")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, **env, PYTHONPATH=os.pathsep.join(paths))


def run_python(code: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(env), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory, minilm_dir):
    home = tmp_path_factory.mktemp("hf-home")
    hf_cache(home, minilm_dir)
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TINYBERT_CACHE": str(tmp_path_factory.mktemp("tb-cache"))}


def test_hub_id_offline_from_the_hugging_face_cache(offline_env, minilm_files):
    # A new process with only the Hugging Face cache and HF_HUB_OFFLINE=1: the id converts once to int8 (the
    # default) and gives exactly the embeddings of the file converted from the package's own folder; a second
    # process uses the cache entry without converting; "@commit" names the same entry.
    code = f"""
import json, sys, numpy as np, tinybert
texts = {TEXTS!r}
by_id = tinybert.Encoder(sys.argv[1]).encode(texts)
ref = tinybert.Encoder({str(minilm_files["int8"])!r}).encode(texts)
print(json.dumps({{"equal": bool(np.array_equal(by_id, ref)), "shape": list(by_id.shape)}}))
"""
    first = run_python(code, offline_env, REPO)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1]) == {"equal": True, "shape": [3, 384]}
    assert "converting" in first.stderr and "downloading" not in first.stderr
    entries = list((Path(offline_env["TINYBERT_CACHE"]) / "models").glob("*.safetensors"))
    assert len(entries) == 1 and COMMIT in entries[0].name and ".int8." in entries[0].name
    again = run_python(code, offline_env, f"{REPO}@{COMMIT}")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["equal"] and "converting" not in again.stderr
    assert list((Path(offline_env["TINYBERT_CACHE"]) / "models").glob("*.safetensors")) == entries


def test_unknown_id_or_revision_offline_is_a_clear_error(offline_env):
    code = """
import tinybert
for name, kw in (("nosuch-org/nosuch-model", {}), ("REPO", {"revision": "0" * 40}), ("REPO@v9", {})):
    try:
        tinybert.Encoder(name, **kw)
    except tinybert.ModelFileError as err:
        print("ModelFileError:", err)
""".replace("REPO", REPO)
    out = run_python(code, offline_env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("ModelFileError:")]
    assert len(lines) == 3 and all("not in the Hugging Face cache" in line for line in lines), out.stdout


def test_hugging_face_folder_converts_once_and_a_damaged_entry_is_rebuilt(minilm_dir, minilm_files, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("TINYBERT_CACHE", str(tmp_path))
    ref = tinybert.Encoder(minilm_files["fp32"]).encode(TEXTS)
    enc = tinybert.Encoder(minilm_dir, dtype="fp32")
    np.testing.assert_array_equal(enc.encode(TEXTS), ref)
    (entry,) = (tmp_path / "models").glob("*.safetensors")
    assert enc.path == entry and enc.quantization == "fp32"
    stamp = entry.stat().st_mtime_ns
    assert tinybert.Encoder(minilm_dir, dtype="fp32").path == entry and entry.stat().st_mtime_ns == stamp
    entry.write_bytes(entry.read_bytes()[:1000])             # a cut-off entry
    rebuilt = tinybert.Encoder(minilm_dir, dtype="fp32")
    assert rebuilt.path == entry and entry.stat().st_size > 1000
    np.testing.assert_array_equal(rebuilt.encode(TEXTS), ref)


def test_two_processes_converting_one_folder_make_one_file(minilm_dir, tmp_path):
    env = {"TINYBERT_CACHE": str(tmp_path)}
    code = f"import tinybert; print(tinybert.Encoder({str(minilm_dir)!r}, dtype='fp32').path)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=child_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    assert len({out.strip() for out, _, _ in results}) == 1
    assert sum("converting" in err for _, err, _ in results) == 1      # the other waited for it
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 1


def test_name_errors(tmp_path, minilm_files):
    with pytest.raises(ModelFileError, match="no such model file"):
        tinybert.Encoder(tmp_path / "nosuch.safetensors")
    with pytest.raises(ModelFileError, match="without config.json"):
        tinybert.Encoder(tmp_path)
    with pytest.raises(InputError, match="dtype"):
        tinybert.Encoder(minilm_files["int8"], dtype="int2")
    with pytest.raises(ModelFileError, match="revision"):
        tinybert.Encoder(f"{REPO}@main", revision="v2")


@pytest.mark.parametrize("ready,before", [(False, False), (True, False), (False, True)])
def test_first_use_says_the_kernels_will_compile(ready, before, minilm_files, monkeypatch, caplog):
    # When neither warmup() nor an earlier model of the kind compiled the kernels, opening a model says once per
    # process, on stderr through the "tinybert" logger, that the first calls compile (a silent first call of
    # tens of seconds looks hung); otherwise nothing.
    import logging

    from tinybert.api import warmup

    tinybert.Encoder(minilm_files["fp32"]).encode(["compile"])
    assert warmup._compiled_before("encoder")         # an encoder has run: Numba's disk cache has its kernels
    # The command line silences the notice for its own call only: the API after it still says it.
    from tinybert import cli

    assert cli.main(["info", str(minilm_files["fp32"])]) == 0
    monkeypatch.setattr(warmup, "_told", False)
    monkeypatch.setattr(warmup, "kernels_ready", lambda: ready)
    monkeypatch.setattr(warmup, "_compiled_before", lambda kind: before)
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        tinybert.Encoder(minilm_files["int8"])
        tinybert.Encoder(minilm_files["fp32"])
    said = [r.getMessage() for r in caplog.records if r.name == "tinybert"]
    assert said == ([] if ready or before else [warmup.COMPILE_NOTICE])


def test_generator_and_translator_take_folders(decoder_model, seq2seq_model, tmp_path, monkeypatch):
    # The same names for every class: a decoder's and an encoder-decoder's Hugging Face folder, converted into the
    # cache (int8 by default), give the outputs of the files converted from those folders.
    monkeypatch.setenv("TINYBERT_CACHE", str(tmp_path))
    _, files = decoder_model("gpt2")
    by_folder = tinybert.Generator(files["int8"].parent / "hf")
    assert by_folder.quantization == "int8" and by_folder.path.parent == tmp_path / "models"
    prompt = [[5, 6, 7, 8]]
    assert (by_folder.generate_ids(prompt, max_new_tokens=8)[0]["token_ids"]
            == tinybert.Generator(files["int8"]).generate_ids(prompt, max_new_tokens=8)[0]["token_ids"])
    # dtype="int4" reaches the converter through the cache like the others (its own entry)
    int4 = tinybert.Generator(files["int8"].parent / "hf", dtype="int4")
    assert int4.quantization == "int4" and int4.path.parent == tmp_path / "models" and int4.path != by_folder.path
    assert len(int4.generate_ids(prompt, max_new_tokens=8)[0]["token_ids"]) == 8
    _, files = seq2seq_model("t5-v1.1")
    by_folder = tinybert.Translator(files["fp32"].parent / "hf", dtype="fp32")
    source = [[5, 6, 7, 8, 9]]
    assert (by_folder.translate_ids(source, max_length=8)[0]["token_ids"]
            == tinybert.Translator(files["fp32"]).translate_ids(source, max_length=8)[0]["token_ids"])


def test_cli_takes_hub_ids(offline_env, minilm_files, tmp_path):
    # The same names on the command line, offline: `embed` by id gives the file's vectors, `info` describes the
    # id's converted file, `convert` reads the id's snapshot.
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tinybert", *args], env=child_env(offline_env),
                              capture_output=True, text=True, timeout=600)

    by_id, by_file = cli("embed", REPO, TEXTS[1]), cli("embed", str(minilm_files["int8"]), TEXTS[1])
    assert by_id.returncode == 0 and by_file.returncode == 0, by_id.stderr + by_file.stderr
    assert by_id.stdout == by_file.stdout and by_id.stdout.count("\n") == 1
    info = cli("info", REPO, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["quantization"] == "int8"
    out = tmp_path / "minilm.fp32.safetensors"
    done = cli("convert", REPO, str(out), "--dtype", "fp32", "--quiet")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(tinybert.Encoder(out).encode(TEXTS),
                                  tinybert.Encoder(minilm_files["fp32"]).encode(TEXTS))
