"""Every table of a report: `build()` reads run and sweep folders and computes the leaderboard
rows (seeds merged, superseded runs left out), their speedups against the named or one-token-
per-step baseline, the AUP curves, the per-task ranks and the board, with a note for everything
it left out or could not compare.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dleval.errors import UserError
from dleval.metrics import Summary, speedup, summarize
from dleval.report.curves import BoardEntry, Curve, CurveRows, Scale, board_of, curve_of
from dleval.report.rows import Row, cross_flag, loads_note, pick_runs, row_of, timing_baseline
from dleval.report.runs import Run, find_runs, read_run


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
    table = _rows([r for r in runs if not r.timing_rerun_of], notes)
    tasks = tuple(sorted({r.task for r in table.rows.values()}))
    pinned = dict(y_max or {})
    for task in pinned:
        if task not in tasks:
            raise UserError(f"--y-max names task '{task}', which is not in the report (tasks: {', '.join(tasks)})")
    ymax = {t: pinned.get(t, max(r.accuracy_pct for r in table.rows.values() if r.task == t)) for t in tasks}
    auto = _auto_baselines(table)
    _speedups(table, auto, _named_baselines(table, baselines), reruns, notes)
    ranked = _ranked(_curves(table, auto, Scale(ymax, alpha, y_min_offset, strict), notes), tasks)
    mean_over = tuple(mean_tasks) if mean_tasks else tasks
    for t in mean_over:
        if t not in tasks:
            raise UserError(f"--tasks names '{t}', which is not in the report (tasks: {', '.join(tasks)})")
    return Report(
        rows=tuple(r for c in ranked for r in c.rows),
        curves=tuple(ranked),
        board=board_of(ranked, mean_over, notes),
        tasks=tasks,
        mean_tasks=mean_over,
        y_max=ymax,
        pinned=frozenset(pinned),
        alpha=alpha,
        y_min_offset=y_min_offset,
        notes=tuple(notes),
        runs=tuple(r for g in table.members.values() for r in g),
    )


@dataclass
class _Table:
    """The leaderboard rows by setting key, with the summary and the runs behind each."""

    rows: dict[str, Row]
    summaries: dict[str, Summary]
    members: dict[str, list[Run]]


def _rows(runs: list[Run], notes: list[str]) -> _Table:
    """One row per setting: its runs' records merged (seeds), superseded repeats left out."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.records:
            groups[run.setting_key].append(run)
        else:
            notes.append(f"run {run.run_id} has no finished samples and is left out")
    if not groups:
        raise UserError("no run with finished samples in the given folders")
    table = _Table({}, {}, {})
    for key, group in groups.items():
        used, superseded = pick_runs(group)
        for old in superseded:
            notes.append(f"run {old.run_id} repeats the configuration of a more complete or newer run and is left out")
        records = [rec for r in used for rec in r.records]
        table.summaries[key] = summarize(records)
        table.rows[key] = row_of(used, table.summaries[key])
        table.members[key] = used
        expected = sum(r.expected or 0 for r in used)
        if expected and len(records) < expected:
            notes.append(f"{table.rows[key].run_id} is incomplete: {len(records)} of {expected} samples")
    return table


def _auto_baselines(table: _Table) -> dict[str, str]:
    """The one-token-per-step llada row of each curve key (the most samples): the AUP baseline point."""
    auto: dict[str, str] = {}
    for key, group in table.members.items():
        ck = group[0].curve_key
        if group[0].one_token_per_step and (ck not in auto or table.rows[key].n_samples > table.rows[auto[ck]].n_samples):
            auto[ck] = key
    return auto


def _named_baselines(table: _Table, baselines: Sequence[str]) -> list[str]:
    """The setting keys of the `--baseline` runs (run id, folder name or path)."""
    named = []
    for name in baselines:
        match = [k for k, g in table.members.items() if any(name in (r.run_id, r.path.name) or Path(name).resolve() == r.path for r in g)]
        if not match:
            raise UserError(f"--baseline '{name}' is not one of the runs in the report")
        named.append(match[0])
    return named


def _speedups(table: _Table, auto: dict[str, str], named: list[str], reruns: list[Run], notes: list[str]) -> None:
    """Each row's speedups (in place): against a named baseline run of the same task and samples,
    else its curve's one-token-per-step row; flagged where not measured side by side."""
    rows, summaries, members = table.rows, table.summaries, table.members
    flagged: dict[str, list[str]] = defaultdict(list)
    for key, group in members.items():
        run = group[0]
        base = next((k for k in named if members[k][0].task == run.task and members[k][0].dataset_hash == run.dataset_hash), None)
        base = base or auto.get(run.curve_key)
        if base is not None and base != key:
            timer, timer_summary = timing_baseline(group, members[base], summaries[base], reruns)
            s = speedup(summaries[key], timer_summary, timer[0].run_id)
            flag = cross_flag(group, timer)
            nfe = speedup(summaries[key], summaries[base], rows[base].run_id).nfe
            rows[key] = dataclasses.replace(
                rows[key], speedup_vs_baseline=s.latency, speedup_nfe=nfe, speedup_baseline=s.baseline, speedup_flag=flag
            )
            if flag and s.latency is not None:
                flagged[flag].append(f"{rows[key].run_id} / {s.baseline}{loads_note(group, timer)}")
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


def _curves(table: _Table, auto: dict[str, str], scale: Scale, notes: list[str]) -> list[Curve]:
    """One AUP curve per (curve key, decoder), its baseline point appended where it has one; the
    rows take their curve's values (in place). Curves of one model + decoder on other samples of
    the same task get their size in the label."""
    rows, members = table.rows, table.members
    sample_sets = {key: frozenset(rec.sample_id for r in group for rec in r.records) for key, group in members.items()}
    by_curve: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, group in members.items():
        by_curve[(group[0].curve_key, group[0].decoder)].append(key)
    curves: list[Curve] = []
    for (ck, decoder), keys in sorted(by_curve.items(), key=lambda kv: (rows[kv[1][0]].task, rows[kv[1][0]].model, kv[0][1])):
        base = auto.get(ck)
        extra = base if base is not None and base not in keys else None
        curve_keys = tuple(sorted(keys, key=lambda k: (rows[k].tpf, rows[k].run_id))) + ((extra,) if extra else ())
        curves.append(curve_of(CurveRows(ck, decoder, curve_keys, extra, base is not None), rows, sample_sets, scale, notes))
        for k in keys:
            rows[k] = next(r for r in curves[-1].rows if r.run_id == rows[k].run_id)
    labels = defaultdict(list)
    for i, c in enumerate(curves):
        labels[(c.task, c.label)].append(i)
    for same in (v for v in labels.values() if len(v) > 1):
        for i in same:
            curves[i] = dataclasses.replace(curves[i], label=f"{curves[i].label} (n={curves[i].samples})")
    return curves


def _ranked(curves: list[Curve], tasks: Sequence[str]) -> list[Curve]:
    """Ranks by curve AUP within a task; rows share their curve's rank."""
    ranked: list[Curve] = []
    for task in tasks:
        in_task = sorted((c for c in curves if c.task == task), key=lambda c: -(c.aup.value if c.aup else -1.0))
        for n, c in enumerate(in_task, 1):
            rank = n if c.aup else None
            ranked.append(dataclasses.replace(c, rows=tuple(dataclasses.replace(r, rank=rank) for r in c.rows)))
    return ranked
