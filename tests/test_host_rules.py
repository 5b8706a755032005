"""`block_loop` decides on the host: the `_picks.pick_*` rules must take the tensor rules'
decisions bit for bit (ties, NaN, thresholds compared in the scores' dtype), and the host canvas
must write what the device path writes.

Run: pytest tests/test_host_rules.py
"""

from __future__ import annotations

import math
from array import array

import pytest
import torch

from dleval.decoders import _blocks, _parts, _picks


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
                assert _picks.pick_threshold(values, cands, _picks.as_dtype(tau, dtype)) == want, (s, cands, tau)
                strict = _parts.threshold_mask(s, masked, s > tau)[0].nonzero().flatten().tolist()
                assert _picks.pick_threshold(values, cands, _picks.as_dtype(tau, dtype), strict=True) == strict


def test_a_threshold_compares_in_the_scores_dtype():
    """float32(0.9) < 0.9: a float32 score equal to float32(0.9) passes `s >= 0.9` in torch, which
    rounds the 0.9 to float32 first; a plain float64 comparison would reject it."""
    s = torch.tensor([[0.9, 0.1, 0.95]], dtype=torch.float32)
    assert (s >= 0.9)[0, 0] and s[0, 0].item() < 0.9
    assert _picks.pick_threshold(s[0].tolist(), [0, 1, 2], _picks.as_dtype(0.9, torch.float32)) == [0, 2]
    assert _picks.as_dtype(0.9, torch.float64) == 0.9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pick_top_k_is_top_k_mask(dtype):
    g = torch.Generator().manual_seed(2)
    for s in rows(dtype):
        for cands in candidate_sets(s.shape[1], g):
            masked = torch.zeros_like(s, dtype=torch.bool)
            masked[0, cands] = True
            for k in (1, 2, 3, len(cands), s.shape[1]):
                want = (_parts.top_k_mask(s.masked_fill(~masked, _parts.NEG_INF), [k]) & masked)[0].nonzero().flatten().tolist()
                assert _picks.pick_top_k(s[0].tolist(), cands, k) == want, (s, cands, k)


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
                assert _picks.pick_entropy_bound(v[0].tolist(), cands, gamma) == want, (v, cands, gamma)


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


def perturbed(seed: int) -> list[tuple[list[float], list[float], float]]:
    """(exact -H, an approximation within `band` of it, band) rows: random entropies, heavy ties,
    sums landing on gamma, one column; the approximation's error is up to the band itself."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for case in range(300):
        C = 1 + case % 9
        if case % 3 == 0:
            h = (torch.randint(0, 4, (C,), generator=g).double() / 40).tolist()  # ties; 0.025 steps (gamma 0.1 reachable exactly)
        else:
            h = (torch.rand(C, generator=g, dtype=torch.float64) * 0.2).tolist()
        band = [0.0, 1e-9, 1e-4, 3e-3][case % 4]
        approx = [-x + band * (2 * torch.rand(1, generator=g).item() - 1) for x in h]
        out.append(([-x for x in h], approx, band))
    return out


def test_pick_threshold_within_answers_only_the_exact_choice():
    answered = 0
    for exact, approx, band in perturbed(5):
        for tau in (0.0, 0.05, 0.1, 0.125):
            got = _picks.pick_threshold_within(approx, list(range(len(exact))), -tau, band)
            if got is not None:
                answered += 1
                assert got == _picks.pick_threshold(exact, list(range(len(exact))), -tau)
    assert answered > 300  # the band decides most rows: the check is not vacuous


def test_pick_entropy_bound_within_answers_only_the_exact_choice():
    answered = 0
    for exact, approx, band in perturbed(6):
        for gamma in (0.0, 0.05, 0.1, 0.3):
            cands = list(range(len(exact)))
            got = _picks.pick_entropy_bound_within(approx, cands, gamma, band)
            if got is not None:
                answered += 1
                assert got == _picks.pick_entropy_bound(exact, cands, gamma)
    assert answered > 300
    assert _picks.pick_entropy_bound_within([-0.1, float("nan")], [0, 1], 0.1, 1e-6) is None
    assert _picks.pick_entropy_bound_within([-0.1, -0.2], [0, 1], 0.1, math.inf) is None
