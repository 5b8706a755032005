"""Metrics on hand-computed records, pass@k against the binomial formula, and AUP against the
published d3LLM board (decoders.md §4.6-4.7).

Run: pytest tests/test_metrics.py
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import pytest

from dleval.metrics import (
    AUPWarning,
    aup,
    aup_detail,
    aup_weight,
    mean_aup,
    pass_at_k,
    pass_at_k_records,
    speedup,
    summarize,
)
from dleval.types import Record


def rec(sample_id="s", correct=1.0, nfe=10, gen_tokens=24, answer_tokens=20, seconds=1.0, warmup=False, error=""):
    return Record(
        sample_id=sample_id, config_hash="h", completion="", raw="", answer="", correct=correct, metrics={"strict-match": correct},
        nfe=nfe, rows_forwarded=nfe, gen_tokens=gen_tokens, answer_tokens=answer_tokens, prompt_tokens=5, seconds=seconds,
        committed_per_step=(), finish="length", batch_size=1, warmup=warmup, error=error,
    )  # fmt: skip


def test_accuracy_with_standard_error():
    s = summarize([rec("a", 1), rec("b", 0), rec("c", 1), rec("d", 1)])
    assert s.accuracy == pytest.approx(75.0)
    assert s.accuracy_stderr == pytest.approx(25.0)  # stdev(1,0,1,1) = 0.5, / sqrt(4)
    assert s.filters == {"strict-match": pytest.approx(75.0)}


def test_work_and_timing_metrics_by_hand():
    records = [
        rec("a", 1, nfe=10, gen_tokens=24, answer_tokens=10, seconds=9.0, warmup=True),
        rec("b", 0, nfe=20, gen_tokens=24, answer_tokens=30, seconds=2.0),
        rec("c", 1, nfe=30, gen_tokens=24, answer_tokens=15, seconds=4.0),
        rec("d", 0, nfe=0, gen_tokens=0, answer_tokens=0, seconds=0.0, error="decode failed"),
    ]
    s = summarize(records)
    assert (s.n, s.errors) == (4, 1)
    assert s.accuracy == pytest.approx(50.0)  # the error counts as wrong
    assert (s.nfe_mean, s.nfe_min, s.nfe_p50, s.nfe_p90, s.nfe_max) == (20.0, 10, 20.0, pytest.approx(28.0), 30)
    assert s.nfe_counts == {10: 1, 20: 1, 30: 1}
    assert s.canvas_tpf == pytest.approx(72 / 60)  # ratio of sums
    assert s.answer_tpf == pytest.approx(55 / 60)
    assert s.canvas_tpf_mean == pytest.approx((2.4 + 1.2 + 0.8) / 3)  # mean of ratios
    assert s.answer_tpf_mean == pytest.approx((1.0 + 1.5 + 0.5) / 3)
    assert s.gen_tokens_mean == pytest.approx(24.0) and s.answer_tokens_mean == pytest.approx(55 / 3)
    # warm-up (9 s) and the error are excluded from timing
    assert s.timed == 2
    assert (s.latency_mean, s.latency_p50, s.latency_p90) == (pytest.approx(3.0), pytest.approx(3.0), pytest.approx(3.8))
    assert s.tps == pytest.approx(45 / 6)


def test_empty_records_summarize_to_zeros():
    s = summarize([])
    assert s.n == 0 and s.accuracy == 0 and s.answer_tpf == 0 and s.pass_at_k == {}


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_the_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_stays_exact_for_large_n():
    exact = 1 - Fraction(math.comb(997, 100), math.comb(1000, 100))
    assert pass_at_k(1000, 3, 100) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_at_k_over_records_needs_k_samples_per_problem():
    records = [rec("p1", c) for c in (1, 0, 0)] + [rec("p2", c) for c in (1, 1, 0)]
    assert pass_at_k_records(records, 1) == pytest.approx(0.5)
    assert pass_at_k_records(records, 2) == pytest.approx(((1 - 1 / 3) + 1.0) / 2)
    assert pass_at_k_records(records, 4) is None
    assert pass_at_k_records(records + [rec("p3", 1)], 2) is None  # p3 has one sample
    assert summarize(records).pass_at_k == {1: pytest.approx(50.0)}
    five = [rec(f"p{i}", float(j == 0)) for i in range(2) for j in range(5)]
    assert summarize(five).pass_at_k == {1: pytest.approx(20.0), 5: pytest.approx(100.0)}


def test_speedup_by_latency_and_nfe_names_its_baseline():
    base = summarize([rec("a", nfe=24, seconds=2.0), rec("b", nfe=24, seconds=2.0)])
    fast = summarize([rec("a", nfe=6, seconds=0.5), rec("b", nfe=6, seconds=0.5)])
    s = speedup(fast, base, "run-0")
    assert (s.latency, s.nfe, s.baseline) == (pytest.approx(4.0), pytest.approx(4.0), "run-0")
    untimed = summarize([rec("a", nfe=6, seconds=0.0)])
    assert speedup(untimed, base, "run-0").latency is None


# --- AUP -------------------------------------------------------------------------------------


def test_one_point_is_its_rectangle_and_two_points_by_hand():
    assert aup([(1.0, 72.55)], y_max=74.98) == pytest.approx(72.55)
    assert aup([(2.0, 50.0)], y_max=90.0) == pytest.approx(100.0)  # the first term is unweighted
    w = math.exp(-3 * (1 - 78 / 80))
    assert aup_weight(78, 80) == pytest.approx(w)
    assert aup_weight(85, 80) == 1.0  # capped
    assert aup([(3.0, 78.0), (1.0, 80.0)], y_max=80.0) == pytest.approx(80 + 0.5 * 2 * (78 * w + 80))
    assert aup([(3.0, 78.0), (1.0, 80.0)], y_max=80.0) == pytest.approx(232.364, abs=1e-3)


# decoders.md §4.6: the LLaDA pool of d3LLM's AUP_leaderboard/data_llada.yaml
LLADA_POOL = {
    "GSM8K-CoT": {
        "Qwen-2.5-7B-it": [(1, 74.1)], "LLaDA": [(1, 72.55)], "Fast-dLLM-LLaDA": [(1, 74.79), (2.77, 74.68)],
        "D2F-LLaDA": [(1, 74.98), (2.88, 74.39)], "dParallel-LLaDA": [(1, 74.0), (5.14, 72.63)], "d3LLM-LLaDA": [(1, 74.02), (9.11, 73.09)],
    },
    "MATH": {
        "Qwen-2.5-7B-it": [(1, 41.15)], "LLaDA": [(1, 32.2)], "Fast-dLLM-LLaDA": [(1, 32.1), (1.97, 30.82)],
        "D2F-LLaDA": [(1, 29.1), (2.66, 28.94)], "dParallel-LLaDA": [(1, 32.0), (3.17, 30.18)], "d3LLM-LLaDA": [(1, 32.76), (5.74, 30.36)],
    },
    "MBPP": {
        "Qwen-2.5-7B-it": [(1, 63.6)], "LLaDA": [(1, 41.72)], "Fast-dLLM-LLaDA": [(1, 41.58), (2.13, 38.6)],
        "D2F-LLaDA": [(1, 39.10), (2.13, 39.00)], "dParallel-LLaDA": [(1, 41.62), (2.35, 40.0)], "d3LLM-LLaDA": [(1, 42.0), (4.21, 40.60)],
    },
    "HumanEval": {
        "Qwen-2.5-7B-it": [(1, 67.73)], "LLaDA": [(1, 38.28)], "Fast-dLLM-LLaDA": [(1, 38.16), (2.56, 37.8)],
        "D2F-LLaDA": [(1, 41.02), (2.69, 40.64)], "dParallel-LLaDA": [(1, 39.68), (4.93, 39.02)], "d3LLM-LLaDA": [(1, 39.8), (5.95, 39.63)],
    },
    "Long-GSM8K": {
        "Qwen-2.5-7B-it": [(1, 82.56)], "LLaDA": [(1, 78.58)], "Fast-dLLM-LLaDA": [(1, 78.45), (2.45, 78.01)],
        "D2F-LLaDA": [(1, 76.00), (2.7, 75.66)], "dParallel-LLaDA": [(1, 79.15), (4.49, 76.65)], "d3LLM-LLaDA": [(1, 78.32), (6.95, 74.22)],
    },
}  # fmt: skip

# decoders.md §4.7: the published board (one decimal), tasks in the order of LLADA_POOL, then Avg
PUBLISHED = {
    "d3LLM-LLaDA": (637.7, 107.6, 88.4, 96.6, 441.1, 274.3),
    "dParallel-LLaDA": (358.1, 64.5, 60.5, 83.7, 309.1, 175.2),
    "D2F-LLaDA": (213.8, 49.0, 53.0, 62.0, 176.9, 110.9),
    "Fast-dLLM-LLaDA": (205.8, 47.2, 56.6, 54.0, 175.4, 107.8),
    "LLaDA": (72.5, 32.2, 41.7, 38.3, 78.6, 52.7),
    "Qwen-2.5-7B-it": (74.1, 41.1, 63.6, 67.7, 82.6, 65.8),
}


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_reproduces_the_published_d3llm_board(method):
    tasks = list(LLADA_POOL)
    per_task = {}
    for task in tasks:
        pool = LLADA_POOL[task]
        y_max = max(y for pts in pool.values() for _, y in pts)  # the pool's best, every method included
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no point of the published data is dropped
            per_task[task] = aup(pool[method], y_max)
    *expected, avg = PUBLISHED[method]
    for task, value in zip(tasks, expected):
        assert round(per_task[task], 1) == pytest.approx(value, abs=0.051), task
    assert mean_aup(per_task, tasks) == pytest.approx(avg, abs=0.051)


def test_points_below_the_floor_are_dropped_with_a_warning():
    points = [(1.0, 80.0), (2.0, 77.0), (4.0, 70.0)]
    with pytest.warns(AUPWarning, match="dropped 1 point"):
        detail = aup_detail(points, y_max=80.0)
    assert detail.dropped == (2,) and detail.kept == (0, 1)
    assert detail.value == pytest.approx(aup(points[:2], y_max=80.0))
    with pytest.raises(ValueError, match="degradation is too large"):
        aup_detail(points, y_max=80.0, strict=True)


def test_a_dip_in_the_middle_is_dropped_even_when_the_reference_assert_passes():
    points = [(4.0, 78.0), (1.0, 80.0), (2.0, 70.0)]  # given unsorted
    with pytest.warns(AUPWarning):
        detail = aup_detail(points, y_max=80.0, strict=True)
    assert detail.kept == (1, 0) and detail.dropped == (2,)


def test_equal_tpf_keeps_the_given_order_like_the_reference():
    a = aup([(1.0, 60.0), (1.0, 62.0), (2.0, 61.0)], y_max=62.0)
    b = aup([(1.0, 62.0), (1.0, 60.0), (2.0, 61.0)], y_max=62.0)
    assert a == pytest.approx(60.0 + 0.5 * (61 * aup_weight(61, 62) + 62))
    assert b == pytest.approx(62.0 + 0.5 * (61 * aup_weight(61, 62) + 60 * aup_weight(60, 62)))


def test_fraction_accuracies_warn_but_zero_percent_does_not():
    with pytest.warns(AUPWarning, match="percent"):
        aup([(1.0, 0.7), (2.0, 0.69)], y_max=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert aup([(1.0, 0.0), (3.0, 0.0)], y_max=0.0) == 0.0  # a model at 0% (y_max 0 has no division)


def test_invalid_points_raise():
    with pytest.raises(ValueError):
        aup([], y_max=50)
    with pytest.raises(ValueError, match="positive"):
        aup([(0.0, 50.0)], y_max=50)


def test_mean_aup_is_a_real_mean_over_an_explicit_list():
    assert mean_aup({"a": 10.0, "b": 20.0, "c": 99.0}, ["a", "b"]) == pytest.approx(15.0)
    assert mean_aup({"a": 10.0}, ["a", "b"]) is None
    with pytest.raises(ValueError):
        mean_aup({"a": 1.0}, [])
