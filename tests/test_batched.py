"""Batched threshold decoding (issue 14): a batch gives every row its batch-1 tokens, commits and
NFE, on the bundled tiny model where rows finish their blocks at different forwards, and finished
rows leave the forward (fewer model calls than one prompt at a time).

Run: pytest tests/test_batched.py
"""

from __future__ import annotations

import pytest

from dleval import decoders, prompts, tasks
from dleval.models.base import Counted

OWN_TESTS = {"llada", "d3llm", "learn2pd"}  # llada: a fixed quota, tested in test_decoders; the other two below, on their own models
BATCHED = [n for n in decoders.names() if decoders.info(n).batched and n not in OWN_TESTS]
SETTINGS = [
    {"cache": "none"},
    {"cache": "prefix"},
    {"cache": "dual"},
    {"cache": "prefix", "skip_idle_forward": True},
    {"cache": "dual", "refresh_every": 2},
]


def synth_gsm(tokenizer, n=8):
    spec = tasks.load_task("synth_gsm")
    return [prompts.render(s, spec.prompt, tokenizer).ids for s in tasks.load_samples(spec)[:n]]


@pytest.fixture(scope="module")
def problems(bundled):
    return synth_gsm(bundled.tokenizer)


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
    check_batch_equals_batch_one(bundled.model, problems, module, module.Config(gen_length=48, block_length=16, **setting))


def check_batch_equals_batch_one(model, problems, module, cfg, varied=True):
    counted = Counted(model)
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
    if varied:
        assert len({tuple(g.committed_per_step) for g in alone}) > 1  # rows really do progress differently here


@pytest.fixture(scope="module")
def d3llm_model():
    from dleval import models

    return models.load(decoders.load("d3llm").CPU_MODEL, device="cpu")


D3LLM = [  # threshold 0.02: 3-9 forwards per row (the tiny student's default takes 2-5)
    {"cache": "none", "threshold": 0.02},
    {"cache": "delayed"},  # refresh every 3 forwards, blocks cached 2 forwards after they finish
    {"cache": "delayed", "threshold": 0.02, "cache_delay_iter": 1, "refresh_interval": 4},  # 15 calls in 9 steps: rows in several groups
    {"cache": "delayed", "cache_delay_iter": 0, "refresh_interval": 2},
    {"cache": "delayed", "early_stop": False, "refresh_interval": 10000},
]


@pytest.mark.parametrize("setting", D3LLM, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_d3llm_batch_equals_batch_one(d3llm_model, setting):
    """d3LLM's per-row pipelines (blocks opening at different forwards, per-row delayed caches,
    EOS fills) give every row its batch-1 tokens, commits and NFE; rows of different cache
    states run in separate calls of one step."""
    module = decoders.load("d3llm")
    cfg = module.Config(gen_length=64, block_length=16, **setting)
    check_batch_equals_batch_one(d3llm_model.model, synth_gsm(d3llm_model.tokenizer), module, cfg)


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize(
    "setting",
    [{"cache": "delayed"}, {"cache": "delayed", "cache_delay_iter": 0, "refresh_interval": 2}],
    ids=["delayed", "delay0-refresh2"],
)
def test_d3llm_delayed_cache_with_padding(arch, setting):
    """Prompts of 1-9 tokens (left padding) on a random model, where rows keep blocks open for
    long: per-row delayed caches of different lengths, at T = 0 and with seeded noise at T > 0."""
    from conftest import random_dream, random_llada
    from test_decoders import EIGHT

    model = {"llada": random_llada, "dream": random_dream}[arch]()
    module = decoders.load("d3llm")
    # (the random Dream model, under the Dream rule H < tau, commits one token per forward in every row: padding is the point here)
    check_batch_equals_batch_one(model, EIGHT, module, module.Config(gen_length=32, block_length=8, **setting), varied=arch == "llada")
    cfg = module.Config(gen_length=32, block_length=8, temperature=0.9, **setting)
    seeds = [100 + i for i in range(len(EIGHT))]
    together = module.decode(model, EIGHT, cfg, seeds=seeds)
    assert together == [module.decode(model, [p], cfg, seeds=[s])[0] for p, s in zip(EIGHT, seeds)]


@pytest.mark.parametrize(
    "setting",
    [{"gen_length": 120}, {"gen_length": 80, "eotp": False}, {"gen_length": 80, "steps": 40}],
    ids=["eotp", "no-eotp", "quota2"],
)
def test_learn2pd_batch_equals_batch_one(bundled, problems, setting):
    """Learn2PD on the bundled model and its filter (block 40): rows at different blocks share a
    forward while their canvases have the same width (EoTP cuts each at its own length; rows of
    other widths run in their own call), with 4-17 forwards per row."""
    module = decoders.load("learn2pd")
    check_batch_equals_batch_one(bundled.model, problems, module, module.Config(block_length=40, **setting))
