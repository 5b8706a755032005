"""Results on disk -> leaderboard.csv, board.csv and one self-contained report.html.

Reads only the files the run loop writes (`config.json` and `samples.jsonl` per run, `sweep.json`
per sweep) and recomputes every metric from the Records with `dleval.metrics`, so a report never
depends on the code version that produced a summary. Conventions (ecosystem.md §4.3-4.4):

- a **row** is one model x decoder x setting x task. Runs of one configuration that differ only
  in their seed are merged (their records concatenated, which is what makes pass@k > 1 defined);
  of several runs with the same config hash the most complete, then newest, is used;
- a **curve** is one model x decoder x task (same samples): the row points (answer TPF,
  accuracy) plus the **baseline point**, the `llada` decoder at one token per step on the same
  model and samples, as d3LLM's board gives every method a full-steps point. TPF is always the
  measured answer TPF (d3LLM's board uses a nominal 1.0 for the full-steps point);
- **AUP** per curve against `y_max` = the best accuracy of any row of that task in the report,
  unless pinned; points below the 5-point floor are dropped with a note that names them;
- **PB80 / PB90** per curve (ParallelBench's PBx, `metrics.pbx`): the largest answer TPF that
  keeps 80 / 90 % of the curve's own best accuracy, over all its points (dropped ones too);
- **speedup** of each row against an explicitly named baseline run (`baselines`), else the
  curve's baseline point; the baseline's run id is written next to the ratio.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dleval import __version__, results
from dleval.errors import UserError
from dleval.metrics import AUP, PB_LEVELS, AUPWarning, Summary, aup_detail, mean_aup, pbx, speedup, summarize
from dleval.types import Record

BASELINE_DECODER = "llada"
CODE_FILTERS = ("raw", "sanitized")  # a code task's filters, reported as pass_at_1_raw / pass_at_1_sanitized


# --- reading results ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run folder as read from disk."""

    path: Path
    run_id: str
    config_hash: str
    created: str
    model: str
    model_fingerprint: str
    dtype: str
    decoder: str
    decoder_config: dict[str, Any]
    task: str
    task_spec: dict[str, Any]
    prompt_style: str
    template_hash: str
    seed: int
    dataset_hash: str
    batch_size: int
    expected: int | None  # samples the run was asked for (summary.json), None when unknown
    environment: dict[str, Any]
    command: tuple[str, ...]
    records: tuple[Record, ...]
    timing_rerun_of: str = ""  # run id whose latency this run re-times (dleval sweep --retime-baseline)
    conditions: dict[str, Any] = field(default_factory=dict)  # machine load when the run started; {} for old runs

    @property
    def invocations(self) -> frozenset[str]:
        """Invocation ids of the Records; "" for Records written before invocation ids."""
        return frozenset(r.invocation for r in self.records)

    @property
    def devices(self) -> frozenset[str]:
        """Devices of the Records (the config's device for Records that predate the field)."""
        fallback = str(self.environment.get("device", ""))
        return frozenset(r.device or fallback for r in self.records)

    @property
    def setting_key(self) -> str:
        """Identity of the row: everything in the config hash but the seed, plus the samples."""
        return _digest(
            [self.decoder, self.decoder_config, self.task_spec, self.model, self.model_fingerprint, self.template_hash, self.dataset_hash]
        )

    @property
    def curve_key(self) -> str:
        return _digest([self.task_spec, self.model, self.model_fingerprint, self.template_hash, self.dataset_hash])

    @property
    def one_token_per_step(self) -> bool:
        steps = self.decoder_config.get("steps")
        return self.decoder == BASELINE_DECODER and (steps is None or steps == self.decoder_config.get("gen_length"))


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def is_run_dir(path: Path) -> bool:
    return results.is_run_dir(path)


def is_sweep_dir(path: Path) -> bool:
    return (path / "sweep.json").is_file()


def read_sweep(path: Path) -> list[Path]:
    """The run folders a sweep record lists (paths are relative to the sweep folder)."""
    try:
        data = json.loads((path / "sweep.json").read_text())
        base = data.get("baseline") or {}
        listed = [p["run_dir"] for p in data["points"]] + [base[k] for k in ("run_dir", "timing_run_dir") if k in base]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path / 'sweep.json'} is not a dleval sweep record ({exc})") from None
    out = []
    for rel in listed:
        run = (path / rel).resolve()
        if not is_run_dir(run):
            raise UserError(f"sweep {path.name} lists {rel}, which is not a run folder (moved or deleted?)")
        out.append(run)
    return out


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run folders named directly, listed by sweep records, or found one or two levels below a folder."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UserError(f"'{path}' does not exist")
        if is_run_dir(path):
            found[path.resolve()] = None
        elif is_sweep_dir(path):
            found.update(dict.fromkeys(read_sweep(path)))
        elif path.is_dir():
            inner = [p for p in sorted(path.iterdir()) if p.is_dir()]
            deeper = [q for p in inner if not is_run_dir(p) and not is_sweep_dir(p) for q in sorted(p.iterdir()) if q.is_dir()]
            hits = [p for p in [*inner, *deeper] if is_run_dir(p) or is_sweep_dir(p)]
            if not hits:
                raise UserError(f"'{path}' holds no run folders (config.json + samples.jsonl) or sweep records (sweep.json)")
            for p in hits:
                if is_run_dir(p):
                    found[p.resolve()] = None
                else:
                    found.update(dict.fromkeys(read_sweep(p)))
        else:
            raise UserError(f"'{path}' is not a run folder, a sweep folder or a folder of them")
    return list(found)


def read_run(path: Path, notes: list[str] | None = None) -> Run:
    """One run folder, its Records read through dleval.results (every shard and samples.jsonl,
    one Record per sample id; bad lines and duplicates skipped with a note appended to `notes`)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
        config_hash = cfg["config_hash"]
        read = results.read_run(path, config_hash)
        if notes is not None:
            notes.extend(read.notes)
        run = Run(
            path=path,
            run_id=cfg.get("run_id", path.name),
            config_hash=config_hash,
            created=cfg.get("created", ""),
            model=cfg["model"]["name"],
            model_fingerprint=cfg["model"].get("fingerprint", ""),
            dtype=cfg["model"].get("dtype", ""),
            decoder=cfg["decoder"]["name"],
            decoder_config=dict(cfg["decoder"]["config"]),
            task=cfg["task"]["name"],
            task_spec=dict(cfg["task"]),
            prompt_style=cfg["prompt"]["style"],
            template_hash=cfg["prompt"].get("template_hash", ""),
            seed=int(cfg.get("seed", 0)),
            dataset_hash=cfg.get("dataset_hash", ""),
            batch_size=int(cfg.get("batch_size", 1)),
            expected=summary.get("samples"),
            environment=dict(cfg.get("environment", {})),
            command=tuple(cfg.get("command", ())),
            records=tuple(read.records),
            timing_rerun_of=str(cfg.get("timing_rerun_of") or ""),
            conditions=dict(cfg.get("conditions") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a readable dleval run ({type(exc).__name__}: {exc})") from None
    return run


# --- the tables -----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Curve:
    """One model x decoder x task: its rows, the points AUP saw and the AUP."""

    key: str
    model: str
    decoder: str
    task: str
    label: str  # "model · decoder"
    rows: tuple[Row, ...]
    points: tuple[tuple[float, float], ...]  # (answer TPF, accuracy %), rows first, then the baseline point
    point_names: tuple[str, ...]
    baseline: Row | None  # the one-token-per-step point added to the curve, if not one of its rows
    aup: AUP | None
    samples: int
    pb: dict[int, float | None] = field(default_factory=dict)  # x -> PBx over every point of the curve


@dataclass(frozen=True)
class BoardCell:
    aup: float
    tpf: float  # of the curve's fastest kept point, shown under the AUP
    accuracy: float
    pb: dict[int, float | None] = field(default_factory=dict)  # x -> PBx of the curve


@dataclass(frozen=True)
class BoardEntry:
    rank: int | None
    model: str
    decoder: str
    cells: dict[str, BoardCell]
    mean_aup: float | None  # over the report's mean task list; None when a task of it is missing
    missing: tuple[str, ...] = ()  # tasks of the mean's list this entry has no AUP on


@dataclass(frozen=True)
class Report:
    rows: tuple[Row, ...]
    curves: tuple[Curve, ...]
    board: tuple[BoardEntry, ...]
    tasks: tuple[str, ...]  # every task, in order
    mean_tasks: tuple[str, ...]  # the explicit list the mean AUP is over
    y_max: dict[str, float]
    pinned: frozenset[str]  # tasks whose y_max was pinned
    alpha: float
    y_min_offset: float
    notes: tuple[str, ...]
    runs: tuple[Run, ...]
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def _pick(runs: list[Run]) -> tuple[list[Run], list[Run]]:
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


def _row(runs: list[Run], summary: Summary) -> Row:
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


def _labels(rows: Sequence[Row]) -> dict[str, str]:
    """Run id -> the decoder parameters that vary among these rows (all of one decoder), as k=v."""
    params = {r.run_id: json.loads(r.decoder_params) for r in rows}
    keys = sorted({k for p in params.values() for k in p})
    varying = [k for k in keys if len({json.dumps(p.get(k)) for p in params.values()}) > 1]
    shown = varying or [k for k in ("threshold", "steps", "gen_length") if k in keys][:1]
    if any(p.get("skip_idle_forward") for p in params.values()) and "skip_idle_forward" not in shown:
        shown.append("skip_idle_forward")  # NFE below what the reference spends: always say so
    return {rid: ", ".join(f"{k}={'default' if p.get(k) is None else p.get(k)}" for k in shown) for rid, p in params.items()}


def build(
    paths: Iterable[Path],
    *,
    mean_tasks: Sequence[str] | None = None,
    y_max: dict[str, float] | None = None,
    baselines: Sequence[str] = (),
    alpha: float = 3.0,
    y_min_offset: float = 5.0,
    strict: bool = False,
) -> Report:
    """Read run / sweep folders and compute every table of the report."""
    notes: list[str] = []
    runs = [read_run(p, notes) for p in find_runs(paths)]
    reruns = [r for r in runs if r.timing_rerun_of and r.records]  # latency only: never a row of their own
    runs = [r for r in runs if not r.timing_rerun_of]
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.records:
            groups[run.setting_key].append(run)
        else:
            notes.append(f"run {run.run_id} has no finished samples and is left out")
    if not groups:
        raise UserError("no run with finished samples in the given folders")
    rows: dict[str, Row] = {}
    summaries: dict[str, Summary] = {}
    members: dict[str, list[Run]] = {}
    for key, group in groups.items():
        used, superseded = _pick(group)
        for old in superseded:
            notes.append(f"run {old.run_id} repeats the configuration of a more complete or newer run and is left out")
        records = [rec for r in used for rec in r.records]
        summaries[key] = summarize(records)
        rows[key] = _row(used, summaries[key])
        members[key] = used
        expected = sum(r.expected or 0 for r in used)
        if expected and len(records) < expected:
            notes.append(f"{rows[key].run_id} is incomplete: {len(records)} of {expected} samples")
    tasks = tuple(sorted({r.task for r in rows.values()}))
    pinned = dict(y_max or {})
    for task in pinned:
        if task not in tasks:
            raise UserError(f"--y-max names task '{task}', which is not in the report (tasks: {', '.join(tasks)})")
    ymax = {t: pinned.get(t, max(r.accuracy_pct for r in rows.values() if r.task == t)) for t in tasks}

    # The one-token-per-step llada row of each curve key: the AUP baseline point.
    auto: dict[str, str] = {}
    for key, group in members.items():
        ck = group[0].curve_key
        if group[0].one_token_per_step and (ck not in auto or rows[key].n_samples > rows[auto[ck]].n_samples):
            auto[ck] = key
    # Speedups: against a named baseline run of the same task and samples, else that row.
    named = []
    for name in baselines:
        match = [k for k, g in members.items() if any(name in (r.run_id, r.path.name) or Path(name).resolve() == r.path for r in g)]
        if not match:
            raise UserError(f"--baseline '{name}' is not one of the runs in the report")
        named.append(match[0])
    flagged: dict[str, list[str]] = defaultdict(list)
    for key, group in members.items():
        run = group[0]
        base = next((k for k in named if members[k][0].task == run.task and members[k][0].dataset_hash == run.dataset_hash), None)
        base = base or auto.get(run.curve_key)
        if base is not None and base != key:
            timer, timer_summary = _timing_baseline(group, members[base], summaries[base], reruns)
            s = speedup(summaries[key], timer_summary, timer[0].run_id)
            flag = _cross_flag(group, timer)
            nfe = speedup(summaries[key], summaries[base], rows[base].run_id).nfe
            rows[key] = dataclasses.replace(
                rows[key], speedup_vs_baseline=s.latency, speedup_nfe=nfe, speedup_baseline=s.baseline, speedup_flag=flag
            )
            if flag and s.latency is not None:
                flagged[flag].append(f"{rows[key].run_id} / {s.baseline}{_loads(group, timer)}")
        elif base == key:  # the baseline row itself: 1.0
            s = speedup(summaries[key], summaries[key], rows[key].run_id)
            rows[key] = dataclasses.replace(rows[key], speedup_vs_baseline=s.latency, speedup_nfe=s.nfe, speedup_baseline=s.baseline)
    for flag, which in flagged.items():
        shown = "; ".join(which[:4]) + (f"; and {len(which) - 4} more" if len(which) > 4 else "")
        notes.append(f"latency speedups not measured side by side ({flag}): {shown}")
    for rerun in reruns:
        notes.append(
            f"run {rerun.run_id} re-times {rerun.timing_rerun_of} (--retime-baseline): its latency is used for speedups measured in its invocation"
        )

    sample_sets = {key: frozenset(rec.sample_id for r in group for rec in r.records) for key, group in members.items()}
    by_curve: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, group in members.items():
        by_curve[(group[0].curve_key, group[0].decoder)].append(key)
    curves: list[Curve] = []
    for (ck, decoder), keys in sorted(by_curve.items(), key=lambda kv: (rows[kv[1][0]].task, rows[kv[1][0]].model, kv[0][1])):
        base = auto.get(ck)
        extra = base if base is not None and base not in keys else None
        curve_keys = sorted(keys, key=lambda k: (rows[k].tpf, rows[k].run_id)) + ([extra] if extra else [])
        curves.append(_curve(ck, decoder, curve_keys, rows, extra, base is not None, ymax, alpha, y_min_offset, strict, notes, sample_sets))
        for k in keys:
            rows[k] = next(r for r in curves[-1].rows if r.run_id == rows[k].run_id)

    # Curves of one model + decoder on other samples of the same task get their size in the label.
    labels = defaultdict(list)
    for i, c in enumerate(curves):
        labels[(c.task, c.label)].append(i)
    for same in (v for v in labels.values() if len(v) > 1):
        for i in same:
            curves[i] = dataclasses.replace(curves[i], label=f"{curves[i].label} (n={curves[i].samples})")

    # Ranks: by curve AUP within a task; rows share their curve's rank.
    ranked: list[Curve] = []
    for task in tasks:
        in_task = sorted((c for c in curves if c.task == task), key=lambda c: -(c.aup.value if c.aup else -1.0))
        for n, c in enumerate(in_task, 1):
            rank = n if c.aup else None
            ranked.append(dataclasses.replace(c, rows=tuple(dataclasses.replace(r, rank=rank) for r in c.rows)))
    mean_over = tuple(mean_tasks) if mean_tasks else tasks
    for t in mean_over:
        if t not in tasks:
            raise UserError(f"--tasks names '{t}', which is not in the report (tasks: {', '.join(tasks)})")
    return Report(
        rows=tuple(r for c in ranked for r in c.rows),
        curves=tuple(ranked),
        board=_board(ranked, mean_over, notes),
        tasks=tasks,
        mean_tasks=mean_over,
        y_max=ymax,
        pinned=frozenset(pinned),
        alpha=alpha,
        y_min_offset=y_min_offset,
        notes=tuple(notes),
        runs=tuple(r for g in members.values() for r in g),
    )


def _timing_baseline(row: list[Run], base: list[Run], base_summary: Summary, reruns: list[Run]) -> tuple[list[Run], Summary]:
    """The runs a row's latency speedup divides by: a re-timing of its baseline (--retime-baseline)
    that shares an invocation with the row, else the baseline row itself."""
    row_inv = frozenset().union(*(r.invocations for r in row)) - {""}
    base_ids = {r.run_id for r in base}
    best, overlap = None, 0
    for rr in reruns:
        if rr.timing_rerun_of in base_ids and rr.config_hash == base[0].config_hash and len(rr.invocations & row_inv) > overlap:
            best, overlap = rr, len(rr.invocations & row_inv)
    return ([best], summarize(list(best.records))) if best is not None else (base, base_summary)


def _cross_flag(row: list[Run], base: list[Run]) -> str:
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


def _loads(row: list[Run], base: list[Run]) -> str:
    """' (load 0.9 vs 3.1)': the 1-minute load averages the two runs started under, when recorded."""
    a, b = (next((r.conditions.get("loadavg") for r in runs if r.conditions.get("loadavg")), None) for runs in (row, base))
    return f" (load {a[0]:g} vs {b[0]:g})" if a and b else ""


def _curve(ck, decoder, keys, rows, extra, has_base, ymax, alpha, y_min_offset, strict, notes, sample_sets) -> Curve:
    """The curve of one model x decoder x task: its rows plus the baseline point, and the AUP."""
    used = [rows[k] for k in keys]
    own = [rows[k] for k in keys if k != extra]
    first = own[0]
    label = f"{first.model} · {decoder}"
    sets = {k: sample_sets[k] for k in keys}
    if len(set(sets.values())) > 1:
        union = frozenset().union(*sets.values())
        short = ", ".join(f"{rows[k].run_id} ({len(v)})" for k, v in sets.items() if v != union)
        notes.append(
            f"{label} on {first.task}: the points do not share one sample set ({len(union)} samples in all; fewer in {short}), "
            "so its accuracies and AUP compare different samples"
        )
    names = _labels(own)
    points = tuple((r.tpf, r.accuracy_pct) for r in used)
    point_names = tuple(names.get(r.run_id, "baseline") for r in used)
    if not has_base:
        notes.append(
            f"{label} on {first.task}: no llada one-token-per-step run on the same model and samples; AUP uses its own points only"
        )
    result: AUP | None = None
    if any(t <= 0 for t, _ in points):
        notes.append(f"{label} on {first.task}: a point has no answer tokens (TPF 0), so the curve has no AUP")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AUPWarning)  # dropped points go into the notes instead
            try:
                result = aup_detail(points, ymax[first.task], alpha, y_min_offset, strict=strict)
            except ValueError as exc:
                raise UserError(f"AUP of {label} on {first.task}: {exc}") from None
        floor = points[result.kept[0]][1] - y_min_offset
        for i in result.dropped:
            notes.append(
                f"{label} on {first.task}: point {point_names[i]} (TPF {points[i][0]:.2f}, {points[i][1]:.2f}%) is below "
                f"the floor {floor:.2f}% and was dropped from the AUP"
            )
    dropped = {used[i].run_id for i in result.dropped} if result else set()
    pb = {x: pbx(points, x) for x in PB_LEVELS} if all(t > 0 for t, _ in points) else {x: None for x in PB_LEVELS}
    final = tuple(
        dataclasses.replace(
            r,
            aup=result.value if result else None,
            pb80=pb.get(80),
            pb90=pb.get(90),
            y_max=ymax[first.task] if result else None,
            aup_alpha=alpha if result else None,
            aup_point=("dropped" if r.run_id in dropped else "kept") if result else "",
        )
        for r in own
    )
    baseline = rows[extra] if extra else None
    samples = max(r.n_samples for r in own)
    return Curve(ck, first.model, decoder, first.task, label, final, points, point_names, baseline, result, samples, pb)


def _board(curves: list[Curve], mean_over: tuple[str, ...], notes: list[str]) -> tuple[BoardEntry, ...]:
    """One entry per model + decoder; where a pair has several curves on a task (different
    samples or prompts), the one with the most samples is on the board."""
    chosen: dict[tuple[str, str], dict[str, Curve]] = defaultdict(dict)
    for c in curves:
        if c.aup is None:
            continue
        cells = chosen[(c.model, c.decoder)]
        if c.task in cells:
            notes.append(f"{c.label} has more than one curve on {c.task}; the board shows the one with the most samples")
            if c.samples <= cells[c.task].samples:
                continue
        cells[c.task] = c
    entries = []
    for (model, decoder), per_task in chosen.items():
        cells = {}
        for task, c in per_task.items():
            assert c.aup is not None
            fastest = max(c.aup.kept, key=lambda i: c.points[i][0])
            cells[task] = BoardCell(c.aup.value, c.points[fastest][0], c.points[fastest][1], dict(c.pb))
        missing = tuple(t for t in mean_over if t not in cells)
        entries.append(BoardEntry(None, model, decoder, cells, mean_aup({t: cell.aup for t, cell in cells.items()}, mean_over), missing))
    # Complete entries are ranked by mean AUP; an entry missing a task of the list is never
    # ranked (a mean over fewer tasks is another number) and is listed after every complete one.
    entries.sort(key=lambda e: (bool(e.missing), len(e.missing), -(e.mean_aup or 0.0), e.model, e.decoder))
    incomplete = [e for e in entries if e.missing]
    if incomplete:
        shown = "; ".join(f"{e.model} · {e.decoder} (no {', '.join(e.missing)})" for e in incomplete[:6])
        more = f"; and {len(incomplete) - 6} more" if len(incomplete) > 6 else ""
        notes.append(
            f"{len(incomplete)} board entr{'y lacks' if len(incomplete) == 1 else 'ies lack'} a task of the mean "
            f"({', '.join(mean_over)}) and {'is' if len(incomplete) == 1 else 'are'} not ranked: {shown}{more}"
        )
    ranked = [e for e in entries if not e.missing]
    return tuple(dataclasses.replace(e, rank=ranked.index(e) + 1 if not e.missing else None) for e in entries)


# --- writing --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else ""
    return str(value)


def write_leaderboard(report: Report, path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for row in report.rows:
            out.writerow([_cell(v) for v in dataclasses.astuple(row)])


def write_board(report: Report, path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "rank",
                "model",
                "decoder",
                "model_decoder",
                *[f"{t}_{m}" for t in report.tasks for m in ("aup", *(f"pb{x}" for x in PB_LEVELS), "tpf", "acc")],
                "avg_aup",
                "avg_tasks",
                "missing_tasks",
            ]
        )
        for e in report.board:
            cells = []
            for t in report.tasks:
                c = e.cells.get(t)
                pbs = [_cell(c.pb.get(x)) for x in PB_LEVELS] if c else [""] * len(PB_LEVELS)
                cells += [_cell(c.aup), *pbs, _cell(c.tpf), _cell(c.accuracy)] if c else ["", *pbs, "", ""]
            out.writerow(
                [
                    _cell(e.rank),
                    e.model,
                    e.decoder,
                    f"{e.model}+{e.decoder}",
                    *cells,
                    _cell(e.mean_aup),
                    ";".join(report.mean_tasks),
                    ";".join(e.missing),
                ]  # fmt: skip
            )


def write(report: Report, out: Path, title: str = "dleval report") -> list[Path]:
    """Write leaderboard.csv, board.csv and report.html into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.csv", out / "board.csv", out / "report.html"]
    write_leaderboard(report, paths[0])
    write_board(report, paths[1])
    paths[2].write_text(render_html(report, out, title), encoding="utf-8")
    return paths


def figure(report: Report, task: str) -> str:
    """Accuracy vs answer TPF for every curve of a task (and vs speedup where timed), as a
    base64 PNG. Drawn on a bare Figure (no pyplot state), Agg canvas, no timestamps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [c for c in report.curves if c.task == task]
    timed = any(r.speedup_vs_baseline for c in curves for r in c.rows)
    fig = Figure(figsize=(10.5 if timed else 6.2, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if timed else 1, squeeze=False)[0]
    y_max = report.y_max[task]
    colors = [f"C{i % 10}" for i in range(len(curves))]
    ax = axes[0]
    for c, color in zip(curves, colors):
        dropped = set(c.aup.dropped) if c.aup else set()
        order = sorted(range(len(c.points)), key=lambda i: c.points[i][0])
        kept = [i for i in order if i not in dropped]
        ax.plot([c.points[i][0] for i in kept], [c.points[i][1] for i in kept], "o-", color=color, label=_legend(c))
        if dropped:
            ax.plot([c.points[i][0] for i in dropped], [c.points[i][1] for i in dropped], "x", color=color, markersize=9)
    ax.set_xlabel("answer tokens per forward (TPF)")
    ax.set_title(f"{task}: accuracy vs TPF")
    if len(axes) > 1:
        bx = axes[1]
        for c, color in zip(curves, colors):
            pts = sorted((r.speedup_vs_baseline, r.accuracy_pct) for r in c.rows if r.speedup_vs_baseline)
            if pts:
                bx.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=c.label)
        bx.set_xlabel("speedup vs baseline (latency, x)")
        bx.set_title(f"{task}: accuracy vs speedup")
    for a in axes:
        a.axhline(y_max, color="0.35", linestyle="--", linewidth=1)
        a.axhspan(y_max - report.y_min_offset, y_max, color="0.85", alpha=0.5, linewidth=0)
        a.set_ylabel("accuracy (%)")
        a.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", title=f"y_max {y_max:.2f}% ({'pinned' if task in report.pinned else 'pool max'})", title_fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _legend(c: Curve) -> str:
    return f"{c.label}  AUP {c.aup.value:.1f}" if c.aup else c.label


def render_html(report: Report, out: Path, title: str) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, digits=2: "" if v is None else f"{v:.{digits}f}"
    paths = {run.run_id: run.path for run in report.runs}
    tasks = []
    for task in report.tasks:
        lines = []
        for c in (c for c in report.curves if c.task == task):
            names = _labels(c.rows)
            for r in c.rows:
                link = os.path.relpath(paths[r.run_id] / "samples.jsonl", out)
                lines.append({"row": r, "curve": c, "setting": names[r.run_id], "samples": link, "baseline_point": False})
            if c.baseline is not None:
                lines.append({"row": c.baseline, "curve": c, "setting": "one token per step", "samples": "", "baseline_point": True})
        tasks.append(
            {"name": task, "png": figure(report, task), "lines": lines, "y_max": report.y_max[task], "pinned": task in report.pinned}
        )
    runs = sorted(report.runs, key=lambda r: r.run_id)
    return env.get_template("report.html.j2").render(
        title=title,
        report=report,
        tasks=tasks,
        runs=runs,
        configs={r.run_id: json.dumps(r.decoder_config, sort_keys=True) for r in runs},
        version=__version__,
    )
