"""`dleval check`, the regression gate: passes on unchanged decoders, fails (exit 1, readable
table) when a decoder is broken, and regenerates its reference only on purpose.

Run: pytest tests/test_check.py
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from dleval import decoders, tasks
from dleval.cli import main
from dleval.decoders import llada
from dleval.gate import load_reference

ROOT = Path(__file__).resolve().parents[1]
GEN = tasks.load_task("synth_gsm").generation.gen_length  # the baseline's NFE: one token per forward
COMMITTED = ROOT / "results" / "reference" / "tiny_synth_gsm.json"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small pinned sweep (llada steps 12 and 6 on 8 samples), regenerated with --update."""
    path = tmp_path_factory.mktemp("reference") / "small.json"
    pinned = {
        "task": "synth_gsm",
        "limit": 8,
        "seed": 1234,
        "batch_size": 8,
        "sweeps": [{"decoder": "llada", "model": "tiny", "axes": {"steps": ["12", "6"]}}],
    }
    path.write_text(json.dumps(pinned))
    assert main(["check", "--reference", str(path), "--update"]) == 0
    return path


def test_update_pins_every_point_the_pool_y_max_and_the_model(reference):
    data = json.loads(reference.read_text())
    (sweep,) = [s for s in data["sweeps"] if s["decoder"] == "llada"]
    assert [p["settings"] for p in sweep["points"]] == [{"steps": "12"}, {"steps": "6"}]
    assert [p["nfe_mean"] for p in sweep["points"]] == [12.0, 6.0] and sweep["aup"] is not None
    models = {s["model"] for s in data["sweeps"]}  # dparallel and d3llm run on their students on a CPU
    assert {b["model"] for b in data["baselines"]} == models == set(data["fingerprints"]) >= {"tiny", "tiny-dparallel", "tiny-d3llm"}
    assert all(b["nfe_mean"] == GEN for b in data["baselines"])
    accuracies = [b["accuracy_pct"] for b in data["baselines"]] + [p["accuracy_pct"] for s in data["sweeps"] for p in s["points"]]
    assert data["y_max"] == pytest.approx(max(accuracies))
    assert data["tolerance"]["accuracy_pct"] == 25.0  # two samples of 8
    assert "--update" in data["regenerate"] and data["measured"]["gate_seconds"] > 0
    assert {s["decoder"] for s in data["sweeps"]} == set(decoders.names())  # every decoder, new ones at defaults


def test_check_passes_on_unchanged_decoders(reference, capsys):
    assert main(["check", "--reference", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "PASS: all" in out and "FAIL" not in out
    table = [line.split() for line in out.splitlines()]
    assert ["llada", "steps=12", "mean", "NFE", "12.00", "12.00", "+0.00", "±2%", "ok"] in table
    assert any(cells[:3] == ["llada", "curve", "AUP"] and cells[-1] == "ok" for cells in table)


def test_check_fails_with_a_readable_diff_when_a_decoder_ignores_its_setting(reference, monkeypatch, capsys):
    real = llada.decode

    def ignores_steps(model, prompts, cfg, *, on_step=None):
        return real(model, prompts, dataclasses.replace(cfg, steps=None), on_step=on_step)

    monkeypatch.setattr(llada, "decode", ignores_steps)
    assert main(["check", "--reference", str(reference)]) == 1
    out = capsys.readouterr().out
    assert "FAIL:" in out and "regenerate the reference on purpose" in out and "--update" in out
    assert f"llada steps=12 mean NFE: {GEN:.2f} vs reference 12.00 ({GEN - 12:+.2f}, tolerance ±2%)" in out
    assert f"llada steps=6 mean NFE: {GEN:.2f} vs reference 6.00 ({GEN - 6:+.2f}, tolerance ±2%)" in out
    table = [line for line in out.splitlines() if line.strip().startswith("llada")]
    assert any("steps=6" in line and "mean NFE" in line and "FAIL" in line for line in table)
    assert any("baseline" in line and "mean NFE" in line and line.rstrip().endswith("ok") for line in table)


def test_a_changed_model_or_a_missing_decoder_fails_and_says_why(reference, tmp_path, capsys):
    data = json.loads(reference.read_text())
    data["fingerprints"]["tiny"] = "0000000000000000"
    data["sweeps"].append({"decoder": "retired", "model": "tiny", "axes": {}, "points": [], "aup": 1.0})
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    assert main(["check", "--reference", str(stale)]) == 1
    out = capsys.readouterr().out
    assert "model fingerprint" in out and "differs from the reference's 0000000000000000" in out
    assert "retired" in out and "does not exist" in out
    data["sweeps"] = []
    stale.write_text(json.dumps(data))
    assert main(["check", "--reference", str(stale)]) == 1
    assert "decoder has no reference entry" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "does not exist"),
        ("{not json", "is not a dleval reference file"),
        ('{"task": "synth_gsm"}', "is not a dleval reference file"),
    ],
)
def test_a_bad_reference_file_is_one_sentence_and_exit_2(content, message, tmp_path, capsys):
    path = tmp_path / "ref.json"
    if content is not None:
        path.write_text(content)
    assert main(["check", "--reference", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_committed_reference_pins_every_decoder_and_every_point():
    ref = load_reference(COMMITTED)
    assert ref.task == "synth_gsm" and ref.y_max is not None and ref.fingerprints
    assert {s.decoder for s in ref.sweeps} == set(decoders.names()), f"regenerate: {ref.raw['regenerate']}"
    for sweep in ref.sweeps:
        grid = [dict(zip(sweep.axes, combo)) for combo in itertools.product(*sweep.axes.values())] or [{}]
        assert [p.settings for p in sweep.points] == grid and sweep.aup is not None
        assert sweep.model in ref.baselines and sweep.model in ref.fingerprints
    assert ref.raw["regenerate"] == f"python -m dleval check --reference {COMMITTED.relative_to(ROOT)} --update"
