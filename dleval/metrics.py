"""Metrics as pure functions over Records: one written definition of each (ARCHITECTURE §5).

- accuracy: mean of `correct`, with lm-eval's standard error (sample std / sqrt(n));
- NFE: forward passes per sample, every call counted (cache builds and refreshes included);
- canvas TPF = positions committed / NFE; answer TPF = answer tokens (up to the first EOS or
  stop string) / NFE, the definition AUP uses. Aggregates are ratios of sums; `*_mean` fields
  are means of per-sample ratios;
- latency: synced seconds per sample, warm-up samples excluded; TPS = answer tokens / seconds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from dleval.types import Record


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


def summarize(records: Sequence[Record]) -> Summary:
    ok = [r for r in records if not r.error]
    acc, stderr = accuracy(records)
    filters: dict[str, float] = {}
    for name in sorted({k for r in records for k in r.metrics}):
        filters[name] = 100.0 * sum(r.metrics.get(name, 0.0) for r in records) / max(len(records), 1)
    nfes = [r.nfe for r in ok]
    timed = [r for r in ok if not r.warmup and r.seconds > 0]
    seconds = [r.seconds for r in timed]
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
    )
