"""Fast-dLLM (decoders.md §2): exact reductions, the threshold rule, and what each cache forwards.

Run: pytest tests/test_fastdllm.py
"""

from __future__ import annotations

import pytest
import torch

from dleval import options
from dleval.decoders import fastdllm, llada
from dleval.errors import UserError
from dleval.models.base import Counted
from tests.conftest import random_llada
from tests.recording import FixedLogits, Recording, block_logits

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44], [6, 6, 6, 6, 6, 6, 21]]
PARALLEL = 0.08  # about the median top-1 probability of the random model: several commits per forward


def step_blocks(steps, P, B):
    """The block each forward worked on; an idle forward (no commit) belongs to the block before it."""
    blocks: list[int] = []
    for s in steps:
        hits = s.committed[0].nonzero()
        blocks.append((int(hits[0]) - P) // B if len(hits) else blocks[-1])
    return blocks


def decode(module, cfg, prompt, model=None):
    counted = Counted(model or random_llada())
    steps = []
    gens = module.decode(counted, [prompt], cfg, on_step=steps.append)
    return gens[0], counted.nfe, steps


@pytest.mark.parametrize("cache,refresh", [("none", None), ("dual", 1), ("prefix", 1)])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_threshold_one_equals_llada_one_token_per_step(cache, refresh, prompt):
    ours, nfe, _ = decode(
        fastdllm, fastdllm.Config(gen_length=16, block_length=8, threshold=1.0, cache=cache, refresh_every=refresh), prompt
    )
    base, base_nfe, _ = decode(llada, llada.Config(gen_length=16, block_length=8), prompt)
    assert ours == base and nfe == base_nfe == 16
    assert set(ours.committed_per_step) == {1}


@pytest.mark.parametrize("gen,block,steps", [(16, 8, 16), (16, 8, 8), (16, 4, 8), (12, 4, 6)])
def test_no_threshold_is_llada_quota(gen, block, steps):
    for cache in ("none", "prefix", "dual"):
        ours, nfe, _ = decode(
            fastdllm, fastdllm.Config(gen_length=gen, block_length=block, threshold=None, steps=steps, cache=cache), PROMPTS[0]
        )
        base, base_nfe, _ = decode(llada, llada.Config(gen_length=gen, block_length=block, steps=steps), PROMPTS[0])
        assert nfe == base_nfe == steps
        assert ours.committed_per_step == base.committed_per_step
        if cache == "none":
            assert ours == base


@pytest.mark.parametrize("cache", ["dual", "prefix"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_cache_refreshed_at_every_step_equals_none(cache, prompt):
    cfg = fastdllm.Config(gen_length=32, block_length=8, threshold=PARALLEL, cache="none")
    plain, plain_nfe, _ = decode(fastdllm, cfg, prompt)
    refreshed, nfe, _ = decode(fastdllm, fastdllm.Config(**{**cfg.__dict__, "cache": cache, "refresh_every": 1}), prompt)
    assert refreshed == plain and nfe == plain_nfe
    assert max(plain.committed_per_step) > 1  # the reduction is tested with real parallel commits


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("tau", [PARALLEL, 0.9])
def test_commits_conf_at_least_tau_plus_forced_top1(cache, tau):
    """Every forward commits exactly {masked block positions with conf >= tau} plus the top-1."""
    P, B = len(PROMPTS[0]), 8
    model = Recording(random_llada())
    gen, _, steps = decode(fastdllm, fastdllm.Config(gen_length=16, block_length=B, threshold=tau, cache=cache), PROMPTS[0], model)
    assert len(model.calls) == len(steps)
    before = torch.full((1, P + 16), 1)
    before[0, :P] = torch.tensor(PROMPTS[0])
    forced = 0
    for call, step in zip(model.calls, steps):
        s = P + (int(step.committed[0].nonzero()[0]) - P) // B * B
        logits = block_logits(call, s, B)[0]  # (B, V)
        masked = before[0, s : s + B] == 1
        conf = torch.softmax(logits.double(), -1).max(-1).values
        conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
        best = int(torch.argmax(conf))  # first of equal maxima: position tie-break
        expected = {i for i in range(B) if masked[i] and conf[i] >= tau} | {best}
        got = {int(i) - s for i in step.committed[0].nonzero().flatten()}
        assert got == expected
        assert (step.canvas[0, s : s + B][list(got)] == logits.argmax(-1)[list(got)]).all()
        forced += int(conf[best] < tau)
        before = step.canvas
    assert 1 not in gen.tokens
    if tau == 0.9:
        assert forced == len(steps)  # the random model is never that sure: the top-1 is always forced


def test_forced_top1_breaks_ties_by_position():
    P, L = 2, 4
    table = torch.zeros(P + L, 8)
    table[:, 3] = 1.0  # every position: two equally likely tokens (conf 0.5 < tau), argmax = first = 0
    table[:, 0] = 1.0
    gen, nfe, steps = decode(fastdllm, fastdllm.Config(gen_length=L, block_length=L, cache="none"), [4, 5], FixedLogits(table))
    assert nfe == L and gen.committed_per_step == (1, 1, 1, 1)
    assert [int(s.committed[0].nonzero()) for s in steps] == [P, P + 1, P + 2, P + 3]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_block_done_by_its_first_forward_costs_what_the_reference_spends(cache):
    """A confident block is committed by the block-start forward. With a cache the reference's
    inner loop still makes one cached forward that commits nothing, and counts it; so do we,
    unless skip_idle_forward (ours) is set. Tokens are the same either way."""
    P, L = 3, 16
    table = torch.zeros(P + L, 8)
    table[:, 5] = 20.0
    model = Recording(FixedLogits(table))
    gen, nfe, steps = decode(fastdllm, fastdllm.Config(gen_length=L, block_length=4, cache=cache), [4, 4, 4], model)
    if cache == "none":
        assert nfe == 4 and gen.committed_per_step == (4, 4, 4, 4)
    else:
        assert nfe == 8 and gen.committed_per_step == (4, 0) * 4
        idle = model.calls[1::2]  # every second forward is the idle cached one, over the block (dual) or block + suffix (prefix)
        assert [(c.start, c.cache_length is not None) for c in idle] == [(P + 4 * b, True) for b in range(4)]
        assert [s.nfe for s in steps] == list(range(1, 9)) and not any(bool(s.committed.any()) for s in steps[1::2])
    skipped, skipped_nfe, _ = decode(
        fastdllm, fastdllm.Config(gen_length=L, block_length=4, cache=cache, skip_idle_forward=True), [4, 4, 4], FixedLogits(table)
    )
    assert skipped_nfe == 4 and skipped.committed_per_step == (4, 4, 4, 4)
    assert skipped.tokens == gen.tokens and set(gen.tokens) == {5}


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_idle_forward_changes_nfe_only(cache, prompt):
    """On a random model at a threshold that finishes some blocks in one forward: the same
    tokens with and without the idle forward, and NFE differs by the number of such blocks."""
    cfg = fastdllm.Config(gen_length=32, block_length=4, threshold=0.05, cache=cache)
    ref, ref_nfe, _ = decode(fastdllm, cfg, prompt)
    cheap, cheap_nfe, _ = decode(fastdllm, fastdllm.Config(**{**cfg.__dict__, "skip_idle_forward": True}), prompt)
    idle = ref.committed_per_step.count(0)
    assert ref.tokens == cheap.tokens and ref_nfe - cheap_nfe == idle
    assert [n for n in ref.committed_per_step if n] == list(cheap.committed_per_step)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prefix_cache_forwards_the_block_and_the_masked_suffix(prompt):
    P, B, L = len(prompt), 8, 32
    model = Recording(random_llada())
    _, _, steps = decode(fastdllm, fastdllm.Config(gen_length=L, block_length=B, threshold=PARALLEL, cache="prefix"), prompt, model)
    blocks = step_blocks(steps, P, B)
    assert blocks == sorted(blocks) and set(blocks) == set(range(L // B))  # sequential, every block at least one NFE
    for i, (call, b) in enumerate(zip(model.calls, blocks)):
        s = P + b * B
        if i == 0 or blocks[i - 1] != b:  # block start: full canvas, builds the cache
            assert (call.start, call.length, call.cache_length) == (0, P + L, None)
        else:  # x[block_start:] against the K/V of [0, block_start)
            assert (call.start, call.length, call.cache_length) == (s, P + L - s, s)


@pytest.mark.parametrize("refresh", [None, 2])
def test_dual_cache_forwards_only_the_block(refresh):
    P, B, L = len(PROMPTS[0]), 8, 32
    model = Recording(random_llada())
    cfg = fastdllm.Config(gen_length=L, block_length=B, threshold=PARALLEL, cache="dual", refresh_every=refresh)
    _, _, steps = decode(fastdllm, cfg, PROMPTS[0], model)
    blocks = step_blocks(steps, P, B)
    assert blocks == sorted(blocks) and set(blocks) == set(range(L // B))
    index = 0
    for i, (call, b) in enumerate(zip(model.calls, blocks)):
        index = 0 if i == 0 or blocks[i - 1] != b else index + 1
        full = index == 0 or (refresh is not None and index % refresh == 0)
        if full:
            assert (call.start, call.length, call.cache_length) == (0, P + L, None)
        else:  # the block only, written in place into a cache of the whole canvas
            assert (call.start, call.length, call.cache_length) == (P + b * B, B, P + L)
    assert any(c.length == B for c in model.calls)


def test_caches_read_the_block_logits_at_the_right_offsets():
    """Position-only logits are unaffected by any cache, so all three must decode identically."""
    P, L = 3, 16
    table = torch.randn(P + L, 8, generator=torch.Generator().manual_seed(0)) * 4
    runs = [  # skip_idle_forward: the cached loops make the forwards of the no-cache one
        decode(
            fastdllm,
            fastdllm.Config(gen_length=L, block_length=4, threshold=0.5, cache=c, skip_idle_forward=True),
            [4, 4, 4],
            FixedLogits(table),
        )
        for c in fastdllm._parts.CACHES
    ]
    assert runs[0][:2] == runs[1][:2] == runs[2][:2]
    assert max(runs[0][0].committed_per_step) > 1 and runs[0][1] > L // 4


def test_options_from_the_command_line():
    cfg = options.build(fastdllm.Config, {"cache": "dual", "threshold": "none", "refresh_every": "4"}, "decoder 'fastdllm'")
    assert (cfg.cache, cfg.threshold, cfg.refresh_every) == ("dual", None, 4)
    with pytest.raises(UserError, match="cache must be one of none, prefix, dual"):
        options.build(fastdllm.Config, {"cache": "full"}, "decoder 'fastdllm'")
    with pytest.raises(UserError, match="refresh_every must be >= 1"):
        options.build(fastdllm.Config, {"refresh_every": "0"}, "decoder 'fastdllm'")
    with pytest.raises(UserError, match="multiple of the number of blocks"):
        options.build(fastdllm.Config, {"threshold": "none", "steps": "12"}, "decoder 'fastdllm'")


def test_defaults_follow_the_paper():
    cfg = fastdllm.Config()
    assert (cfg.gen_length, cfg.block_length, cfg.threshold, cfg.cache) == (256, 32, 0.9, "prefix")


def test_dream_token_is_the_first_maximum_of_the_probabilities():
    """Fast-dLLM's Dream `sample_tokens` takes x0 from softmax(logits) in the logits' dtype; in
    bf16 two tokens whose logits differ by one step can get the same probability, and then the
    first of them is the token (the logits' argmax would be the other)."""
    logits = torch.zeros(1, 1, 16, dtype=torch.bfloat16)
    logits[0, 0, 3] = 0.0625
    logits[0, 0, 7] = 0.06298828125  # one bf16 step above
    assert int(fastdllm._dream_propose(logits, fastdllm.Config(), 1, None, [0])) == 3
    assert int(logits.argmax()) == 7
