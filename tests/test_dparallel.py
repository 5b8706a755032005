"""dParallel decoding (decoders.md §3.1): the entropy threshold rule, sequential blocks, cache options.

Run: pytest tests/test_dparallel.py
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dleval import decoders
from dleval.decoders import _parts, dparallel
from dleval.models.base import Counted
from tests.conftest import random_dream, random_llada, with_and_without_band
from tests.recording import FixedLogits, Recording, block_logits

PROMPT = [5, 9, 12, 7, 30]
PARALLEL = 3.9  # about the median entropy of the random model (vocab 64): several commits per forward


def decode(cfg, prompt=PROMPT, model=None):
    counted = Counted(model or random_llada())
    steps = []
    gens = dparallel.decode(counted, [prompt], cfg, on_step=steps.append)
    return gens[0], counted.nfe, steps


@pytest.mark.parametrize("tau", [0.0, PARALLEL, 0.5])
def test_commits_entropy_at_most_tau_plus_the_lowest(tau):
    """Every forward commits exactly {masked block positions with H <= tau} plus the lowest-entropy one."""
    P, B, L = len(PROMPT), 8, 16
    model = Recording(random_llada())
    gen, nfe, steps = decode(dparallel.Config(gen_length=L, block_length=B, threshold=tau), model=model)
    before = torch.full((1, P + L), 1)
    before[0, :P] = torch.tensor(PROMPT)
    for call, step in zip(model.calls, steps, strict=True):
        s = P + (int(step.committed[0].nonzero()[0]) - P) // B * B
        logits = block_logits(call, s, B)[0]  # (B, V)
        masked = before[0, s : s + B] == 1
        h = torch.where(masked, _parts.entropy(logits), torch.full((B,), float("inf"), dtype=torch.float64))
        lowest = int(torch.argmin(h))  # first of equal minima: position tie-break
        expected = {i for i in range(B) if masked[i] and h[i] <= tau} | {lowest}
        assert {int(i) - s for i in step.committed[0].nonzero().flatten()} == expected
        before = step.canvas
    if tau == 0.0:
        assert nfe == L and set(gen.committed_per_step) == {1}  # entropy is never 0 here: one token per forward
    if tau == PARALLEL:
        assert max(gen.committed_per_step) > 1 and nfe < L


def test_large_threshold_decodes_each_block_in_one_forward():
    gen, nfe, steps = decode(dparallel.Config(gen_length=32, block_length=8, threshold=100.0))
    assert nfe == 4 and gen.committed_per_step == (8, 8, 8, 8)
    P = len(PROMPT)
    for b, step in enumerate(steps):  # sequential blocks, in order
        assert step.committed[0].nonzero().flatten().tolist() == list(range(P + 8 * b, P + 8 * (b + 1)))


def test_entropy_rule_prefers_low_entropy_over_high_confidence():
    """A peaked-but-spread distribution can have higher confidence yet higher entropy than another."""
    P, L = 2, 2
    table = torch.full((P + L, 8), -30.0)
    table[P, 3], table[P, 4] = 2.0, 2.0  # two tokens at p = 0.5: H = ln 2 = 0.69, conf 0.5
    table[P + 1, [0, 2, 3, 4, 6, 7]] = torch.tensor(0.4 / 6).log()  # conf 0.6, the rest spread thin: H = 1.39
    table[P + 1, 5] = torch.tensor(0.6).log()
    gen, _, steps = decode(dparallel.Config(gen_length=L, block_length=L, threshold=0.1), [4, 5], FixedLogits(table))
    h = _parts.entropy(table[P:])
    conf = torch.softmax(table[P:].double(), -1).max(-1).values
    assert h[0] < h[1] and conf[0] < conf[1]
    assert int(steps[0].committed[0].nonzero()) == P  # lowest entropy first, not highest confidence


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_cache_refreshed_at_every_step_equals_none(cache):
    cfg = dparallel.Config(gen_length=16, block_length=8, threshold=PARALLEL)
    plain = decode(cfg)
    assert decode(dataclasses.replace(cfg, cache=cache, refresh_every=1))[:2] == plain[:2]


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_cached_loops_count_the_reference_idle_forward(cache):
    """At a threshold above every entropy the block-start forward completes each block; the
    reference's cached loop then spends one forward that commits nothing (czg1225/dParallel
    generate_with_prefix_cache / generate_with_dual_cache), and so do we unless skip_idle_forward."""
    cfg = dparallel.Config(gen_length=32, block_length=8, threshold=100.0, cache=cache)
    gen, nfe, _ = decode(cfg)
    assert nfe == 8 and gen.committed_per_step == (8, 0) * 4
    cheap, cheap_nfe, _ = decode(dataclasses.replace(cfg, skip_idle_forward=True))
    assert cheap_nfe == 4 and cheap.tokens == gen.tokens and cheap.committed_per_step == (8,) * 4


def test_defaults_and_models():
    cfg = dparallel.Config()
    assert (cfg.gen_length, cfg.block_length, cfg.threshold, cfg.cache) == (256, 32, 0.5, "none")
    info = decoders.info("dparallel")
    assert info.paper_model == "Zigeng/dParallel-LLaDA-8B-instruct" and info.batched  # rows advance on their own (issue 14)
    assert info.cpu_model in ("tiny", "tiny-dparallel")


def dream_semiar_rule(model, prompt, gen_length, block_length, tau):
    """dParallel's Dream path (`generation_utils_semiar.py`, entropy_threshold) written out plainly:
    sequential blocks; H = -sum p log(p + 1e-8) in the logits' dtype; each forward commits the
    block's lowest-entropy mask (first of equal minima) and every other one with H < tau."""
    x, _, P = _parts.make_canvas(model, [prompt], gen_length)
    commits = []
    for s in range(P, P + gen_length, block_length):
        while bool((x[0, s : s + block_length] == model.mask_id).any()):
            logits = model.forward(x).logits[0, s : s + block_length]  # (B, V)
            x0 = _parts.propose(logits, 0.0, model.mask_id)
            p = torch.softmax(logits, dim=-1)
            h = -(p * torch.log(p + 1e-8)).sum(dim=-1)
            masked = x[0, s : s + block_length] == model.mask_id
            h = torch.where(masked, h, torch.full_like(h, float("inf")))
            take = masked & (h < tau)
            take[int(h.argmin())] = True
            x[0, s : s + block_length] = torch.where(take, x0, x[0, s : s + block_length])
            commits.append(int(take.sum()))
    return tuple(x[0, P:].tolist()), tuple(commits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [0.5, PARALLEL])
def test_dream_models_follow_the_dream_path_entropy(dtype, tau):
    model = random_dream().to(dtype)
    cfg = dparallel.Config(gen_length=16, block_length=8, threshold=tau)
    for prompt in (PROMPT, [8, 3, 44, 17, 2, 60, 9]):
        gen, nfe, _ = decode(cfg, prompt, model)
        tokens, commits = dream_semiar_rule(model, prompt, 16, 8, tau)
        assert gen.tokens == tokens and gen.committed_per_step == commits and nfe == len(commits)


class ShiftedFixedLogits(FixedLogits):
    logit_shift = True  # a Dream-style model: dparallel takes the Dream path's entropy


def test_dream_path_keeps_only_entropies_strictly_below_tau():
    """The Dream path computes -sum p log(p + 1e-8) in the logits' dtype and keeps H < tau: a
    mask whose entropy is exactly tau waits; one ulp more of tau takes it."""
    P, L = 2, 4
    table = torch.full((P + L, 8), -5.0)
    table[P:, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])  # high entropy
    table[P, 3] = 12.0  # position 0: confident, the forced lowest
    table[P + 1, 4] = 3.0  # position 1: mid entropy
    p = torch.softmax(table[P + 1], dim=-1)
    h1 = float(-(p * torch.log(p + 1e-8)).sum())
    for tau, first in ((h1, 1), (float(torch.nextafter(torch.tensor(h1), torch.tensor(9.0))), 2)):
        gen, _, _ = decode(dparallel.Config(gen_length=L, block_length=L, threshold=tau), [4, 5], ShiftedFixedLogits(table))
        assert gen.committed_per_step[0] == first


_neg_entropy = _parts.neg_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["at", "below"])
def test_float32_entropy_is_retaken_in_float64_at_the_threshold(monkeypatch, side, dtype):
    """tau equal to (or one float below) a position's float64 entropy: the float32 -H cannot tell
    the two apart, so the step retakes the reference's float64 scores (with the [MASK] logit the
    proposal overwrote put back) and commits exactly the positions with H <= tau plus the lowest.
    float64 logits take the float64 -H at once, also before the proposal writes [MASK]'s logit."""
    P, L = len(PROMPT), 8
    table = torch.full((P + L, 8), -5.0, dtype=dtype)
    for i in range(L):
        table[P + i, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dtype=dtype) * (1 + 0.7 * i)  # entropy falls with i
    table[:, 1] = 0.3  # the [MASK] logit counts in the reference's entropy
    h = _parts.entropy(table[P:]).tolist()
    tau = h[4] if side == "at" else math.nextafter(h[4], -math.inf)
    retakes = []
    monkeypatch.setattr(_parts, "neg_entropy", lambda lg: retakes.append(1) or _neg_entropy(lg))
    _, _, steps = decode(dparallel.Config(gen_length=L, block_length=L, threshold=tau), model=FixedLogits(table))
    want = [hi <= tau for hi in h]
    want[h.index(min(h))] = True
    assert steps[0].committed[0, P:].tolist() == want
    assert retakes  # the float64 retake ran


def test_float32_near_tie_for_the_forced_commit_is_retaken(monkeypatch):
    """No position passes tau and two share the lowest entropy: the float32 scores cannot name
    the lowest, the float64 ones do (the first of equal minima, the reference's argmax)."""
    P, L = len(PROMPT), 8
    table = torch.full((P + L, 8), -5.0)
    for i in range(L):
        table[P + i, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]) * (1 + 0.1 * (i % 4))  # positions 3, 7 lowest, tied
    retakes = []
    monkeypatch.setattr(_parts, "neg_entropy", lambda lg: retakes.append(1) or _neg_entropy(lg))
    gen, nfe, steps = decode(dparallel.Config(gen_length=L, block_length=L, threshold=0.0), model=FixedLogits(table))
    assert steps[0].committed[0, P:].nonzero().flatten().tolist() == [3] and retakes
    assert nfe == L and set(gen.committed_per_step) == {1}


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_float32_fast_path_equals_the_float64_path(monkeypatch, cache):
    """With the band infinite every decision is taken on the float64 scores: the same tokens and
    commits as the float32 path with its retakes, on a random model (thresholds around its
    entropies, a batch of two prompts of different lengths, T > 0 with seeds)."""
    model = random_llada(seed=3)
    prompts = [PROMPT, [7, 3, 9]]
    for tau, temperature in [(0.0, 0.0), (PARALLEL, 0.0), (4.1, 0.0), (100.0, 0.0), (PARALLEL, 0.7)]:
        cfg = dparallel.Config(gen_length=16, block_length=8, threshold=tau, cache=cache, temperature=temperature)
        seeds = [1, 2] if temperature else None
        fast, slow = with_and_without_band(
            monkeypatch, dparallel, lambda cfg=cfg, seeds=seeds: dparallel.decode(Counted(model), prompts, cfg, seeds=seeds)
        )
        assert fast == slow


@pytest.mark.parametrize("module", ["dparallel", "eb"])
def test_float64_logits_take_the_float64_entropy_at_once(monkeypatch, module):
    """float64 logits are not cast to float32 for a first -H: the cast rounds the logits
    themselves (at 1e8 by up to 4), an error `entropy32_band` does not bound (here the float32 -H
    is off by ~1 nat against a band of ~4e-5, and the commits would differ)."""
    mod = decoders.load(module)
    P, L, V = len(PROMPT), 8, 16
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        table = 1e8 + torch.randn(P + L, V, generator=g, dtype=torch.float64) * 6
        table[:, 1] -= 100  # [MASK] unlikely
        knob = {"threshold": float(_parts.entropy(table[P:]).median())} if module == "dparallel" else {"gamma": 0.5}
        cfg = mod.Config(gen_length=L, block_length=L, **knob)
        fast, slow = with_and_without_band(
            monkeypatch, mod, lambda table=table, cfg=cfg: mod.decode(Counted(FixedLogits(table)), [PROMPT], cfg)
        )
        assert fast == slow
