"""Conformance: every decoder module in dleval/decoders/ obeys the decoder contract.

New decoder files join automatically, and each runs on both native architectures: LLaDA and
the logit-shifted Dream. Run: pytest tests/test_decoders.py
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from dleval import decoders
from dleval.models.base import Counted
from dleval.types import Step
from tests.conftest import random_dream, random_llada

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44], [6, 6, 6, 6, 6, 6, 21]]
EIGHT = [*PROMPTS, [40, 41], [7] * 9, [3, 33, 13, 31], [50], [12, 24, 36, 48, 60, 11]]  # varied lengths: varied padding


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


def run(module, cfg, prompts, model=None, seeds=None, arch="llada"):
    model = model or ARCHS[arch]()
    if arch != "llada" and hasattr(module, "check"):
        try:
            module.check(model, cfg)
        except ValueError as exc:  # a decoder that declares it cannot run on this architecture (a model capability it needs)
            pytest.skip(str(exc))
    counted = Counted(model)
    steps: list[Step] = []
    gens = module.decode(counted, prompts, cfg, on_step=steps.append, seeds=seeds)
    return gens, counted, steps


def test_output_is_complete_and_counted(decoder, model_files, arch):
    module, cfg = small_config(decoder, model_files)
    prompts = PROMPTS if getattr(module, "BATCHED", False) else PROMPTS[:1]
    gens, counted, steps = run(module, cfg, prompts, arch=arch)
    assert len(gens) == len(prompts)
    for g, nfe in zip(gens, counted.row_nfe(len(prompts))):
        assert 0 < len(g.tokens) <= cfg.gen_length
        assert 1 not in g.tokens  # no mask left
        assert len(g.committed_per_step) == nfe >= 1  # one entry per forward that computed this row
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
    together, counted, _ = run(module, cfg, EIGHT, arch=arch)
    alone = [run(module, cfg, [p], arch=arch) for p in EIGHT]
    assert together == [gens[0] for gens, _, _ in alone]
    assert counted.row_nfe(len(EIGHT)) == [c.nfe for _, c, _ in alone]  # NFE per sample, as at batch 1
    assert counted.nfe <= sum(c.nfe for _, c, _ in alone)


def _seeded(module, files, **extra):
    fields = {f.name for f in dataclasses.fields(module.Config)}
    values = {"temperature": 0.9, **extra}
    return small_config(module.__name__.rsplit(".", 1)[1], files, **{k: v for k, v in values.items() if k in fields})[1]


def test_seeded_noise_does_not_depend_on_the_batch(decoder, model_files):
    """issue 11: at T > 0 a sample's output depends on its seed only, not on batch size, batch mates or padding."""
    module = decoders.load(decoder)
    cfg = _seeded(module, model_files)
    seeds = [1000 + 7 * i for i in range(len(EIGHT))]
    together, counted, _ = run(module, cfg, EIGHT, seeds=seeds)
    alone = [run(module, cfg, [p], seeds=[s]) for p, s in zip(EIGHT, seeds)]
    assert together == [gens[0] for gens, _, _ in alone]
    assert counted.row_nfe(len(EIGHT)) == [c.nfe for _, c, _ in alone]
    reordered, _, _ = run(module, cfg, EIGHT[::-1], seeds=seeds[::-1])
    assert reordered[::-1] == together
    torch.manual_seed(0)  # the global RNG plays no part once seeds are given
    again, _, _ = run(module, cfg, EIGHT[:2], seeds=seeds[:2])
    assert again == together[:2]


def test_seeds_change_the_noise(decoder, model_files):
    module = decoders.load(decoder)
    if "temperature" not in {f.name for f in dataclasses.fields(module.Config)}:
        pytest.skip(f"{decoder} has no temperature")
    cfg = _seeded(module, model_files, temperature=5.0)
    outs = {run(module, cfg, [PROMPTS[0]], seeds=[s])[0][0].tokens for s in range(6)}
    assert len(outs) > 1  # a stub that ignored the seed would give one output


def test_seeds_must_match_the_prompts(decoder, model_files):
    module, cfg = small_config(decoder, model_files)
    with pytest.raises(ValueError, match="one seed per prompt"):
        module.decode(random_llada(), PROMPTS[:2], cfg, seeds=[1])


def test_module_contract(decoder):
    module = decoders.load(decoder)
    assert module.__doc__ and module.__doc__.strip(), "a decoder opens with a docstring"
    assert dataclasses.is_dataclass(module.Config) and module.Config.__dataclass_params__.frozen
    assert callable(module.decode)
    params = inspect.signature(module.decode).parameters
    assert params["on_step"].kind == params["seeds"].kind == inspect.Parameter.KEYWORD_ONLY  # the noise-seed interface
    info = decoders.info(decoder)
    assert info.summary
