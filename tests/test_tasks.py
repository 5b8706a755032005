"""Task specs: loading, -T overrides, strict keys; synth_gsm determinism and held-out seeds.

Run: pytest tests/test_tasks.py
"""

from __future__ import annotations

import dataclasses

import pytest

from dleval import tasks
from dleval.errors import UserError
from dleval.scorers import exact_match
from dleval.tasks import synth_gsm


def test_every_spec_loads():
    for name in tasks.list_tasks():
        spec = tasks.load_task(name)
        assert spec.description and spec.source and spec.loader


def test_overrides_route_to_sections_and_params():
    spec = tasks.load_task("synth_gsm", {"style": "raw", "size": "7", "stop": "####,Q:"})
    assert spec.prompt.style == "raw"
    assert spec.params.size == 7
    assert spec.prompt.stop == ("####", "Q:")
    assert len(tasks.load_samples(spec)) == 7


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"sise": "3"}, "did you mean 'size'"),
        ({"size": "many"}, "not a valid int"),
        ({"style": "fancy"}, "style must be one of"),
        ({"primary": "boxed"}, "not among filters"),
    ],
)
def test_bad_overrides_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        tasks.load_task("synth_gsm", overrides)


def test_unknown_task_suggests():
    with pytest.raises(UserError, match="did you mean 'synth_gsm'"):
        tasks.load_task("synth_gms")


def test_spec_rejects_unknown_keys():
    raw = {"description": "d", "source": "s", "loader": "synth_gsm", "promt": {}}
    with pytest.raises(UserError, match="did you mean 'prompt'"):
        tasks.build_spec("x", raw, {})


def test_synth_gsm_is_deterministic_and_chained():
    a = synth_gsm.problem("test", 3)
    assert a == synth_gsm.problem("test", 3)
    value = int(a.question.split("shows ")[1].split(".")[0])
    ops = a.question.split("Turns: ")[1].split(".")[0].split(", ")
    assert set(ops) <= {"+1", "-1", "flip"}
    for op in ops:
        value = (10 - value) % 10 if op == "flip" else (value + int(op)) % 10
    assert a.value == value and a.answer.endswith(f"#### {value}")
    assert exact_match(str(a.value), a.answer)


def test_evaluation_problems_are_a_reserved_partition():
    for i in range(300):
        p = synth_gsm.problem("test", i)
        start = int(p.question.split("shows ")[1].split(".")[0])
        ops = p.question.split("Turns: ")[1].split(".")[0].split(", ")
        assert synth_gsm.heldout(start, ops)
        q = synth_gsm.problem("train", i)
        start = int(q.question.split("shows ")[1].split(".")[0])
        ops = q.question.split("Turns: ")[1].split(".")[0].split(", ")
        assert not synth_gsm.heldout(start, ops)


def test_test_stream_never_reuses_training_seeds():
    train = {synth_gsm.split_seed("train", i) for i in range(200_000)}
    assert not any(synth_gsm.split_seed("test", i) in train for i in range(5_000))
    train_q = {synth_gsm.problem("train", i).question for i in range(20_000)}
    assert not any(synth_gsm.problem("test", i).question in train_q for i in range(500))


def test_synth_gsm_scores_with_gsm8k_filters():
    spec = tasks.load_task("synth_gsm")
    sample = tasks.load_samples(spec)[0]
    good = tasks.score(spec, sample, sample.target)
    assert good.correct == 1.0 and good.metrics == {"strict-match": 1.0, "flexible-extract": 1.0}
    bad = tasks.score(spec, sample, "no idea")
    assert bad.correct == 0.0 and bad.answer == "[invalid]"


def test_spec_fields_are_unique_across_sections():
    seen: dict[str, str] = {}
    for section, cls in tasks.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in seen, f"{f.name} in both {seen.get(f.name)} and {section}"
            seen[f.name] = section


def test_synth_gsm_turns_are_a_task_parameter():
    spec = tasks.load_task("synth_gsm", {"turns": "flip", "steps": "3"})
    p = synth_gsm.problem("test", 0, spec.params)
    start = int(p.question.split("shows ")[1].split(".")[0])
    assert "Turns: flip, flip, flip." in p.question and p.value == (10 - start) % 10
