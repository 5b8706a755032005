"""`block_loop` decides on the host: the `_parts.pick_*` rules must take the tensor rules'
decisions bit for bit (ties, NaN, thresholds compared in the scores' dtype), and the host canvas
must write what the device path writes.

Run: pytest tests/test_host_rules.py
"""

from __future__ import annotations

import math
from array import array

import pytest
import torch

from dleval.decoders import _blocks, _parts


def rows(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Score rows (1, C) with the cases that matter: random, heavy ties, a NaN, all equal, one column."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.rand(1, 12, generator=g, dtype=torch.float64).to(dtype) for _ in range(20)]
    out += [torch.randint(0, 3, (1, 12), generator=g).to(dtype) / 4 for _ in range(20)]  # ties
    out += [torch.tensor([[0.2, float("nan"), 0.9, 0.9, float("nan")]], dtype=dtype), torch.full((1, 7), 0.5, dtype=dtype)]
    out += [torch.tensor([[0.3]], dtype=dtype)]
    return out


def candidate_sets(C: int, g: torch.Generator) -> list[list[int]]:
    sets = [list(range(C))]
    for _ in range(3):
        keep = [j for j in range(C) if torch.rand(1, generator=g).item() < 0.6]
        sets.append(keep or [C - 1])
    return sets


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_pick_threshold_is_threshold_mask(dtype):
    g = torch.Generator().manual_seed(1)
    for s in rows(dtype):
        values = s[0].tolist()
        for cands in candidate_sets(s.shape[1], g):
            masked = torch.zeros_like(s, dtype=torch.bool)
            masked[0, cands] = True
            for tau in (0.3, 0.5, 0.9, 0.25):
                want = _parts.threshold_mask(s, masked, s >= tau)[0].nonzero().flatten().tolist()
                assert _parts.pick_threshold(values, cands, _parts.as_dtype(tau, dtype)) == want, (s, cands, tau)
                strict = _parts.threshold_mask(s, masked, s > tau)[0].nonzero().flatten().tolist()
                assert _parts.pick_threshold(values, cands, _parts.as_dtype(tau, dtype), strict=True) == strict


def test_a_threshold_compares_in_the_scores_dtype():
    """float32(0.9) < 0.9: a float32 score equal to float32(0.9) passes `s >= 0.9` in torch, which
    rounds the 0.9 to float32 first; a plain float64 comparison would reject it."""
    s = torch.tensor([[0.9, 0.1, 0.95]], dtype=torch.float32)
    assert (s >= 0.9)[0, 0] and s[0, 0].item() < 0.9
    assert _parts.pick_threshold(s[0].tolist(), [0, 1, 2], _parts.as_dtype(0.9, torch.float32)) == [0, 2]
    assert _parts.as_dtype(0.9, torch.float64) == 0.9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pick_top_k_is_top_k_mask(dtype):
    g = torch.Generator().manual_seed(2)
    for s in rows(dtype):
        for cands in candidate_sets(s.shape[1], g):
            masked = torch.zeros_like(s, dtype=torch.bool)
            masked[0, cands] = True
            for k in (1, 2, 3, len(cands), s.shape[1]):
                want = (_parts.top_k_mask(s.masked_fill(~masked, _parts.NEG_INF), [k]) & masked)[0].nonzero().flatten().tolist()
                assert _parts.pick_top_k(s[0].tolist(), cands, k) == want, (s, cands, k)


def test_pick_entropy_bound_is_entropy_bound_mask():
    g = torch.Generator().manual_seed(3)
    for s in rows(torch.float64):
        v = -s  # -H <= 0
        for cands in candidate_sets(s.shape[1], g):
            masked = torch.zeros_like(s, dtype=torch.bool)
            masked[0, cands] = True
            for gamma in (0.0, 0.1, 0.3, 1.0, 10.0):
                if any(math.isnan(x) for x in v[0].tolist()):  # the NaN row takes the tensor rule over the candidates
                    sub = v[:, cands]
                    want = [cands[j] for j in _parts.neg_entropy_bound_mask(sub, gamma)[0].nonzero().flatten().tolist()]
                else:
                    want = _parts.entropy_bound_mask(-v, masked, gamma)[0].nonzero().flatten().tolist()
                    if len(cands) == s.shape[1]:
                        assert _parts.neg_entropy_bound_mask(v, gamma)[0].nonzero().flatten().tolist() == want
                assert _parts.pick_entropy_bound(v[0].tolist(), cands, gamma) == want, (v, cands, gamma)


def test_host_canvas_writes_what_the_device_path_writes():
    cpu = torch.device("cpu")
    shared, device = _blocks._HostCanvas(array("q", range(12)), 2, cpu), _blocks._HostCanvas(array("q", range(12)), 2, cpu, shared=False)
    for c in (shared, device):
        c.write(0, 5, 100)
        c.write(1, 2, 200)
        c.push()
    assert shared.shared and not device.shared
    assert torch.equal(shared.x, device.x) and shared.x[0, 5] == 100 and shared.x[1, 2] == 200
    shared.write(1, 0, 7)  # on the CPU the tensor is the host array: no push needed
    assert shared.x[1, 0] == 7


@pytest.mark.parametrize("vocab", [2, 348, 126_464])
def test_float32_entropy_stays_within_its_band(vocab):
    """`neg_entropy32` is within `entropy32_band` of the float64 `neg_entropy` (the bound is a
    worst case: the measured error is far inside it), on flat, peaked and huge-logit rows."""
    g = torch.Generator().manual_seed(vocab)
    for scale in (0.01, 1.0, 10.0, 1e3):
        logits = torch.randn(4, vocab, generator=g) * scale
        logits[1, 0] += 50.0  # one dominant token: H near 0
        approx, exact = _parts.neg_entropy32(logits).tolist(), _parts.neg_entropy(logits).tolist()
        for a, e in zip(approx, exact):
            band = _parts.entropy32_band(vocab, -a)
            assert abs(a - e) <= band / 10, (vocab, scale, a, e, band)
    assert _parts.entropy32_band(348, float("nan")) == math.inf and _parts.entropy32_band(2_000_000, 0.1) == math.inf


def approximations(seed: int) -> list[tuple[list[float], list[float], float]]:
    """(exact float64 -H row, an approximation within `band` of it, band): random entropies, heavy
    ties, values placed at the thresholds/budgets the tests use, and the approximation's error
    anywhere in [-band, band] (so some decisions flip and must be declined)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(300):
        C = 1 + i % 12
        if i % 3 == 0:
            e = -torch.randint(0, 4, (C,), generator=g).double() / 40  # ties, sums landing on gamma = 0.1
        elif i % 3 == 1:
            e = -0.5 + (torch.rand(C, generator=g, dtype=torch.float64) - 0.5) * 2e-3  # at tau = 0.5
        else:
            e = -torch.rand(C, generator=g, dtype=torch.float64) * 0.08
        band = [1e-4, 1e-3, 1e-2][i % 3 * 0 + (i // 3) % 3]
        a = e + (torch.rand(C, generator=g, dtype=torch.float64) * 2 - 1) * band
        out.append((e.tolist(), a.tolist(), band))
    return out


def test_pick_threshold_band_declines_or_agrees_with_the_exact_scores():
    declined = decided = 0
    for e, a, band in approximations(3) + [([-0.1, float("nan")], [-0.1, float("nan")], 1e-4)]:
        for cands in [list(range(len(e))), list(range(0, len(e), 2))]:
            got = _blocks.pick_threshold_band(a, cands, -0.5, band)
            if got is None:
                declined += 1
            else:
                decided += 1
                assert got == _parts.pick_threshold(e, cands, -0.5), (e, a, band)
    assert declined > 20 and decided > 100  # both paths exercised
    assert _blocks.pick_threshold_band([-0.1, float("nan")], [0, 1], -0.5, 1e-4) is None


def test_pick_entropy_bound_band_declines_or_agrees_with_the_exact_scores():
    declined = decided = 0
    for e, a, band in approximations(4):
        for cands in [list(range(len(e))), list(range(0, len(e), 2))]:
            got = _blocks.pick_entropy_bound_band(a, cands, 0.1, band)
            if got is None:
                declined += 1
            else:
                decided += 1
                assert got == _parts.pick_entropy_bound(e, cands, 0.1), (e, a, band)
    assert declined > 20 and decided > 100
    assert _blocks.pick_entropy_bound_band([-0.1, float("nan")], [0, 1], 0.1, 1e-4) is None
    assert _blocks.pick_entropy_bound_band([-0.1, -0.2], [0, 1], 0.1, math.inf) is None


@pytest.mark.parametrize("name", ["dparallel", "eb"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_float32_entropy_rules_decode_as_the_float64_ones(name, dtype, monkeypatch):
    """dParallel and EB with -H in float32 first: the same tokens as with every decision retaken
    on the float64 -H (BAND_SCALE = inf), the retake taken at least once on the tiny model, for
    float32, bf16 and float64 logits (float64: no approximation), several settings, a batch of 2."""
    from dleval import decoders, models

    module = decoders.load(name)
    loaded = models.load(decoders.info(name).cpu_model, device="cpu")
    model = loaded.model

    class Cast:  # the tiny model's logits in `dtype`
        def __getattr__(self, k):
            return getattr(model, k)

        def forward(self, ids, **kw):
            out = model.forward(ids, **kw)
            out.logits = out.logits.to(dtype)
            return out

    prompts = [loaded.tokenizer.encode("Tom has 3 apples and buys 4 more. How many?"), loaded.tokenizer.encode("2 + 2 =")]
    knob = {"dparallel": "threshold", "eb": "gamma"}[name]
    calls = {"retakes": 0}
    real = _blocks.neg_entropy_select

    def counting(*args):
        x0, v, retake = real(*args)
        if retake is None:
            return x0, v, None

        def counted():
            calls["retakes"] += 1
            return retake()

        return x0, v, counted

    monkeypatch.setattr(_blocks, "neg_entropy_select", counting)
    # the lowest H of the first block at the first forward, as tau or gamma: a decision on its boundary
    x = torch.tensor([prompts[0] + [model.mask_id] * 32])
    lowest = -_parts.neg_entropy(model.forward(x).logits[0, len(prompts[0]) : len(prompts[0]) + 8].to(dtype)).max().item()
    fast_retakes = 0
    for value, cache, T in [(lowest, "none", 0.0), (0.5, "none", 0.0), (0.05, "prefix", 0.0), (2.0, "dual", 0.0), (0.5, "none", 0.7)]:
        cfg = module.Config(gen_length=32, block_length=8, cache=cache, temperature=T, **{knob: value})
        seeds = [1, 2] if T else None
        calls["retakes"] = 0
        fast = module.decode(Cast(), prompts, cfg, seeds=seeds)
        fast_retakes += calls["retakes"]
        with monkeypatch.context() as m:
            m.setattr(_blocks, "BAND_SCALE", math.inf)
            slow = module.decode(Cast(), prompts, cfg, seeds=seeds)
        assert fast == slow
    assert (fast_retakes > 0) == (dtype != torch.float64)  # the fallback ran where there is one
