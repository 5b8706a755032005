"""The run folder format (dleval.results) and launcher ranks (dleval.ranks), without a model.

Run: pytest tests/test_results.py
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from dleval import results
from dleval.cli import main
from dleval.errors import UserError
from dleval.ranks import Ranks, detect
from dleval.types import Record


def rec(sid: str, rank: int = 0, world: int = 1, nfe: int = 4, invocation: str = "inv") -> Record:
    return Record(
        sample_id=sid, config_hash="h", completion=sid, raw=sid, answer="", correct=1.0, metrics={}, nfe=nfe, rows_forwarded=nfe,
        gen_tokens=8, answer_tokens=4, prompt_tokens=10, seconds=0.1, committed_per_step=(2,) * nfe, finish="eos", batch_size=1,
        rank=rank, world_size=world, device="cpu", invocation=invocation,
    )  # fmt: skip


def make_run(tmp_path, ids, shards):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"run_id": "run", "config_hash": "h", "sample_ids": ids, "task": {"name": "t", "scoring": {"primary": "acc"}}}
    assert results.write_json_once(run_dir / results.CONFIG, config)
    for (rank, world), records in shards.items():
        with results.ShardWriter(run_dir, rank, world) as w:
            for r in records:
                w.write(r)
    return run_dir


def test_config_is_written_once_even_by_racing_writers(tmp_path):
    path = tmp_path / "config.json"
    wins = []
    threads = [threading.Thread(target=lambda i=i: wins.append(results.write_json_once(path, {"writer": i}))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    first = json.loads(path.read_text())["writer"]
    assert not results.write_json_once(path, {"writer": 99}) and json.loads(path.read_text())["writer"] == first
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_a_shard_lock_dies_with_its_process(tmp_path):
    shard = tmp_path / results.shard_name(0, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from dleval import results
            with results.locked(Path({str(shard)!r}), "shard"):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(results.Busy, match="being written by another running process"):
        with results.ShardWriter(tmp_path, 0, 1):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with results.ShardWriter(tmp_path, 0, 1) as w:  # kill -9 left nothing stuck
        w.write(rec("a"))
    assert results.read_records(shard).records == [rec("a")]


def test_bad_lines_are_skipped_with_file_and_line_and_repair_keeps_every_good_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(rec("a").to_json() + "\n{broken\n" + rec("b").to_json() + "\n" + rec("a").to_json() + '\n{"sample_id": "c"')
    read = results.read_records(path)
    assert [r.sample_id for r in read.records] == ["a", "b"] and read.duplicates == 1 and read.bad_lines == 2
    assert any(f"{path} line 2: skipped" in n for n in read.notes)
    assert any(f"{path} line 5: skipped (torn last line" in n for n in read.notes)
    assert any("1 duplicate" in n for n in read.notes)
    notes = results.repair(path)
    assert len(notes) == 2 and "rejected" in notes[0]
    assert [r.sample_id for r in results.read_records(path).records] == ["a", "b"]
    assert len(path.read_text().splitlines()) == 3  # the duplicate is a reader's business, not deleted
    kept = [json.loads(x) for x in (tmp_path / "samples.jsonl.rejected").read_text().splitlines()]
    assert [k["line"] for k in kept] == [2, 5] and kept[1]["text"] == '{"sample_id": "c"'


def test_old_records_without_placement_fields_still_load():
    old = json.loads(rec("a").to_json())
    for key in ("rank", "world_size", "device", "invocation"):
        del old[key]
    r = Record.from_json(json.dumps(old))
    assert (r.rank, r.world_size, r.device, r.invocation) == (0, 1, "", "")


def test_merge_joins_shards_of_any_world_size_in_sample_order(tmp_path):
    ids = [f"s{i}" for i in range(5)]
    run_dir = make_run(
        tmp_path, ids, {(0, 2): [rec("s0", 0, 2), rec("s2", 0, 2)], (1, 2): [rec("s1", 1, 2)], (2, 3): [rec("s3", 2, 3), rec("s4", 2, 3)]}
    )
    merged = results.merge(run_dir)
    assert merged.complete and merged.written and [r.sample_id for r in merged.records] == ids
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["present"] == 5 and summary["complete"] and summary["summary"]["nfe_mean"] == 4
    assert summary["devices"][0]["device"] == "cpu" and summary["devices"][0]["processes"] == 3
    assert set(summary["conditions"]) >= {"host", "cpu_count", "loadavg"}
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert not results.merge(run_dir).written  # nothing new: nothing rewritten
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_dleval_merge_names_missing_ids_and_drops_duplicates(tmp_path, capsys):
    ids = [f"s{i}" for i in range(6)]
    run_dir = make_run(tmp_path, ids, {(0, 3): [rec("s0"), rec("s3")], (2, 3): [rec("s2"), rec("s5"), rec("s2")]})  # rank 1 lost
    assert main(["merge", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "missing 2 of 6 samples (s1, s4)" in err and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())  # still written, for exactly what is there
    assert summary["present"] == 4 and not summary["complete"] and summary["missing"] == ["s1", "s4"]
    with results.ShardWriter(run_dir, 1, 3) as w:
        w.write(rec("s1"))
        w.write(rec("s4"))
    assert main(["merge", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "6 of 6 samples, 1 duplicate(s) dropped" in out and "duplicate" in err
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    assert [Record.from_json(x).sample_id for x in lines] == ids


def test_dleval_merge_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["merge", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_ranks_from_torchrun_slurm_or_nothing():
    assert detect({}).world_size == 1 and not detect({}).named
    t = detect({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "abc"})
    assert t == Ranks(1, 4, 1, "torchrun", "abc", True)
    s = detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"})
    assert s == Ranks(5, 8, 1, "slurm", "slurm-77.0", True)
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "77"}).world_size == 1  # a batch script, not a step
    with pytest.raises(UserError, match="--run-id"):
        detect({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"})
    assert detect({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}, run_id="mine").invocation == "mine"
    with pytest.raises(UserError, match="impossible"):
        detect({"RANK": "3", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})
