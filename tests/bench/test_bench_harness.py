"""bench/harness.py's pure pieces: medians over rounds, best-peer ratios, result names, the JSON header.
No engine runs here (and no timing is asserted)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench.harness as harness


def test_combine_takes_medians_keeps_rounds_and_the_largest_rss():
    runs = [{"load_s": 1.0, "peak_rss_mb": 100.0, "shapes": {"1x16": {"ms": 3.0}}, "ids": [1, 2], "name": "a"},
            {"load_s": 5.0, "peak_rss_mb": 300.0, "shapes": {"1x16": {"ms": 1.0}}, "ids": [3], "name": "b"},
            {"load_s": 2.0, "peak_rss_mb": 200.0, "shapes": {"1x16": {"ms": 2.0}}, "ids": [4], "name": "c"}]
    out = harness.combine(runs)
    assert out["load_s"] == 2.0 and out["shapes"]["1x16"]["ms"] == 2.0
    assert out["peak_rss_mb"] == 300.0
    assert out["ids"] == [1, 2] and out["name"] == "a"  # non-numbers come from the first round
    assert [r["shapes"]["1x16"]["ms"] for r in out["rounds"]] == [3.0, 1.0, 2.0]
    assert "ids" not in out["rounds"][0] and "name" not in out["rounds"][0]


def test_combine_reports_a_failed_round():
    out = harness.combine([{"load_s": 1.0}, {"error": "boom"}])
    assert out["error"] == "boom" and out["rounds_completed"] == 1


def test_interleave_alternates_the_order_and_skips_failed_engines(capsys):
    calls = []

    def run(engine, r):
        calls.append((engine, r))
        return {"error": "x"} if engine == "b" else {"v": r}
    out = harness.interleave(["a", "b", "c"], 3, run)
    assert calls == [("a", 0), ("b", 0), ("c", 0), ("c", 1), ("a", 1), ("a", 2), ("c", 2)]
    assert len(out["a"]) == 3 and len(out["b"]) == 1


def test_best_peer_same_precision_speed_and_time():
    speeds = {"tinybert-int8": 300.0, "onnxruntime-int8": 200.0, "ctranslate2-int8": 150.0,
              "onnxruntime-fp32": 900.0, "tinybert-fp32": 100.0, "tinybert/avx512vnni-int8": 999.0}
    assert harness.best_peer(speeds, "tinybert-int8") == ("onnxruntime-int8", 1.5)
    assert harness.best_peer(speeds, "tinybert-int8", exclude=["onnxruntime-int8"]) == ("ctranslate2-int8", 2.0)
    times = {"tinybert-int8": 2.0, "onnxruntime-int8": 3.0, "ctranslate2-int8": 4.0}
    assert harness.best_peer(times, "tinybert-int8", higher=False) == ("onnxruntime-int8", 1.5)
    assert harness.best_peer({"tinybert-fp32": 1.0, "onnxruntime-int8": 2.0}, "tinybert-fp32") is None
    assert harness.best_peer({"tinybert-int8": 1.0, "onnxruntime-int8": float("nan")}, "tinybert-int8") is None


def test_engine_names():
    assert harness.kind_precision("tinybert/avx512vnni-int8") == ("tinybert/avx512vnni", "int8")
    assert harness.is_tinybert("tinybert/avx512vnni-int8") and harness.is_tinybert("tinybert-fp32")
    assert not harness.is_tinybert("torch-int8")


def test_cpu_slug_and_result_names(tmp_path, monkeypatch):
    assert harness.cpu_slug("AMD EPYC 9R14 96-Core Processor") == "amd-epyc-9r14"
    assert harness.cpu_slug("Intel(R) Xeon(R) Platinum 8581C CPU @ 2.30GHz") == "intel-xeon-platinum-8581c"
    assert harness.cpu_slug("") == "unknown-cpu"
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    monkeypatch.setattr(harness, "SCRATCH", tmp_path / "scratch")
    first = harness.results_path("encoder", "AMD EPYC", date="2026-12-06")
    assert first == tmp_path / "encoder-2026-12-06-amd-epyc.json"
    first.write_text("{}")
    assert harness.results_path("encoder", "AMD EPYC", date="2026-12-06").name == "encoder-2026-12-06-amd-epyc-2.json"
    assert harness.results_path("translate", "AMD EPYC", quick=True, date="2026-12-06").name == \
        "translate-quick-2026-12-06-amd-epyc.json"
    assert harness.results_path("heads", "AMD EPYC", smoke=True, date="2026-12-06").parent == tmp_path / "scratch"


def test_table_aligns_columns():
    text = harness.table(["engine", "ms"], [["tinybert-int8", "1.0"], ["ort", "10.25"]])
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    assert lines[1].startswith("tinybert-int8") and lines[2].endswith("10.25")


def test_machine_and_versions_describe_the_host():
    m = harness.machine()
    assert m["cpu"] and m["cpus"] >= 1 and set(harness.ISA_FLAGS) == set(m["isa"])
    v = harness.versions()
    assert v["python"] and v["numpy"]
    json.dumps({"machine": m, "versions": v})  # both go into the results as they are


def test_session_writes_header_and_body(tmp_path, monkeypatch, capsys):
    import argparse

    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    monkeypatch.setattr(harness, "SCRATCH", tmp_path / "scratch")
    args = argparse.Namespace(threads=2, rounds=1, smoke=True, quick=False, out=None, worker=None)
    session = harness.Session("encoder", args)
    out = session.write({"models": {"minilm": {"tinybert-int8": {"ms": 1.0}}}})
    report = json.loads(out.read_text())
    assert out.parent == tmp_path / "scratch" and report["bench"] == "encoder"
    assert report["smoke"] is True and report["quick"] is True  # --smoke implies --quick
    for key in ("command", "started", "finished", "machine", "versions", "threads", "rounds", "options"):
        assert key in report
    assert report["models"]["minilm"]["tinybert-int8"]["ms"] == 1.0


def test_results_are_standard_json(tmp_path, monkeypatch, capsys):
    import argparse

    monkeypatch.setattr(harness, "SCRATCH", tmp_path)
    args = argparse.Namespace(threads=2, rounds=1, smoke=True, out=None, worker=None)
    out = harness.Session("generate", args).write({"x": float("nan"), "y": [float("inf"), 1.5]})
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the results"))
    assert report["x"] is None and report["y"] == [None, 1.5]
