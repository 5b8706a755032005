"""End to end on the bundled tiny model: records, summary, config, resume after interruption.

Run: pytest tests/test_run.py
"""

from __future__ import annotations

import json

import pytest

from dleval import run as run_mod
from dleval.run import Interrupted, RunRequest, read_records, run
from dleval.types import Record


def request(tmp_path, **kw):
    base = dict(decoder="llada", task="synth_gsm", model="tiny", limit=20, batch_size=8, out_dir=tmp_path, progress=False)
    base.update(kw)
    return RunRequest(**base)


def test_end_to_end_twenty_samples(tmp_path):
    result = run(request(tmp_path), log=lambda m: None)
    assert result.complete and result.summary.n == 20
    lines = (result.run_dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 20
    rec = Record.from_json(lines[0])
    assert rec.nfe == 40 and rec.gen_tokens == 40 and rec.committed_per_step == (1,) * 40
    assert rec.batch_size == 8 and rec.warmup and not Record.from_json(lines[-1]).warmup
    assert 0 < rec.answer_tokens <= 40
    config = json.loads((result.run_dir / "config.json").read_text())
    for key in ("format_version", "config_hash", "decoder", "task", "model", "prompt", "seed", "environment", "dataset_hash"):
        assert key in config
    assert config["decoder"]["config"]["gen_length"] == 40  # the task's hint
    assert config["prompt"]["style"] == "chat" and len(config["prompt"]["template_hash"]) == 16
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["summary"]["nfe_mean"] == 40 and summary["complete"]
    assert summary["summary"]["accuracy"] == pytest.approx(100 * sum(Record.from_json(x).correct for x in lines) / 20)


def test_interrupted_run_resumes_without_redoing_finished_samples(tmp_path, monkeypatch):
    real = run_mod._decode_batch
    calls = {"n": 0}

    def flaky(batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(run_mod, "_decode_batch", flaky)
    with pytest.raises(Interrupted) as stop:
        run(request(tmp_path, limit=12, batch_size=4), log=lambda m: None)
    first = stop.value.result
    assert len(first.records) == 4 and not first.complete
    monkeypatch.setattr(run_mod, "_decode_batch", real)
    seen = []
    monkeypatch.setattr(run_mod, "_decode_batch", lambda batch, *a, **k: seen.extend(s.id for s in batch) or real(batch, *a, **k))
    second = run(request(tmp_path, limit=12, batch_size=4, resume=True), log=lambda m: None)
    assert second.run_dir == first.run_dir and second.complete
    assert seen == [f"test/{i}" for i in range(4, 12)]  # only the unfinished ones
    assert [r.sample_id for r in read_records(second.run_dir / "samples.jsonl")] == [f"test/{i}" for i in range(12)]


def test_torn_last_line_is_trimmed_on_resume(tmp_path):
    first = run(request(tmp_path, limit=3, batch_size=3), log=lambda m: None)
    path = first.run_dir / "samples.jsonl"
    path.write_text(path.read_text() + '{"sample_id": "test/3", "conf')
    second = run(request(tmp_path, limit=4, batch_size=3, resume=True), log=lambda m: None)
    assert second.complete and len(read_records(path)) == 4


def test_a_failing_sample_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from dleval import tasks

    real = tasks.score

    def score(spec, sample, completion):
        if sample.id == "test/1":
            raise RuntimeError("scorer exploded")
        return real(spec, sample, completion)

    monkeypatch.setattr(tasks, "score", score)
    result = run(request(tmp_path, limit=3, batch_size=3), log=lambda m: None)
    errors = [r for r in result.records if r.error]
    assert [r.sample_id for r in errors] == ["test/1"] and "scorer exploded" in errors[0].error
    assert errors[0].raw  # the generation is kept
    assert result.summary.errors == 1 and result.summary.n == 3


def test_batch_size_does_not_change_results(tmp_path):
    a = run(request(tmp_path / "a", limit=6, batch_size=6), log=lambda m: None)
    b = run(request(tmp_path / "b", limit=6, batch_size=1), log=lambda m: None)
    assert [r.raw for r in a.records] == [r.raw for r in b.records]


def test_resume_with_a_smaller_limit_uses_only_its_samples(tmp_path):
    first = run(request(tmp_path, limit=6, batch_size=6), log=lambda m: None)
    again = run(request(tmp_path, limit=4, batch_size=4, resume=True), log=lambda m: None)
    assert again.run_dir == first.run_dir and again.complete
    assert [r.sample_id for r in again.records] == [f"test/{i}" for i in range(4)]
