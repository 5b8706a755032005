"""d3LLM (decoders.md §4.1-4.2): reductions, progress guarantee, EOS early stop, delayed-cache bookkeeping.

Run: pytest tests/test_d3llm.py
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dleval.decoders import _parts, d3llm
from dleval.models.base import Counted, ForwardOutput, KVCache
from tests.conftest import random_llada, with_and_without_band

_parts_neg_entropy = _parts.neg_entropy

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44, 17, 2, 60, 9]]


def decode(model, prompt, cfg):
    counted = Counted(model)
    steps = []
    gen = d3llm.decode(counted, [prompt], cfg, on_step=steps.append)[0]
    return gen, counted, steps


def dparallel_reference(model, prompt, gen_length, block_length, tau):
    """dParallel's rule (decoders.md §3.1) written out plainly: sequential blocks, no cache, no
    EOS stop; each forward commits the block's lowest-entropy mask and every other one with
    H <= tau. The lead swaps this for dleval.decoders.dparallel once both branches are merged."""
    x, _, P = _parts.make_canvas(model, [prompt], gen_length)
    commits = []
    for s in range(P, P + gen_length, block_length):
        while bool((x[0, s : s + block_length] == model.mask_id).any()):
            logits = model.forward(x).logits[0, s : s + block_length]  # (B, V)
            x0 = _parts.propose(logits, 0.0, model.mask_id)
            h = _parts.entropy(logits).tolist()
            open_ = sorted((h[i], i) for i in range(block_length) if int(x[0, s + i]) == model.mask_id)
            take = [open_[0][1]] + [i for hi, i in open_[1:] if hi <= tau]
            for i in take:
                x[0, s + i] = x0[i]
            commits.append(len(take))
    return tuple(x[0, P:].tolist()), tuple(commits)


@pytest.mark.parametrize("tau", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("gen,block", [(24, 8), (16, 16)])
def test_sequential_no_early_stop_no_cache_equals_dparallel(tau, gen, block):
    model = random_llada(seed=1)
    cfg = d3llm.Config(
        gen_length=gen, block_length=block, threshold=tau, block_add_threshold=1.0, decoded_token_threshold=1.0, early_stop=False
    )
    for prompt in PROMPTS:
        ours, counted, _ = decode(model, prompt, cfg)
        tokens, commits = dparallel_reference(model, prompt, gen, block, tau)
        assert ours.tokens == tokens and ours.committed_per_step == commits
        assert counted.nfe == len(commits)


@pytest.mark.parametrize("delay,refresh", [(0, 1), (1, 10000), (2, 3), (2, 1)])
@pytest.mark.parametrize("add,full", [(0.1, 0.95), (1.0, 1.0)])
def test_delayed_cache_is_exact_when_positions_do_not_interact(delay, refresh, add, full):
    """With attention switched off, no cached K/V can be stale, so the delayed cache must give
    exactly cache="none": this checks which positions each cached forward runs and where its
    logits land. (With attention on it is an approximation, even with refresh_interval=1: see
    d3llm's docstring.)"""
    model = random_llada(seed=2)
    with torch.no_grad():
        model.model.transformer.ff_out.weight[0] *= 2.5  # EOS likely: exercise the early stop too
        for block in model.model.transformer.blocks:
            block.attn_out.weight.zero_()
    base = dict(gen_length=32, block_length=8, threshold=1.0, block_add_threshold=add, decoded_token_threshold=full)
    for prompt in PROMPTS:
        plain, n_plain, _ = decode(model, prompt, d3llm.Config(**base))
        cached, n_cached, _ = decode(model, prompt, d3llm.Config(**base, cache="delayed", cache_delay_iter=delay, refresh_interval=refresh))
        assert cached == plain and n_cached.nfe == n_plain.nfe
        assert n_cached.positions < n_plain.positions  # ...while forwarding fewer positions


class Recording:
    """Wraps a model and records (start, length, cache length or None) of every forward."""

    def __init__(self, model) -> None:
        self.inner = model
        self.calls: list[tuple[int, int, int | None]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        self.calls.append((start, ids.shape[1], None if cache is None else cache.length))
        return self.inner.forward(ids, start=start, cache=cache, attention_mask=attention_mask)


@pytest.mark.parametrize("delay,refresh", [(1, 10000), (2, 3), (0, 5), (2, 1)])
def test_delayed_cache_bookkeeping(delay, refresh):
    P, L, B = len(PROMPTS[0]), 40, 8
    model = Recording(random_llada(seed=3))
    cfg = d3llm.Config(
        gen_length=L, block_length=B, threshold=1.0, early_stop=False, cache="delayed", cache_delay_iter=delay, refresh_interval=refresh
    )
    gen, counted, steps = decode(model, PROMPTS[0], cfg)
    calls = model.calls
    assert len(calls) == counted.nfe == len(steps)
    # the forward after which each block (0 = the prompt) had no mask left
    finished = {0: 0}
    for n, step in enumerate(steps, 1):
        for b in range(L // B):
            if b + 1 not in finished and not bool((step.canvas[0, P + b * B : P + (b + 1) * B] == model.mask_id).any()):
                finished[b + 1] = n
    ends = [P + b * B for b in range(L // B + 1)]  # the end of the prompt block and of every generation block
    used_cache = False
    for n, (start, length, cached) in enumerate(calls, 1):
        assert start + length == P + L  # every forward runs to the end of the canvas
        if cached is None:
            assert start == 0
            continue
        used_cache = True
        assert start == cached and cached in ends  # the cache is a prefix of whole blocks
        newest = ends.index(cached)  # blocks 0..newest are cached (0 = the prompt)
        # A block enters the cache only after it has been finished for `delay` iterations: a block
        # finished by forward f is seen finished at forward f+1 and appended by forward f+1+delay
        # (the prompt counts as finished at 0 and is appended at max(delay, 1)); used only after.
        appended_at = max(delay, 1) if newest == 0 else finished[newest] + 1 + delay
        assert n > appended_at
    assert used_cache
    # Every refresh_interval-th forward is a full one, unless it appends a block (then the next
    # forward that uses the cache sees a longer one): the reference lets the append win.
    cached_calls = [(n, c) for n, (_, _, c) in enumerate(calls, 1) if c is not None]
    for i, (n, c) in enumerate(cached_calls):
        if n % refresh == 0:
            assert all(c2 > c for _, c2 in cached_calls[i + 1 : i + 2])
    assert counted.positions < counted.nfe * (P + L)  # the cache saved work
    assert len(gen.tokens) == L and 1 not in gen.tokens


class FixedLogits:
    """Logits fixed per position, whatever the input (V = 8; 0 = EOS, 1 = mask)."""

    mask_id, eos_id, eot_id, vocab_size = 1, 0, 2, 8
    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table  # (T, V)

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        logits = self.table[start : start + ids.shape[1]].expand(ids.shape[0], -1, -1).clone()
        return ForwardOutput(logits=logits, kv=KVCache([], []))


def test_progress_guarantee_commits_in_the_first_fully_activated_block():
    P, L, B = 2, 24, 8
    table = torch.full((P + L, 8), -5.0)
    for i in range(L):
        if i < B:  # block 1: flat-ish, high entropy (distinct per position)
            table[P + i, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]) + 0.01 * i
        else:  # later blocks: peaked, the global lowest entropy
            table[P + i, 3] = 10.0 - 0.01 * i
    cfg = d3llm.Config(gen_length=L, block_length=B, threshold=0.0, block_add_threshold=0.0, decoded_token_threshold=1.0, early_stop=False)
    gen, counted, steps = decode(FixedLogits(table), [4, 5], cfg)
    block1 = [int(step.committed[0, P : P + B].sum()) for step in steps]
    later = [int(step.committed[0, P + B :].sum()) for step in steps]
    assert block1[:B] == [1] * B  # block 1 gets exactly its guaranteed token on each of its forwards
    assert all(n == 1 for n in later[:B])  # ...while the global lowest-entropy commit goes to a later, semi-activated block
    assert list(gen.committed_per_step[:B]) == [2] * B
    assert 1 not in gen.tokens and counted.nfe == len(steps)


@pytest.mark.parametrize("offset", [None, 1e8])
@pytest.mark.parametrize("side", ["at", "below"])
def test_float32_entropy_is_retaken_in_float64_at_the_threshold(monkeypatch, side, offset):
    """tau equal to (or one float below) a position's float64 entropy: the float32 -H cannot tell
    the two apart, so the step retakes the reference's float64 scores and commits exactly the
    positions with H <= tau (plus the lowest-entropy one). offset: float64 logits near 1e8, which
    a float32 cast would round to equal values: they take the float64 -H at once."""
    P, L = 2, 8
    table = torch.full((P + L, 8), -5.0)
    for i in range(L):
        table[P + i, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]) * (1 + 0.7 * i)  # entropy falls with i
    if offset is not None:
        table = table.double() + offset
    h = _parts.entropy(table[P:]).tolist()
    k = 4
    tau = h[k] if side == "at" else math.nextafter(h[k], -math.inf)
    exact = []
    monkeypatch.setattr(_parts, "neg_entropy", lambda lg: exact.append(1) or _parts_neg_entropy(lg))
    cfg = d3llm.Config(gen_length=L, block_length=L, threshold=tau, early_stop=False)
    _, _, steps = decode(FixedLogits(table), [4, 5], cfg)
    want = [hi <= tau for hi in h]
    want[h.index(min(h))] = True
    assert steps[0].committed[0, P:].tolist() == want
    assert exact  # the float64 retake ran


def test_float32_fast_path_equals_the_float64_path(monkeypatch):
    """With the band infinite every decision is taken on the float64 scores: same tokens and
    commits as the float32 path with its retakes, on a random model (ties, thresholds, guarantee)."""
    model = random_llada(seed=3)
    for tau in (0.0, 0.5, 2.0, 5.0):
        cfg = d3llm.Config(gen_length=24, block_length=8, threshold=tau, block_add_threshold=0.5, decoded_token_threshold=0.5)
        fast, slow = with_and_without_band(monkeypatch, d3llm, lambda cfg=cfg: [decode(model, p, cfg)[0] for p in PROMPTS], "_BAND_SCALE")
        assert fast == slow


class ShiftedFixedLogits(FixedLogits):
    """FixedLogits announcing a Dream-style model: d3llm takes its Dream branch. `later`, when
    given, replaces the table from the second forward on."""

    logit_shift = True

    def __init__(self, table: torch.Tensor, later: torch.Tensor | None = None) -> None:
        super().__init__(table)
        self.later, self.calls = later, 0

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        self.calls += 1
        if self.later is not None and self.calls == 2:
            self.table = self.later
        return super().forward(ids, start=start, cache=cache, attention_mask=attention_mask)


def test_dream_branch_commits_below_tau_only_plus_the_first_full_blocks_guarantee():
    """d3LLM's Dream util has no global lowest-entropy commit: on the progress-guarantee table a
    semi-activated block whose entropies are all above tau gets nothing (the LLaDA path commits
    its lowest-entropy position on every forward, test above)."""
    P, L, B = 2, 24, 8
    table = torch.full((P + L, 8), -5.0)
    for i in range(L):
        if i < B:
            table[P + i, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]) + 0.01 * i
        else:
            table[P + i, 3] = 10.0 - 0.01 * i  # H ~ 3e-5: lowest, but not below tau = 0
    cfg = d3llm.Config(gen_length=L, block_length=B, threshold=0.0, block_add_threshold=0.0, decoded_token_threshold=1.0, early_stop=False)
    gen, counted, steps = decode(ShiftedFixedLogits(table), [4, 5], cfg)
    assert [int(step.committed[0, P + B :].sum()) for step in steps[:B]] == [0] * B
    assert list(gen.committed_per_step) == [1] * L and counted.nfe == L  # one block at a time, one token per forward
    # tau above those entropies: each later block is decoded whole by the first forward it is open for (one opens per forward)
    gen, _, _ = decode(ShiftedFixedLogits(table), [4, 5], dataclasses.replace(cfg, threshold=0.01))
    assert list(gen.committed_per_step[:2]) == [1 + B, 1 + B] and 1 not in gen.tokens


def test_dream_branch_cached_span_reads_its_first_position_from_its_own_output():
    """d3LLM's Dream util unshifts a cached forward's logits within the span, so the span's first
    position gets the network output at that position, which is the row of the next position in
    the model's (already unshifted) logits."""
    P, L, B = 2, 16, 8
    table = torch.full((P + L, 8), -5.0)
    table[P : P + B, 3] = 12.0  # block 1: confident, decoded whole by forward 1
    table[P + B :, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])  # block 2: high entropy...
    table[P + B, 2:] = 0.0  # ...its first position flat (H = log 6)
    table[P + B + 1, 4] = 12.0  # ...its second a confident token 4
    cfg = d3llm.Config(
        gen_length=L, block_length=B, threshold=0.5, early_stop=False, cache="delayed", cache_delay_iter=0, refresh_interval=10000
    )
    for shifted in (True, False):
        model = ShiftedFixedLogits(table) if shifted else FixedLogits(table)
        model = Recording(model)
        gen, _, steps = decode(model, [4, 5], cfg)
        # forward 1: full, caches the prompt, decodes block 1; 2: from P, appends block 1, commits block 2's second position; 3: from P+B
        assert [c[0] for c in model.calls[:3]] == [0, P, P + B]
        assert steps[1].canvas[0, P + B + 1] == 4 and steps[1].canvas[0, P + B] == 1
        if shifted:  # position P+B read row P+B+1: a confident 4, committed by forward 3
            assert bool(steps[2].committed[0, P + B]) and steps[2].canvas[0, P + B] == 4
        else:  # its own flat row: the progress guarantee picks the lowest entropy, position P+B+2
            assert not bool(steps[2].committed[0, P + B]) and bool(steps[2].committed[0, P + B + 2])


def test_dream_branch_candidates_include_the_positions_the_eos_fill_just_closed():
    """d3LLM's Dream util takes its candidate mask before its EOS fill: in the forward after an
    EOS appears, a filled position with H < tau is overwritten with its argmax, and the block's
    guarantee is then spent there; the next fill restores the EOS. So that forward commits no
    real mask and costs one more NFE than the LLaDA path's rule would."""
    P, L, B = 2, 8, 8
    first = torch.full((P + L, 8), -5.0)
    first[P:, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])  # high entropy everywhere...
    first[P + 2, 0] = 12.0  # ...but a confident EOS at 2 (the progress guarantee's pick)
    later = first.clone()
    later[P + 5, 6] = 12.0  # from forward 2 on, position 5 (filled with EOS after forward 1) is a confident 6
    cfg = d3llm.Config(gen_length=L, block_length=B, threshold=0.5)
    gen, counted, steps = decode(ShiftedFixedLogits(first, later), [4, 5], cfg)
    assert steps[0].canvas[0, P + 3 :].tolist() == [0] * (L - 3)  # forward 1: EOS at 2, the fill closes 3..7
    assert steps[1].committed.sum() == 0 and steps[1].canvas[0, P + 5] == 0  # forward 2: only the stale 5, refilled
    assert gen.tokens[2:] == (0,) * (L - 2) and 1 not in gen.tokens
    assert counted.nfe == 4 and gen.committed_per_step == (1 + L - 3, 0, 1, 1)


def test_eos_early_stop_fills_closes_and_counts_only_real_forwards():
    P, L, B = 2, 16, 8
    table = torch.full((P + L, 8), -5.0)
    table[P:, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])  # every position: high entropy...
    table[P + 3, 0] = 12.0  # ...but position 3 is a confident EOS
    cfg = d3llm.Config(gen_length=L, block_length=B, threshold=0.0)
    gen, counted, steps = decode(FixedLogits(table), [4, 5], cfg)
    assert gen.finish == "eos"
    assert gen.tokens[3:] == (0,) * (L - 3) and 1 not in gen.tokens
    assert gen.committed_per_step == (1 + L - 4, 1, 1, 1)  # the fill counts in the forward that committed the EOS
    assert counted.nfe == 4 and len(steps) == 4  # block 2 was closed by the fill: never forwarded for
    # An EOS at offset 0 fills the whole canvas in the first forward: one NFE (the reference reports 2).
    table[P, 0] = 13.0
    gen, counted, _ = decode(FixedLogits(table), [4, 5], cfg)
    assert gen.tokens == (0,) * L and counted.nfe == 1 and gen.committed_per_step == (L,)


def test_no_early_stop_keeps_decoding_after_eos():
    P, L, B = 2, 16, 8
    table = torch.full((P + L, 8), -5.0)
    table[P:, 2:] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    table[P + 3, 0] = 12.0
    gen, counted, _ = decode(FixedLogits(table), [4, 5], d3llm.Config(gen_length=L, block_length=B, threshold=0.0, early_stop=False))
    assert gen.finish == "length" and gen.tokens.count(0) == 1 and sum(gen.committed_per_step) == L


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cache": "dual"}, "cache must be one of"),
        ({"block_add_threshold": 1.5}, "between 0 and 1"),
        ({"refresh_interval": 0}, "refresh_interval"),
        ({"gen_length": 30, "block_length": 8}, "multiple of block_length"),
    ],
)
def test_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        d3llm.Config(**kwargs)
