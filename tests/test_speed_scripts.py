"""The speed benchmarks run end to end on CPU with small settings (their numbers are not checked
here: a speed claim lives in the script's output, never in a timed test).

Run: pytest tests/test_speed_scripts.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpu_benchmark_runs_on_cpu_with_a_small_config():
    result = script(
        "gpu.py", "--small", "--device", "cpu", "--prompt", "16", "--gen", "32", "--block", "8", "--batch", "1",
        "--warmup", "1", "--iters", "1", "--prompts", "1", "--decode-gen", "32", "--hbm-gbs", "100", "--tflops", "1",
    )  # fmt: skip
    llada = result["families"]["LLaDA-8B"]
    assert [r["kind"] for r in llada["forwards"]] == ["no cache", "prefix", "dual"]
    assert all(r["ms"] > 0 and r["floor_ms"] > 0 for r in llada["forwards"])
    from dleval import decoders

    assert {r["decoder"] for r in llada["decoders"]} == set(decoders.names())  # every decoder ran
    assert all(r["forwards"] >= 1 for r in llada["decoders"])
    dream = result["families"]["Dream-7B"]  # logit-shifted, with custom attention: every decoder runs (wino too)
    assert {r["decoder"] for r in dream["decoders"] if "skipped" not in r} == set(decoders.names())


@pytest.mark.slow  # ~40 s: gpu.py's small configs in full and a two-rank torchrun
def test_device_check_runs_every_step_on_cpu(tmp_path):
    """benchmarks/device_check.sh, the one command a GPU machine runs, with its --cpu small configs:
    both steps run and leave their logs (the GPU itself is not here)."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu"], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.txt", "gpu.txt", "summary.json", "torchrun.txt"]
    gpu = json.loads((tmp_path / "gpu.txt").read_text().strip().splitlines()[-1])
    assert set(gpu["families"]) == {"LLaDA-8B", "Dream-7B"}
    assert "rank 1 of 2" in (tmp_path / "torchrun.txt").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples"] == summary["present"] == 64


@pytest.mark.slow  # ~30 s on a loaded 2-core machine
def test_overhead_benchmark_runs():
    result = script("overhead.py", "--problems", "2", "--repeats", "1", "--decoders", "fastdllm,llada")
    assert [r["decoder"] for r in result["rows"]] == ["fastdllm", "llada", "(floor)"]
    assert all(r["forwards"] >= 1 and r["cpu_forward_ms"] > 0 and r["replay_ms"] > 0 for r in result["rows"])
    floor, llada = result["rows"][2], result["rows"][1]
    assert floor["forwards"] == llada["forwards"]  # llada's shapes and forward count, no decoding


@pytest.mark.slow  # batching itself is checked in tests/test_batched.py
def test_throughput_benchmark_runs_and_batching_changes_nothing():
    result = script("throughput.py", "--limit", "4", "--batch", "4", "--decoders", "fastdllm")
    (row,) = result["rows"]
    assert row["same_completion"] == 1.0 and row["same_nfe"] == 1.0
    assert row["calls_per_sample_b"] < row["calls_per_sample_1"]


@pytest.mark.slow  # two lm-eval start-ups, ~30 s; the batching itself is checked in tests/test_lm_eval.py
def test_lm_eval_batch_benchmark_runs_and_batching_changes_nothing():
    pytest.importorskip("lm_eval", reason="the real lm-eval package is not installed")
    result = script("lm_eval_batch.py", "--limit", "4", "--batch", "2")
    assert [r["batch"] for r in result["runs"]] == [1, 2] and all(r["decode_s"] > 0 for r in result["runs"])
    assert result["same_completion"] == 1.0 and result["same_nfe"] == 1.0
