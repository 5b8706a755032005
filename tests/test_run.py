"""End to end on the bundled tiny model: records, summary, config, resume after interruption.

Run: pytest tests/test_run.py
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from dleval import loop, resolve, results
from dleval.identity import sample_seed
from dleval.run import Interrupted, RunRequest, run
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
    real = loop._decode_batch
    calls = {"n": 0}

    def flaky(pipe, batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(pipe, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "_decode_batch", flaky)
    with pytest.raises(Interrupted) as stop:
        run(request(tmp_path, limit=12, batch_size=4), log=lambda m: None)
    first = stop.value.result
    assert len(first.records) == 4 and not first.complete
    monkeypatch.setattr(loop, "_decode_batch", real)
    seen = []
    monkeypatch.setattr(loop, "_decode_batch", lambda pipe, batch, *a, **k: seen.extend(s.id for s in batch) or real(pipe, batch, *a, **k))
    second = run(request(tmp_path, limit=12, batch_size=4, resume=True), log=lambda m: None)
    assert second.run_dir == first.run_dir and second.complete
    assert seen == [f"test/{i}" for i in range(4, 12)]  # only the unfinished ones
    assert [r.sample_id for r in results.read_records(second.run_dir / "samples.jsonl").records] == [f"test/{i}" for i in range(12)]


def test_torn_and_bad_lines_are_set_aside_not_a_reason_to_discard_the_shard(tmp_path, monkeypatch):
    real = loop._decode_batch
    calls = {"n": 0}

    def stop_at_third(pipe, batch, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(pipe, batch, *a, **k)

    monkeypatch.setattr(loop, "_decode_batch", stop_at_third)
    with pytest.raises(Interrupted) as stop:
        run(request(tmp_path, limit=4, batch_size=1), log=lambda m: None)
    monkeypatch.setattr(loop, "_decode_batch", real)
    shard = stop.value.result.run_dir / "samples.rank-0-of-1.jsonl"
    good = shard.read_text().splitlines()
    assert len(good) == 2
    shard.write_text(good[0] + "\nnot a record\n" + good[1] + '\n{"sample_id": "test/2", "conf')
    logs = []
    second = run(request(tmp_path, limit=4, batch_size=1, resume=True), log=logs.append)
    assert second.run_dir == stop.value.result.run_dir and second.complete
    assert [r.sample_id for r in results.read_records(second.run_dir / "samples.jsonl").records] == [f"test/{i}" for i in range(4)]
    assert any(f"{shard} line 2" in m for m in logs) and any(f"{shard} line 4" in m for m in logs)
    rejected = [json.loads(x) for x in (shard.parent / (shard.name + ".rejected")).read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 4] and rejected[0]["text"] == "not a record"
    assert rejected[1]["text"].startswith('{"sample_id": "test/2"')


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


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_smaller_limit_never_touches_a_finished_run(tmp_path):
    """Issue 11 item 1: a --limit 50 sweep next to the 500-sample run rewrote its config and summary."""
    first = run(request(tmp_path, limit=6, batch_size=6), log=lambda m: None)
    before = _files(first.run_dir)
    logs = []
    again = run(request(tmp_path, limit=4, batch_size=4, resume=True), log=logs.append)
    assert again.run_dir != first.run_dir and again.complete
    assert [r.sample_id for r in again.records] == [f"test/{i}" for i in range(4)]
    assert any("another sample set" in m for m in logs)
    assert _files(first.run_dir) == before
    same = run(request(tmp_path, limit=6, batch_size=2, resume=True), log=lambda m: None)  # nothing new: nothing rewritten
    assert same.run_dir == first.run_dir and _files(first.run_dir) == before


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """Two runs of one configuration whose clocks read the same second (it made the test above
    flaky): the second must not write into the first's folder."""
    import datetime as dt

    import dleval.run as run_mod

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 11, 26, 19, 6, 36, tzinfo=tz)

    monkeypatch.setattr(run_mod, "datetime", Frozen)
    first = run(request(tmp_path, limit=3, batch_size=3), log=lambda m: None)
    before = _files(first.run_dir)
    second = run(request(tmp_path, limit=2, batch_size=2), log=lambda m: None)
    assert first.run_dir.name.startswith("20261126-190636_") and second.run_dir.name.startswith("20261126-190636-2_")
    assert _files(first.run_dir) == before and second.summary.n == 2
    resumed = run(request(tmp_path, limit=2, batch_size=2, resume=True), log=lambda m: None)  # --resume still finds it
    assert resumed.run_dir == second.run_dir


def test_a_sweep_with_a_smaller_limit_and_a_failing_sweep_leave_a_finished_run_byte_identical(tmp_path):
    from dleval.sweep import SweepRequest, run_sweep

    first = run(request(tmp_path / "runs", decoder="dparallel", model="tiny-dparallel", limit=5, batch_size=1), log=lambda m: None)
    before = _files(first.run_dir)
    sweep = SweepRequest(
        decoder="dparallel", task="synth_gsm", axes={}, model="tiny-dparallel", limit=3, batch_size=1,
        runs_dir=tmp_path / "runs", sweeps_dir=tmp_path / "sweeps", progress=False,
    )  # fmt: skip
    result = run_sweep(sweep, log=lambda m: None)
    assert result.points[0].result.run_dir != first.run_dir and result.points[0].summary.n == 3
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError):  # an unwritable --sweeps-out fails before any run starts
        run_sweep(dataclasses.replace(sweep, limit=5, sweeps_dir=blocked / "sweeps"), log=lambda m: None)
    assert _files(first.run_dir) == before


def test_two_runs_cannot_write_one_shard(tmp_path, monkeypatch):
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_decode_batch", stop)
    with pytest.raises(Interrupted) as first:
        run(request(tmp_path, limit=2, batch_size=2), log=lambda m: None)
    monkeypatch.undo()
    with results.ShardWriter(first.value.result.run_dir, 0, 1):
        with pytest.raises(results.Busy, match="another running process"):
            run(request(tmp_path, limit=2, batch_size=2, resume=True), log=lambda m: None)


def test_sample_seeds_do_not_depend_on_resume_history(tmp_path):
    """Issue 11 item 3: at T > 0 growing a run changed answers; now a sample's noise is its own."""
    straight = run(request(tmp_path / "a", limit=6, batch_size=1, decoder_args={"temperature": "1.0"}), log=lambda m: None)
    run(request(tmp_path / "b", limit=2, batch_size=1, decoder_args={"temperature": "1.0"}), log=lambda m: None)
    grown = run(request(tmp_path / "b", limit=6, batch_size=1, decoder_args={"temperature": "1.0"}), log=lambda m: None)
    assert [r.raw for r in straight.records] == [r.raw for r in grown.records]
    assert sample_seed(1234, "test/0") != sample_seed(1234, "test/1")


def test_sample_seeds_do_not_depend_on_the_batch(tmp_path):
    one = run(request(tmp_path / "a", limit=8, batch_size=1, decoder_args={"temperature": "1.0"}), log=lambda m: None)
    eight = run(request(tmp_path / "b", limit=8, batch_size=8, decoder_args={"temperature": "1.0"}), log=lambda m: None)
    assert [r.raw for r in one.records] == [r.raw for r in eight.records]


def test_decoder_settings_errors_name_the_decoder():
    from dleval import decoders, tasks
    from dleval.errors import UserError

    spec = tasks.load_task("synth_gsm")
    with pytest.raises(UserError, match="decoder 'llada'"):
        resolve.decoder_config(decoders.load("llada"), spec.generation, {"block_length": "7"}, "llada")


def test_the_checkpoint_carries_its_decoder_settings(tmp_path):
    from dleval.cli import format_summary

    result = run(request(tmp_path, decoder="dparallel", model="tiny-dparallel", limit=3, batch_size=1), log=lambda m: None)
    assert result.config["decoder"]["config"]["threshold"] == 0.04
    assert result.config["decoder_sources"]["threshold"] == "checkpoint"
    assert "threshold=0.04" in format_summary(result) and "dleval.json" in format_summary(result)
    mine = run(
        request(tmp_path, decoder="dparallel", model="tiny-dparallel", limit=3, decoder_args={"threshold": "0.5"}), log=lambda m: None
    )
    assert mine.config["decoder"]["config"]["threshold"] == 0.5 and mine.config["decoder_sources"]["threshold"] == "-D"


def test_a_canvas_longer_than_the_model_is_one_sentence(tmp_path):
    from dleval.errors import UserError

    with pytest.raises(UserError, match="gen_length 600 does not fit model 'tiny', which has 512 positions"):
        run(request(tmp_path, limit=2, decoder_args={"gen_length": "600", "block_length": "600"}), log=lambda m: None)


def test_too_long_prompts_are_refused_or_recorded_and_the_toy_model_says_what_it_is(tmp_path, data_dir):
    from dleval.errors import UserError

    logs = []
    with pytest.raises(UserError, match=r"2 of 2 prompts plus the \d+-token canvas exceed the 512 positions of model 'tiny'"):
        run(request(tmp_path, task="gsm8k", limit=2, data_dir=data_dir), log=logs.append)
    assert any("trained only for synth_gsm" in m and "--model" in m for m in logs)
    result = run(request(tmp_path, task="gsm8k", limit=2, data_dir=data_dir, too_long="record"), log=lambda m: None)
    assert result.complete and all(r.finish == "error" and "too long" in r.error for r in result.records)


def _slow_code_scoring(monkeypatch, seconds, spans=None):
    """synth_gsm scored as a code task would be: through the pool, each verdict taking `seconds`
    (its (start, end) appended to `spans`)."""
    from dleval import tasks

    real_load, real_score = tasks.load_task, tasks.score

    def as_code(name, args=None):
        spec = real_load(name, args)
        return dataclasses.replace(spec, scoring=dataclasses.replace(spec.scoring, scorer="code"))

    def slow(spec, sample, completion):
        t0 = time.perf_counter()
        time.sleep(seconds)
        score = real_score(dataclasses.replace(spec, scoring=dataclasses.replace(spec.scoring, scorer="gsm8k")), sample, completion)
        if spans is not None:
            spans.append((t0, time.perf_counter()))
        return score

    monkeypatch.setattr(tasks, "load_task", as_code)
    monkeypatch.setattr(tasks, "score", slow)


def test_code_scoring_runs_while_the_next_batch_decodes(tmp_path, monkeypatch):
    straight = run(request(tmp_path / "a", limit=8, batch_size=2), log=lambda m: None)
    scoring, decoding = [], []
    _slow_code_scoring(monkeypatch, 0.5, scoring)
    real = loop._decode_batch

    def timed(pipe, batch, *a, **k):
        t0 = time.perf_counter()
        out = real(pipe, batch, *a, **k)
        decoding.append((t0, time.perf_counter()))
        return out

    monkeypatch.setattr(loop, "_decode_batch", timed)
    result = run(request(tmp_path / "b", limit=8, batch_size=2), log=lambda m: None)
    assert [(r.sample_id, r.raw, r.correct) for r in result.records] == [(r.sample_id, r.raw, r.correct) for r in straight.records]
    assert len(scoring) == 8 and len(decoding) == 4
    overlapping = [d for d in decoding[1:] if any(s0 < d[1] and d[0] < s1 for s0, s1 in scoring)]
    assert overlapping  # a batch decoded while earlier samples were being scored


def test_ctrl_c_scores_and_keeps_what_was_decoded(tmp_path, monkeypatch):
    _slow_code_scoring(monkeypatch, 0.3)
    real = loop._decode_batch
    calls = {"n": 0}

    def stop_at_third(pipe, batch, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(pipe, batch, *a, **k)

    monkeypatch.setattr(loop, "_decode_batch", stop_at_third)
    with pytest.raises(Interrupted) as stop:
        run(request(tmp_path, limit=8, batch_size=2), log=lambda m: None)
    kept = results.read_records(stop.value.result.run_dir / "samples.jsonl").records
    assert [r.sample_id for r in kept] == [f"test/{i}" for i in range(4)]  # both decoded batches, scored after Ctrl-C
