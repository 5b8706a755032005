"""`_parts`' commit rules on the host, for the decoders that decide on Python lists (issue 14).

`_blocks.block_loop`, `_host` and d3llm's thin step decide on the host: a row's scores come
back as Python floats (the tensor's values exactly: float64 holds every float32 and bfloat16
value), and these functions take the decisions `_parts`' tensor rules take, bit for bit:
comparisons against a threshold use the threshold rounded to the scores' dtype first, as torch
compares a tensor with a Python number; an argmax is the first of equal maxima with NaN above
everything, as torch's; sums are the sequential float64 sums `cumsum` makes.

The `*_within` variants decide from approximate scores (a float32 -H within a proven band of
the reference's float64 one) and answer None where the band leaves the decision open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch

from dleval.decoders._parts import neg_entropy_bound_mask


def _key(s: list[float]) -> Callable[[int], tuple[bool, float]]:
    """Sort/max key of column j: NaN above everything (torch's order), else the value."""
    return lambda j: (s[j] != s[j], s[j])


@lru_cache(maxsize=64)
def as_dtype(value: float, dtype: torch.dtype) -> float:
    """`value` rounded to `dtype`, as torch rounds a Python number it compares with a tensor of
    that dtype (`p > 0.3` on float32 compares with float32(0.3)); exact as a Python float."""
    return value if dtype == torch.float64 else torch.tensor(value, dtype=dtype).item()


def pick_threshold(s: list[float], cands: list[int], threshold: float, strict: bool = False) -> list[int]:
    """`threshold_mask(s, cands, s >= threshold)` (`>` with strict) on the host: every candidate
    that passes, and always the best-scored one (first of equal maxima). `threshold` is already
    in the scores' dtype (`as_dtype`)."""
    passed = [j for j in cands if s[j] > threshold] if strict else [j for j in cands if s[j] >= threshold]
    if len(passed) == len(cands):
        return passed
    best = max(cands, key=_key(s))
    return passed if best in passed else sorted([*passed, best])


def pick_threshold_within(v: list[float], cands: list[int], threshold: float, band: float) -> list[int] | None:
    """`pick_threshold(exact, cands, threshold)` from approximations `v`, each within `band` of
    the exact score (a float32 -H and `entropy32_band`), or None where `v` cannot tell: a
    candidate within `band` of the threshold (or NaN), or, when none passes, a runner-up within
    2 * band of the best. Otherwise every comparison with the threshold has the exact sign, and
    the best leads every other candidate in the exact scores too."""
    if any(not abs(v[j] - threshold) > band for j in cands):
        return None
    chosen = pick_threshold(v, cands, threshold)
    if v[chosen[0]] < threshold and near_best(v, cands, chosen[0], band):
        return None
    return chosen


def near_best(v: list[float], cands: list[int], best: int, band: float) -> bool:
    """Some other candidate's approximate score is within 2 * band of the best one's: with every
    score within `band` of its exact value, the exact argmax may be another candidate."""
    return any(v[i] >= v[best] - 2 * band for i in cands if i != best)


def pick_top_k(s: list[float], cands: list[int], k: int) -> list[int]:
    """`top_k_mask(s with non-candidates at -inf, k) & candidates` on the host: the k best-scored
    candidates (ties by position; NaN first, as torch's stable descending sort)."""
    return sorted(sorted(cands, key=_key(s), reverse=True)[:k])


def pick_entropy_bound(v: list[float], cands: list[int], gamma: float) -> list[int]:
    """`entropy_bound_mask(-v, candidates, gamma)` on the host, given v = -H (float64): the
    candidates by H ascending (ties by position), the first k for the largest k with
    sum(H_1..k) - max(H_1..k) <= gamma, at least one. In v: cumsum(v) - cummin(v) >= -gamma,
    the negations exact (see `neg_entropy_bound_mask`). A NaN score takes the tensor rule."""
    if any(v[j] != v[j] for j in cands):
        got = neg_entropy_bound_mask(torch.tensor([[v[j] for j in cands]], dtype=torch.float64), gamma)[0].tolist()
        return [j for j, g in zip(cands, got) if g]
    order = sorted(cands, key=v.__getitem__, reverse=True)  # stable: ties by position
    k, total, low = 1, 0.0, math.inf
    for n, j in enumerate(order, 1):
        total += v[j]
        low = min(low, v[j])
        if total - low >= -gamma:
            k = n
    return sorted(order[:k])


def pick_entropy_bound_within(v: list[float], cands: list[int], gamma: float, band: float) -> list[int] | None:
    """`pick_entropy_bound(exact, cands, gamma)` from approximations `v`, each within `band` of the
    exact -H (a float32 -H and `entropy32_band`), or None where `v` cannot tell.

    Why it is exact when it answers: the rule's test at n, sum(H_1..n) - max(H_1..n) <= gamma, is
    a function of the n smallest entropies only (their sum minus the n-th smallest), and both are
    1-Lipschitz in every entropy: with each score within `band`, the exact and approximate values
    of the test differ by at most (n + 1) band, whatever the order of near-equal scores. Add the
    float64 rounding of both sequential sums (each <= n 2^-53 sum |v|, taken twice over): a test
    further than that from -gamma has the exact outcome, so k (the largest n that passes) is
    exact; then the first k candidates are the exact first k when the k-th score leads the next
    by more than 2 band (else None). A NaN or an infinite band: None."""
    if math.isinf(band) or any(v[j] != v[j] for j in cands):
        return None
    order = sorted(cands, key=v.__getitem__, reverse=True)  # stable: ties by position
    k, total, low, size = 1, 0.0, math.inf, 0.0
    for n, j in enumerate(order, 1):
        total += v[j]
        low = min(low, v[j])
        size += abs(v[j]) + band
        slack = (n + 1) * band + 4 * n * 2.0**-53 * size
        if total - low >= -gamma + slack:
            k = n
        elif not total - low < -gamma - slack:
            return None
    if k < len(order) and not v[order[k - 1]] - v[order[k]] > 2 * band:
        return None
    return sorted(order[:k])
