"""`dleval sweep --retime-baseline` and the report's side-by-side speedups (issues 10 and 11).

A second sweep invocation adds a point next to a baseline finished by the first; with
--retime-baseline the baseline is decoded again in a new run folder under `<--out>/timing/`
(config.json: `timing_rerun_of`), the first run's files stay byte-identical, and the report
divides the new point's latency by the re-timing while it flags ratios across invocations.
Invocations are told apart with --run-id, as two separate commands would be.

Run: pytest tests/test_retime.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dleval import report
from dleval.cli import main

SWEEP = "sweep --decoder fastdllm --task synth_gsm --limit 4 --batch-size 2 --no-progress".split()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_invocations(tmp_path_factory):
    root = tmp_path_factory.mktemp("retime")
    out = ["--out", str(root / "runs"), "--sweeps-out", str(root / "sweeps")]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*SWEEP, "-D", "threshold=0.9", *out, "--run-id", "first"]) == 0
        (base_dir,) = [p for p in (root / "runs").iterdir() if "_llada_" in p.name]
        before = _files(base_dir)
        assert main([*SWEEP, "-D", "threshold=0.9,0.5", *out, "--run-id", "second", "--retime-baseline"]) == 0
    finally:
        torch.set_num_threads(previous)
    return root, base_dir, before


def test_the_baseline_is_re_timed_in_a_new_folder_and_the_old_one_is_untouched(two_invocations, capsys):
    root, base_dir, before = two_invocations
    assert _files(base_dir) == before  # never rewritten
    (timing,) = (root / "runs" / "timing").iterdir()
    cfg = json.loads((timing / "config.json").read_text())
    assert cfg["timing_rerun_of"] == base_dir.name and cfg["invocation"] == "second"
    assert cfg["config_hash"] == json.loads((base_dir / "config.json").read_text())["config_hash"]  # the same configuration
    (sweep_dir,) = [p for p in (root / "sweeps").iterdir() if json.loads((p / "sweep.json").read_text())["invocation"] == "second"]
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert (sweep_dir / record["baseline"]["timing_run_dir"]).resolve() == timing.resolve()
    assert (sweep_dir / record["baseline"]["run_dir"]).resolve() == base_dir.resolve()


def test_the_report_divides_by_the_side_by_side_baseline_and_flags_the_rest(two_invocations, tmp_path):
    root, base_dir, _ = two_invocations
    (timing,) = (root / "runs" / "timing").iterdir()
    built = report.build([root / "runs"])  # finds the timing folder one level down
    rows = {json.loads(r.decoder_params).get("threshold"): r for r in built.rows if r.decoder == "fastdllm"}
    assert rows[0.5].speedup_baseline == timing.name and rows[0.5].speedup_flag == ""  # both timed in "second"
    assert rows[0.9].speedup_baseline == base_dir.name and rows[0.9].speedup_flag == ""  # both timed in "first"
    assert all(r.run_id != timing.name for r in built.rows)  # a re-timing is never a row of its own
    assert any("re-times" in n and base_dir.name in n for n in built.notes)
    # Without the re-timing, the new point's ratio crosses invocations: flagged in the csv and the notes.
    plain = report.build([p for p in (root / "runs").iterdir() if p.name != "timing"])
    row = next(r for r in plain.rows if r.decoder == "fastdllm" and json.loads(r.decoder_params)["threshold"] == 0.5)
    assert row.speedup_baseline == base_dir.name and row.speedup_flag == "different invocations"
    assert any("not measured side by side (different invocations)" in n and row.run_id in n for n in plain.notes)
    report.write(plain, tmp_path)
    with (tmp_path / "leaderboard.csv").open() as f:
        flags = {r["run_id"]: r["speedup_flag"] for r in csv.DictReader(f)}
    assert flags[row.run_id] == "different invocations"
    assert "not side by side: different invocations" in (tmp_path / "report.html").read_text()


def test_nothing_is_re_timed_when_nothing_was_timed_now(two_invocations, capsys):
    root, _, _ = two_invocations
    out = ["--out", str(root / "runs"), "--sweeps-out", str(root / "sweeps")]
    before = sorted(p.name for p in (root / "runs" / "timing").iterdir())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*SWEEP, "-D", "threshold=0.9,0.5", *out, "--run-id", "third", "--retime-baseline"]) == 0
    finally:
        torch.set_num_threads(previous)
    assert sorted(p.name for p in (root / "runs" / "timing").iterdir()) == before
    captured = capsys.readouterr()
    assert "every point was resumed" in captured.err
    assert "*" in captured.out and "different invocations" in captured.out  # the table marks the crossed ratios
