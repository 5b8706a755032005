"""EB-sampler (decoders.md §7.5): the entropy-bound selection rule and its reductions.

Run: pytest tests/test_eb.py
"""

from __future__ import annotations

import pytest
import torch

from dleval.decoders import _parts, _picks, eb
from dleval.models.base import Counted
from tests.conftest import random_llada, with_and_without_band
from tests.recording import FixedLogits, Recording, block_logits

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44]]


def decode(cfg, prompt, model=None):
    counted = Counted(model or random_llada())
    steps = []
    gens = eb.decode(counted, [prompt], cfg, on_step=steps.append)
    return gens[0], counted.nfe, steps


def test_bound_rule_by_hand():
    h = torch.tensor([[0.05, 0.3, 0.02, 0.5]], dtype=torch.float64)
    every = torch.ones_like(h, dtype=torch.bool)
    # sorted 0.02, 0.05, 0.3, 0.5: sum - max = 0, 0.02, 0.07, 0.37
    assert _parts.entropy_bound_mask(h, every, 0.1).tolist() == [[True, True, True, False]]
    assert _parts.entropy_bound_mask(h, every, 0.05).tolist() == [[True, False, True, False]]
    assert _parts.entropy_bound_mask(h, every, 0.0).tolist() == [[False, False, True, False]]
    assert _parts.entropy_bound_mask(h, every, 1.0).tolist() == [[True, True, True, True]]
    some = torch.tensor([[True, False, True, True]])  # position 1 already decoded
    assert _parts.entropy_bound_mask(h, some, 0.1).tolist() == [[True, False, True, True]]  # 0.02 + 0.05 <= 0.1
    none = torch.zeros_like(some)
    assert not _parts.entropy_bound_mask(h, none, 1.0).any()


def test_bound_rule_ties_break_by_position():
    h = torch.tensor([[0.4, 0.2, 0.2, 0.2]], dtype=torch.float64)
    every = torch.ones_like(h, dtype=torch.bool)
    assert _parts.entropy_bound_mask(h, every, 0.0).tolist() == [[False, True, False, False]]
    assert _parts.entropy_bound_mask(h, every, 0.2).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_gamma_zero_commits_one_token_per_forward(prompt):
    model = Recording(random_llada())
    gen, nfe, steps = decode(eb.Config(gen_length=16, block_length=8, gamma=0.0), prompt, model)
    assert nfe == 16 and set(gen.committed_per_step) == {1}
    P = len(prompt)
    before = torch.full((1, P + 16), 1)
    before[0, :P] = torch.tensor(prompt)
    for call, step in zip(model.calls, steps, strict=True):
        pos = int(step.committed[0].nonzero())
        s = P + (pos - P) // 8 * 8
        h = _parts.entropy(block_logits(call, s, 8)[0])
        h = torch.where(before[0, s : s + 8] == 1, h, torch.full_like(h, float("inf")))
        assert pos - s == int(torch.argmin(h))  # the lowest-entropy masked position
        before = step.canvas


@pytest.mark.parametrize("gamma", [4.0, 20.0])
def test_each_forward_commits_the_largest_bounded_prefix(gamma):
    P, B = len(PROMPTS[0]), 8
    model = Recording(random_llada())
    gen, nfe, steps = decode(eb.Config(gen_length=16, block_length=B, gamma=gamma), PROMPTS[0], model)
    before = torch.full((1, P + 16), 1)
    before[0, :P] = torch.tensor(PROMPTS[0])
    for call, step in zip(model.calls, steps, strict=True):
        s = P + (int(step.committed[0].nonzero()[0]) - P) // B * B
        masked = before[0, s : s + B] == 1
        h = _parts.entropy(block_logits(call, s, B)[0])
        ranked = sorted((float(h[i]), i) for i in range(B) if masked[i])
        k = max(k for k in range(1, len(ranked) + 1) if k == 1 or sum(v for v, _ in ranked[:k]) - ranked[k - 1][0] <= gamma)
        assert {int(i) - s for i in step.committed[0].nonzero().flatten()} == {i for _, i in ranked[:k]}
        before = step.canvas
    assert max(gen.committed_per_step) > 1 and nfe < 16


def test_dual_cache_refreshed_every_step_equals_none():
    cfg = eb.Config(gen_length=16, block_length=8, gamma=8.0)
    plain = decode(cfg, PROMPTS[0])
    assert decode(eb.Config(gen_length=16, block_length=8, gamma=8.0, cache="dual", refresh_every=1), PROMPTS[0])[:2] == plain[:2]


def test_default_gamma_is_diffusers_entropy_bound():
    assert eb.Config().gamma == 0.1
    with pytest.raises(ValueError, match="gamma"):
        eb.Config(gamma=-0.1)


_neg_entropy = _parts.neg_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_entropy_is_retaken_in_float64_at_the_bound(monkeypatch, dtype):
    """gamma set to the float64 sum of the two lowest entropies: the float32 -H cannot tell
    whether a third token fits, so the step retakes the float64 scores (the [MASK] logit put
    back) and commits what the float64 rule commits; float64 logits take them at once."""
    P, L = 5, 8
    table = torch.full((P + L, 8), -5.0, dtype=dtype)
    table[:, 1] = 0.3  # the [MASK] logit counts in the reference's entropy
    for i in range(L):
        table[P + i, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dtype=dtype) * (3 + i)  # entropy falls with i
    h = sorted(_parts.entropy(table[P:]).tolist())
    gamma = h[0] + h[1]  # in float64, as the rule sums them
    retakes = []
    monkeypatch.setattr(_parts, "neg_entropy", lambda lg: retakes.append(1) or _neg_entropy(lg))
    _, _, steps = decode(eb.Config(gen_length=L, block_length=L, gamma=gamma), PROMPTS[0], model=FixedLogits(table))
    v = (-_parts.entropy(table[P:])).tolist()
    want = _picks.pick_entropy_bound(v, list(range(L)), gamma)
    assert steps[0].committed[0, P:].nonzero().flatten().tolist() == want and retakes


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_float32_fast_path_equals_the_float64_path(monkeypatch, cache):
    """With the band infinite every decision is taken on the float64 scores: the same tokens and
    commits as the float32 path with its retakes (random model, a batch of two, T > 0 too)."""
    model = random_llada(seed=4)
    for gamma, temperature in [(0.0, 0.0), (0.1, 0.0), (1.0, 0.0), (5.0, 0.0), (1.0, 0.7)]:
        cfg = eb.Config(gen_length=16, block_length=8, gamma=gamma, cache=cache, temperature=temperature)
        seeds = [1, 2] if temperature else None
        fast, slow = with_and_without_band(
            monkeypatch, eb, lambda cfg=cfg, seeds=seeds: eb.decode(Counted(model), PROMPTS, cfg, seeds=seeds)
        )
        assert fast == slow
