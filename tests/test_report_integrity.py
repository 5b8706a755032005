"""The report's own integrity checks (issue 11): the board ranks complete entries only, ratios
across invocations or devices are flagged, a curve's points must share one sample set.

Run folders are written in the run loop's format by `tests.test_report.write_run`.
Run: pytest tests/test_report_integrity.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dleval import report
from dleval.cli import main
from dleval.types import Record
from tests.test_report import write_run


def restamp(folder: Path, *, invocation: str = "", device: str = "", loadavg: list[float] | None = None) -> Path:
    """Give a written run's Records an invocation and device (and its config the load it ran under)."""
    path = folder / "samples.jsonl"
    records = [Record.from_json(line) for line in path.read_text().splitlines()]
    fields = {"invocation": invocation, "device": device}
    path.write_text("".join(Record(**{**r.__dict__, **fields}).to_json() + "\n" for r in records))
    if loadavg is not None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["conditions"] = {"host": "h", "cpu_count": 2, "loadavg": loadavg, "torch_threads": 1}
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_entries_missing_a_task_are_shown_missing_and_never_ranked(tmp_path, capsys):
    for task in ("t1", "t2"):
        write_run(tmp_path, f"{task}-base", decoder="llada", task=task, nfe=24)
        write_run(tmp_path, f"{task}-fast", task=task, nfe=6, correct=(1, 0, 0, 0))
    write_run(tmp_path, "t2-zero", decoder="zero", task="t2", nfe=1, correct=(0, 0, 0, 0))  # one task, 0 %
    built = report.build([tmp_path])
    assert [e.decoder for e in built.board][-1] == "zero"
    zero = next(e for e in built.board if e.decoder == "zero")
    assert zero.rank is None and zero.missing == ("t1",) and zero.mean_aup is None
    assert [e.rank for e in built.board if e.decoder != "zero"] == [1, 2]  # the complete entries, ranked
    assert any("not ranked" in n and "zero (no t1)" in n for n in built.notes)
    report.write(built, tmp_path / "out")
    with (tmp_path / "out" / "board.csv").open() as f:
        rows = {r["decoder"]: r for r in csv.DictReader(f)}
    assert rows["zero"]["rank"] == "" and rows["zero"]["missing_tasks"] == "t1" and rows["fast"]["missing_tasks"] == ""
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'class="missing"' in html and ">missing</td>" in html and "incomplete" in html
    # An explicit task list: over t2 alone every entry is complete and ranked.
    only_t2 = report.build([tmp_path], mean_tasks=["t2"])
    assert all(e.rank is not None and not e.missing for e in only_t2.board)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "cli")]) == 0
    assert "missing: t1 (not ranked)" in capsys.readouterr().out


def test_ratios_across_invocations_or_devices_are_flagged(tmp_path):
    restamp(write_run(tmp_path, "base", decoder="llada", nfe=24), invocation="a", device="cpu", loadavg=[0.5, 0.5, 0.5])
    restamp(write_run(tmp_path, "same", params={"threshold": 0.9}, nfe=8), invocation="a", device="cpu")
    restamp(write_run(tmp_path, "later", params={"threshold": 0.7}, nfe=6), invocation="b", device="cpu", loadavg=[3.25, 2, 1])
    restamp(write_run(tmp_path, "gpu", params={"threshold": 0.5}, nfe=4), invocation="a", device="NVIDIA H100")
    write_run(tmp_path, "old", params={"threshold": 0.3}, nfe=3)  # Records from before invocation ids
    built = report.build([tmp_path])
    flags = {r.run_id: r.speedup_flag for r in built.rows}
    assert flags["same"] == "" and flags["base"] == ""
    assert flags["later"] == "different invocations"
    assert flags["gpu"] == "different devices: NVIDIA H100 vs cpu"
    assert flags["old"] == "unknown: runs written before invocation ids"
    assert any("(different invocations): later / base (load 3.25 vs 0.5)" in n for n in built.notes)
    assert any("different devices" in n and "gpu / base" in n for n in built.notes)


def test_a_curve_whose_points_cover_different_samples_says_so(tmp_path):
    write_run(tmp_path, "base", decoder="llada", nfe=24)
    write_run(tmp_path, "fast-a", params={"threshold": 0.9}, nfe=8)
    write_run(tmp_path, "fast-b", params={"threshold": 0.5}, nfe=4, correct=(1, 1))  # 2 of the 4 samples
    built = report.build([tmp_path])
    assert any("do not share one sample set (4 samples in all; fewer in fast-b (2))" in n for n in built.notes)
    same = tmp_path / "same"
    write_run(same, "base", decoder="llada", nfe=24)
    write_run(same, "fast-a", params={"threshold": 0.9}, nfe=8)
    assert not any("sample set" in n for n in report.build([same]).notes)
