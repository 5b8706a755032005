"""Conformance: every decoder module in dleval/decoders/ obeys the decoder contract.

New decoder files join automatically, and each runs on both native architectures: LLaDA and
the logit-shifted Dream. Run: pytest tests/test_decoders.py
"""

from __future__ import annotations

import dataclasses

import pytest

from dleval import decoders
from dleval.models.base import Counted
from dleval.types import Step
from tests.conftest import random_dream, random_llada

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44], [6, 6, 6, 6, 6, 6, 21]]


def small_config(name: str, files=None, **extra):
    """A small config; `files` is a folder of model-side files (e.g. a Learn2PD filter) for decoders with a `filter` field."""
    module = decoders.load(name)
    fields = {f.name for f in dataclasses.fields(module.Config)}
    values = {k: v for k, v in {"gen_length": 16, "block_length": 8, "filter": str(files)}.items() if k in fields}
    values.update(extra)
    return module, module.Config(**values)


@pytest.fixture(params=decoders.names())
def decoder(request):
    return request.param


ARCHS = {"llada": random_llada, "dream": random_dream}


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    return request.param


def run(module, cfg, prompts, model=None, arch="llada"):
    model = model or ARCHS[arch]()
    if arch != "llada" and hasattr(module, "check"):
        try:
            module.check(model, cfg)
        except ValueError as exc:  # a decoder that declares it cannot run on this architecture (WINO on Dream)
            pytest.skip(str(exc))
    counted = Counted(model)
    steps: list[Step] = []
    gens = module.decode(counted, prompts, cfg, on_step=steps.append)
    return gens, counted, steps


def test_output_is_complete_and_counted(decoder, model_files, arch):
    module, cfg = small_config(decoder, model_files)
    prompts = PROMPTS if getattr(module, "BATCHED", False) else PROMPTS[:1]
    gens, counted, steps = run(module, cfg, prompts, arch=arch)
    assert len(gens) == len(prompts)
    for g in gens:
        assert 0 < len(g.tokens) <= cfg.gen_length
        assert 1 not in g.tokens  # no mask left
        assert len(g.committed_per_step) == counted.nfe >= 1  # one entry per forward
        # Progress on every forward. A decoder that cuts the canvas (Learn2PD's end-of-text
        # prediction) counts only the commits that survive the cut, which can leave a forward with 0;
        # so does the reference's idle cached forward after a block done by its first forward, and a
        # decoder that declares IDLE_FORWARDS (dInfer's unrolled groups, Dream's fixed schedule) spends forwards that commit nothing.
        idle_ok = (getattr(cfg, "cache", "none") != "none" and not getattr(cfg, "skip_idle_forward", True)) or getattr(
            module, "IDLE_FORWARDS", False
        )
        assert all(n >= 1 for n in g.committed_per_step) or ((len(g.tokens) < cfg.gen_length or idle_ok) and min(g.committed_per_step) >= 0)
        # Net commits fill the canvas: revoked commits (WINO) were made again later.
        assert sum(g.committed_per_step) - g.revoked == len(g.tokens)
        assert 0 <= g.rewritten <= g.revoked
    assert len(steps) == counted.nfe  # on_step sees every forward


def test_deterministic_at_temperature_zero(decoder, model_files, arch):
    module, cfg = small_config(decoder, model_files)
    a, na, _ = run(module, cfg, PROMPTS[:1], arch=arch)
    b, nb, _ = run(module, cfg, PROMPTS[:1], arch=arch)
    assert a == b and na.nfe == nb.nfe


def test_batch_equals_one_by_one(decoder, model_files, arch):
    module, cfg = small_config(decoder, model_files)
    if not getattr(module, "BATCHED", False):
        pytest.skip(f"{decoder} decodes one prompt at a time")
    together, _, _ = run(module, cfg, PROMPTS, arch=arch)
    alone = [run(module, cfg, [p], arch=arch)[0][0] for p in PROMPTS]
    assert together == alone


def test_module_contract(decoder):
    module = decoders.load(decoder)
    assert module.__doc__ and module.__doc__.strip(), "a decoder opens with a docstring"
    assert dataclasses.is_dataclass(module.Config) and module.Config.__dataclass_params__.frozen
    assert callable(module.decode)
    info = decoders.info(decoder)
    assert info.summary
