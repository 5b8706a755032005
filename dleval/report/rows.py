"""A leaderboard row: the runs of one setting (seeds merged) -> one `Row` of leaderboard.csv, and
the facts its latency speedup needs (which baseline run timed it, whether the two were timed side
by side, under what load).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dleval.metrics import Summary, summarize
from dleval.report.runs import Run

CODE_FILTERS = ("raw", "sanitized")  # a code task's filters, reported as pass_at_1_raw / pass_at_1_sanitized


@dataclass(frozen=True)
class Row:
    """One line of leaderboard.csv: the field order is the column order (ecosystem.md §4.3)."""

    rank: int | None
    model: str
    base_model: str
    decoder: str
    decoder_params: str  # JSON of the resolved decoder config
    config_hash: str
    run_id: str
    task: str
    n_shot: int
    prompt_variant: str  # prompt style : template hash
    filter: str
    n_samples: int
    errors: int
    accuracy_pct: float
    accuracy_stderr: float
    pass_at_1_raw: float | None
    pass_at_1_sanitized: float | None
    pass_at_k: str  # JSON {k: percent} for every k that all problems support
    gen_length: int | None
    block_length: int | None
    steps_budget: int | None
    avg_nfe: float
    nfe_p50: float
    nfe_max: int
    avg_gen_tokens: float  # canvas positions committed (net of revocations)
    avg_revoked: float  # committed tokens a decoder revoked per sample (WINO); metrics.py defines the edit counts
    avg_rewritten: float  # commits per sample that replaced an earlier, different token
    avg_answer_tokens: float
    tpf: float  # answer TPF, sum of answer tokens / sum of NFE (the AUP definition)
    tpf_mean: float  # mean of per-sample answer TPF
    canvas_tpf: float
    latency_s_mean: float | None  # None when every sample was warm-up
    latency_s_p50: float | None
    latency_s_p90: float | None
    tps_per_gpu: float | None
    speedup_vs_baseline: float | None  # by mean latency
    speedup_nfe: float | None  # by mean NFE
    speedup_baseline: str  # run id of the row the speedups divide by
    speedup_flag: str  # "" when row and baseline were timed in one invocation on one device, else why the ratio is not side by side
    gpu: str
    batch_size: int
    dtype: str
    backend: str
    warmup: int  # samples excluded from timing
    aup: float | None  # of the curve this row belongs to
    pb80: float | None  # PBx of the curve: largest answer TPF keeping 80 % of its best accuracy
    pb90: float | None
    y_max: float | None
    aup_alpha: float | None
    aup_point: str  # kept | dropped (below the floor)
    dleval_version: str
    git_hash: str
    date: str
    seeds: str
    runs: str  # run ids merged into the row


COLUMNS = [f.name for f in dataclasses.fields(Row)]


def pick_runs(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """Per config hash keep the most complete, then newest run; returns (used, superseded)."""
    by_hash: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_hash[run.config_hash].append(run)
    used, superseded = [], []
    for group in by_hash.values():
        group.sort(key=lambda r: (len(r.records), r.created, r.run_id), reverse=True)
        used.append(group[0])
        superseded.extend(group[1:])
    return sorted(used, key=lambda r: r.seed), superseded


def _num(x: Any) -> int | None:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def row_of(runs: list[Run], summary: Summary) -> Row:
    first = runs[0]
    cfg = first.decoder_config
    steps = _num(cfg.get("steps"))
    if steps is None and "steps" in cfg:
        steps = _num(cfg.get("gen_length"))  # steps=None means one token per forward
    env = first.environment
    filters = summary.filters
    return Row(
        rank=None,
        model=first.model,
        base_model="",
        decoder=first.decoder,
        decoder_params=json.dumps(cfg, sort_keys=True),
        config_hash=first.config_hash,
        run_id=first.run_id,
        task=first.task,
        n_shot=int(first.task_spec.get("prompt", {}).get("shots", 0)),
        prompt_variant=f"{first.prompt_style}:{first.template_hash}",
        filter=str(first.task_spec.get("scoring", {}).get("primary", "")),
        n_samples=summary.n,
        errors=summary.errors,
        accuracy_pct=summary.accuracy,
        accuracy_stderr=summary.accuracy_stderr,
        pass_at_1_raw=filters.get(CODE_FILTERS[0]),
        pass_at_1_sanitized=filters.get(CODE_FILTERS[1]),
        pass_at_k=json.dumps({str(k): round(v, 4) for k, v in summary.pass_at_k.items()}),
        gen_length=_num(cfg.get("gen_length")),
        block_length=_num(cfg.get("block_length")),
        steps_budget=steps,
        avg_nfe=summary.nfe_mean,
        nfe_p50=summary.nfe_p50,
        nfe_max=summary.nfe_max,
        avg_gen_tokens=summary.gen_tokens_mean,
        avg_revoked=summary.revoked_mean,
        avg_rewritten=summary.rewritten_mean,
        avg_answer_tokens=summary.answer_tokens_mean,
        tpf=summary.answer_tpf,
        tpf_mean=summary.answer_tpf_mean,
        canvas_tpf=summary.canvas_tpf,
        latency_s_mean=summary.latency_mean if summary.timed else None,
        latency_s_p50=summary.latency_p50 if summary.timed else None,
        latency_s_p90=summary.latency_p90 if summary.timed else None,
        tps_per_gpu=summary.tps if summary.timed else None,
        speedup_vs_baseline=None,
        speedup_nfe=None,
        speedup_baseline="",
        speedup_flag="",
        gpu=str(env.get("device", "")),
        batch_size=first.batch_size,
        dtype=first.dtype,
        backend="native",
        warmup=sum(1 for r in runs for rec in r.records if rec.warmup),
        aup=None,
        pb80=None,
        pb90=None,
        y_max=None,
        aup_alpha=None,
        aup_point="",
        dleval_version=str(env.get("dleval", "")),
        git_hash=str(env.get("git_sha", "")),
        date=max(r.created for r in runs),
        seeds=",".join(str(r.seed) for r in runs),
        runs=",".join(r.run_id for r in runs),
    )


def setting_labels(rows: Sequence[Row]) -> dict[str, str]:
    """Run id -> the decoder parameters that vary among these rows (all of one decoder), as k=v."""
    params = {r.run_id: json.loads(r.decoder_params) for r in rows}
    keys = sorted({k for p in params.values() for k in p})
    varying = [k for k in keys if len({json.dumps(p.get(k)) for p in params.values()}) > 1]
    shown = varying or [k for k in ("threshold", "steps", "gen_length") if k in keys][:1]
    if any(p.get("skip_idle_forward") for p in params.values()) and "skip_idle_forward" not in shown:
        shown.append("skip_idle_forward")  # NFE below what the reference spends: always say so
    return {rid: ", ".join(f"{k}={'default' if p.get(k) is None else p.get(k)}" for k in shown) for rid, p in params.items()}


def timing_baseline(row: list[Run], base: list[Run], base_summary: Summary, reruns: list[Run]) -> tuple[list[Run], Summary]:
    """The runs a row's latency speedup divides by: a re-timing of its baseline (--retime-baseline)
    that shares an invocation with the row, else the baseline row itself."""
    row_inv = frozenset().union(*(r.invocations for r in row)) - {""}
    base_ids = {r.run_id for r in base}
    best, overlap = None, 0
    for rr in reruns:
        if rr.timing_rerun_of in base_ids and rr.config_hash == base[0].config_hash and len(rr.invocations & row_inv) > overlap:
            best, overlap = rr, len(rr.invocations & row_inv)
    return ([best], summarize(list(best.records))) if best is not None else (base, base_summary)


def cross_flag(row: list[Run], base: list[Run]) -> str:
    """Why a latency ratio of row / base is not side by side ("" when it is): timed on different
    devices, in different invocations (other times, other load), or unknown for runs written
    before Records carried their invocation."""
    row_dev = frozenset().union(*(r.devices for r in row))
    base_dev = frozenset().union(*(r.devices for r in base))
    if row_dev and base_dev and row_dev != base_dev:
        return f"different devices: {', '.join(sorted(row_dev))} vs {', '.join(sorted(base_dev))}"
    row_inv = frozenset().union(*(r.invocations for r in row))
    base_inv = frozenset().union(*(r.invocations for r in base))
    if "" in row_inv or "" in base_inv:
        return "unknown: runs written before invocation ids"
    if row_inv != base_inv:
        return "different invocations"
    return ""


def loads_note(row: list[Run], base: list[Run]) -> str:
    """' (load 0.9 vs 3.1)': the 1-minute load averages the two runs started under, when recorded."""
    a, b = (next((r.conditions.get("loadavg") for r in runs if r.conditions.get("loadavg")), None) for runs in (row, base))
    return f" (load {a[0]:g} vs {b[0]:g})" if a and b else ""
