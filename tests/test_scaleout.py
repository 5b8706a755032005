"""Real launches on CPU: torchrun (gloo-free: no collective is used), a SLURM step emulated by its
variables, kill -9 of one rank and a resume under another world size, SIGTERM, concurrent resumes.

Every multi-process result is compared with a one-process run of the same samples: same
completions, same NFE, every sample once. Run: pytest tests/test_scaleout.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from dleval import results
from dleval.run import RunRequest, run

ARGS = ["--decoder", "llada", "--task", "synth_gsm", "--model", "tiny", "--batch-size", "1", "--no-progress"]
LIMIT = 8


def env(**extra: str) -> dict[str, str]:
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    out.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return out


def torchrun(n: int, *args: str, **kw) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "dleval", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run the sharded runs must equal (T = 0, batch 1)."""
    out = tmp_path_factory.mktemp("one")
    result = run(
        RunRequest(decoder="llada", task="synth_gsm", model="tiny", limit=LIMIT, batch_size=1, out_dir=out, progress=False),
        log=lambda m: None,
    )
    return {r.sample_id: (r.completion, r.raw, r.nfe, r.committed_per_step) for r in result.records}


def the_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def every_shard_record(run_dir: Path) -> Counter:
    return Counter(r.sample_id for p in results.shards(run_dir) for r in results._parse(p)[0])


def same_as_reference(run_dir: Path, reference) -> None:
    merged = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in merged] == [f"test/{i}" for i in range(LIMIT)]
    assert {r["sample_id"]: (r["completion"], r["raw"], r["nfe"], tuple(r["committed_per_step"])) for r in merged} == reference
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["present"] == LIMIT


def test_torchrun_two_processes_equal_one_process(tmp_path, reference):
    proc = subprocess.run(
        torchrun(2, "run", *ARGS, "--limit", str(LIMIT), "--out", str(tmp_path)), env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = the_run(tmp_path)
    same_as_reference(run_dir, reference)
    merged = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {(r["sample_id"], r["rank"], r["world_size"]) for r in merged} == {(f"test/{i}", i % 2, 2) for i in range(LIMIT)}
    assert len({r["invocation"] for r in merged}) == 1 and all(r["device"] == "cpu" for r in merged)
    assert sorted(p.name for p in results.shards(run_dir)) == ["samples.rank-0-of-2.jsonl", "samples.rank-1-of-2.jsonl"]
    assert every_shard_record(run_dir) == Counter({f"test/{i}": 1 for i in range(LIMIT)})
    assert "accuracy" in proc.stdout and "on cpu x2" in proc.stdout  # rank 0 prints the merged summary once


def _pid_of_rank(mark: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"DLEVAL_TEST_MARK={mark}".encode() in environ and f"RANK={rank}".encode() in environ and b"LOCAL_RANK" in b"".join(environ):
            return int(proc.name)
    return None


def test_kill_9_of_one_rank_then_resume_under_three_processes(tmp_path, reference):
    mark = uuid.uuid4().hex
    launch = subprocess.Popen(
        torchrun(2, "run", *ARGS, "--limit", str(LIMIT), "--out", str(tmp_path)), env=env(DLEVAL_TEST_MARK=mark),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    killed = None
    while time.monotonic() < deadline and launch.poll() is None:
        shard = next(tmp_path.glob("*/samples.rank-1-of-2.jsonl"), None)
        if shard is not None and len(shard.read_bytes().splitlines()) >= 1:
            killed = _pid_of_rank(mark, 1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    launch.communicate(timeout=120)
    assert killed is not None, "rank 1 never started writing"
    run_dir = the_run(tmp_path)
    before = every_shard_record(run_dir)
    assert 0 < sum(before.values()) < LIMIT and max(before.values()) == 1
    again = subprocess.run(
        torchrun(3, "run", *ARGS, "--limit", str(LIMIT), "--out", str(tmp_path), "--resume"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert the_run(tmp_path) == run_dir
    after = every_shard_record(run_dir)
    assert after == Counter({f"test/{i}": 1 for i in range(LIMIT)})  # none lost, none decoded twice
    same_as_reference(run_dir, reference)
    new = {r.sample_id for p in results.shards(run_dir) if p.name.endswith("-of-3.jsonl") for r in results._parse(p)[0]}
    assert new == set(after) - set(before)


def test_a_slurm_step_is_two_ranks(tmp_path, reference):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dleval", "run", *ARGS, "--limit", str(LIMIT), "--out", str(tmp_path)],
            env=env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r), SLURM_JOB_ID="4242", SLURM_STEP_ID="0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    run_dir = the_run(tmp_path)
    assert run_dir.name.startswith("slurm-4242.0_")
    same_as_reference(run_dir, reference)
    assert {json.loads(x)["invocation"] for x in (run_dir / "samples.jsonl").read_text().splitlines()} == {"slurm-4242.0"}


def test_a_sweep_under_torchrun_shards_every_point(tmp_path):
    proc = subprocess.run(
        torchrun(2, "sweep", "--decoder", "dparallel", "--task", "synth_gsm", "-D", "threshold=0.5", "--limit", "4", "--batch-size", "1",
                 "--no-progress", "--out", str(tmp_path / "runs"), "--sweeps-out", str(tmp_path / "sweeps")),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "sweeps").glob("*/sweep.json"))
    record = json.loads(sweep.read_text())
    assert record["complete"] and record["world_size"] == 2 and len(record["points"]) == 1 and record["baseline"]
    for point in [*record["points"], record["baseline"]]:
        assert point["complete"] and point["merged"]
        run_dir = (sweep.parent / point["run_dir"]).resolve()
        ranks = {json.loads(x)["rank"] for x in (run_dir / "samples.jsonl").read_text().splitlines()}
        assert ranks == {0, 1}  # no rank ran a point alone
    assert "AUP" in proc.stdout


def test_sigterm_leaves_a_summary_of_exactly_the_records_present(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dleval", "run", *ARGS, "--limit", "40", "--out", str(tmp_path)], env=env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        shard = next(tmp_path.glob("*/samples.rank-0-of-1.jsonl"), None)
        if shard is not None and len(shard.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    run_dir = the_run(tmp_path)
    kept = (run_dir / "samples.jsonl").read_text().splitlines()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 2 <= len(kept) < 40 and summary["present"] == summary["summary"]["n"] == len(kept) and not summary["complete"]
    assert "interrupted" in err and "Traceback" not in err


def test_two_concurrent_resumes_write_no_duplicate(tmp_path):
    first = subprocess.run(
        [sys.executable, "-m", "dleval", "run", *ARGS, "--limit", "6", "--out", str(tmp_path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0
    run_dir = the_run(tmp_path)
    for p in [*results.shards(run_dir), run_dir / "samples.jsonl", run_dir / "summary.json"]:
        p.write_text("\n".join(p.read_text().splitlines()[:2]) + "\n" if p.suffix == ".jsonl" else "{}")  # a run stopped after 2
    (run_dir / "summary.json").unlink()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dleval", "run", *ARGS, "--limit", "6", "--out", str(tmp_path), "--resume"],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 2]), outs
    if codes == [0, 2]:
        assert any("being written by another running process" in e for _, e in outs)
    assert every_shard_record(run_dir) == Counter({f"test/{i}": 1 for i in range(6)})
    assert len((run_dir / "samples.jsonl").read_text().splitlines()) == 6
