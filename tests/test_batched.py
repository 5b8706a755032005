"""Batched threshold decoding (issue 14): a batch gives every row its batch-1 tokens, commits and
NFE, on the bundled tiny model where rows finish their blocks at different forwards, and finished
rows leave the forward (fewer model calls than one prompt at a time).

Run: pytest tests/test_batched.py
"""

from __future__ import annotations

import pytest

from dleval import decoders, prompts, tasks
from dleval.models.base import Counted

BATCHED = [n for n in decoders.names() if decoders.info(n).batched and n != "llada"]  # llada: a fixed quota, tested in test_decoders
SETTINGS = [
    {"cache": "none"},
    {"cache": "prefix"},
    {"cache": "dual"},
    {"cache": "prefix", "skip_idle_forward": True},
    {"cache": "dual", "refresh_every": 2},
]


@pytest.fixture(scope="module")
def problems(bundled):
    spec = tasks.load_task("synth_gsm")
    samples = tasks.load_samples(spec)[:8]
    return [prompts.render(s, spec.prompt, bundled.tokenizer).ids for s in samples]


def cases():
    for name in BATCHED:
        fields = set(decoders.load(name).Config.__dataclass_fields__)
        for setting in SETTINGS:
            if set(setting) <= fields:
                yield pytest.param(name, setting, id=f"{name}-" + "-".join(f"{k}={v}" for k, v in setting.items()))
        if "answer_prefix" in fields:  # Prophet: an answer window inside the canvas, so rows exit at different forwards
            exits = {"answer_prefix": "30:####", "answer_length": 3, "early_threshold": 40.0, "mid_threshold": 30.0, "late_threshold": 13.0}
            yield pytest.param(name, exits, id=name)  # thresholds where the tiny model's rows exit at 33, 41 or 48 forwards


@pytest.mark.parametrize("name,setting", list(cases()))
def test_batch_equals_batch_one(bundled, problems, name, setting):
    module = decoders.load(name)
    cfg = module.Config(gen_length=48, block_length=16, **setting)
    counted = Counted(bundled.model)
    together = module.decode(counted, problems, cfg)
    per_row, calls = counted.row_nfe(len(problems)), counted.nfe
    alone, nfe = [], []
    for p in problems:
        counted.reset()
        alone.append(module.decode(counted, [p], cfg)[0])
        nfe.append(counted.nfe)
    assert together == alone  # tokens, commits per forward and finish, row by row
    assert per_row == nfe  # NFE per sample is its batch-1 NFE
    assert calls < sum(nfe)  # rows share forwards
    assert len({tuple(g.committed_per_step) for g in alone}) > 1  # rows really do progress differently here
