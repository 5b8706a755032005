"""Sweeps: grids of decoder settings run through the run loop.

`run_sweep` runs the cross product of comma-separated `-D` lists (`threshold=0.3,0.5` x
`block_length=16,32`), each point a normal run that resumes a finished or partial run of the
same configuration, plus the **baseline point** (the `llada` decoder at one token per step with
the same model, task, samples and gen_length), and records the curve in
`results/sweeps/<id>/sweep.json` (run folders relative to it, so `dleval report` can read it).
The regression gate that reruns pinned sweeps is `dleval.gate`.
"""

from __future__ import annotations

import itertools
import os
import sys
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dleval import decoders, report, results, tasks
from dleval.errors import UserError
from dleval.identity import digest
from dleval.metrics import AUPWarning, Summary, aup_detail
from dleval.ranks import Ranks, detect
from dleval.resolve import choose_model, decoder_config
from dleval.run import Interrupted, RunRequest, RunResult, run

FORMAT_VERSION = 1
TIMING_DIR = "timing"  # under the runs folder: baseline re-timings, out of reach of --resume's folder search
Log = Callable[[str], None]


@dataclass(frozen=True)
class SweepRequest:
    decoder: str
    task: str
    axes: dict[str, tuple[str, ...]]  # -D key -> the values to sweep (one value = fixed)
    model: str | None = None
    model_family: str = "llada"  # as RunRequest.model_family
    limit: int | None = None
    batch_size: int = 8
    task_args: dict[str, Any] = field(default_factory=dict)
    runs_dir: Path = Path("results/runs")
    sweeps_dir: Path = Path("results/sweeps")
    data_dir: Path | None = None
    seed: int = 1234
    device: str | None = None
    progress: bool = True
    baseline: bool = True
    retime_baseline: bool = False  # re-time the baseline point in this invocation (see run_sweep)
    resume: bool = True
    compile: bool = False  # torch.compile the model forward of every point
    ranks: Ranks | None = None  # None: from the environment; under a launcher every point is sharded over all ranks
    too_long: str = "error"
    longest_first: bool = False
    merge_timeout: float = 3600.0


@dataclass(frozen=True)
class SweepPoint:
    settings: dict[str, str]
    result: RunResult

    @property
    def summary(self) -> Summary:
        return self.result.summary


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    model: str
    points: tuple[SweepPoint, ...]
    baseline: SweepPoint | None  # may be one of `points` (llada swept through one token per step)
    baseline_timing: SweepPoint | None = None  # the baseline re-timed in this invocation (--retime-baseline)

    @property
    def speedup_base(self) -> SweepPoint | None:
        """The point latency speedups divide by: the side-by-side re-timing when there is one."""
        return self.baseline_timing or self.baseline


def split_axes(decoder: str, decoder_args: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """{'threshold': '0.3,0.4'} -> {'threshold': ('0.3', '0.4')}; tuple-typed fields stay whole."""
    module = decoders.load(decoder)
    hints = typing.get_type_hints(module.Config)
    axes = {}
    for key, value in decoder_args.items():
        if typing.get_origin(hints.get(key)) is tuple:
            axes[key] = (value,)
            continue
        values = tuple(v.strip() for v in value.split(","))
        if any(not v for v in values):
            raise UserError(f"-D {key}={value} has an empty value in its list")
        axes[key] = tuple(dict.fromkeys(values))
    return axes


def grid(axes: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """The cross product of the axes, in the order given (the last axis varies fastest)."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _one_token_per_step(name: str, cfg: Any) -> bool:
    return name == report.BASELINE_DECODER and getattr(cfg, "total_steps", None) == getattr(cfg, "gen_length", None)


def _baseline_args(cfg: Any, spec: tasks.TaskSpec) -> dict[str, Any]:
    """The llada one-token-per-step configuration matching a swept decoder's canvas."""
    llada = decoders.load(report.BASELINE_DECODER)
    args = {k: getattr(cfg, k) for k in ("gen_length", "block_length") if hasattr(cfg, k)}
    for attempt in (args, {k: v for k, v in args.items() if k == "gen_length"}, {}):
        try:
            decoder_config(llada, spec.generation, attempt, report.BASELINE_DECODER)
            return dict(attempt)
        except UserError:
            continue
    return {}


def sweep_id(req: SweepRequest, model: str) -> str:
    key = [req.decoder, req.task, model, req.axes, req.limit, req.seed, req.task_args, req.batch_size, req.baseline]
    return f"{req.task}_{req.decoder}_{Path(model).name}_{digest(key)[:10]}"


def run_sweep(req: SweepRequest, log: Log = print) -> SweepResult:
    """Run every point of the grid (and the baseline), writing sweep.json as points finish.

    With `retime_baseline`, a baseline point whose samples were (partly) timed by an earlier
    invocation is decoded again after the points, as a fresh run under
    `<runs_dir>/timing/` whose config.json names the run it re-times (`timing_rerun_of`): the
    earlier run's files are never touched, and the sweep's latency speedups divide by a
    baseline measured in the same invocation, under the same load (sweep.json: `timing_run_dir`).

    Under a launcher every rank runs every point on its share of the samples (one invocation
    id for all points); rank 0 merges each point after the others' done flags and alone
    writes sweep.json, which lists the merged run folders."""
    where = req.ranks or detect()
    info = decoders.info(req.decoder, req.model_family)
    module = decoders.load(info.name)
    spec = tasks.load_task(req.task, req.task_args)
    points = grid(req.axes) or [{}]
    configs = [decoder_config(module, spec.generation, p, info.name) for p in points]  # bad values fail before any run
    model = choose_model(req.model, info, log)
    sweep_dir = req.sweeps_dir / sweep_id(req, model)
    base_index = next((i for i, c in enumerate(configs) if _one_token_per_step(info.name, c)), None)
    base_args = _baseline_args(configs[0], spec) if req.baseline and base_index is None else None
    if base_args is not None and len({getattr(c, "gen_length", None) for c in configs}) > 1:
        log(f"the sweep varies gen_length; the baseline point uses the first one ({base_args.get('gen_length')})")

    def one(decoder: str, settings: dict[str, Any]) -> RunResult:
        return run(
            RunRequest(
                decoder=decoder, task=req.task, model=model, limit=req.limit, batch_size=req.batch_size, decoder_args=dict(settings),
                task_args=dict(req.task_args), resume=req.resume, out_dir=req.runs_dir, data_dir=req.data_dir, seed=req.seed,
                device=req.device, progress=req.progress, ranks=where, too_long=req.too_long, longest_first=req.longest_first,
                merge_timeout=req.merge_timeout, compile=req.compile,
            ),
            log=log,
        )  # fmt: skip

    def retime(point: SweepPoint) -> SweepPoint | None:
        timed = {r.invocation for p in done if p is not point for r in p.result.records}
        if {r.invocation for r in point.result.records} == {where.invocation}:
            log(f"sweep {sweep_dir.name}: the baseline point was timed in this invocation; no re-timing needed")
            return None
        if where.invocation not in timed:
            log(
                f"sweep {sweep_dir.name}: every point was resumed from earlier runs, so a re-timed baseline would not be "
                "side by side with them; --fresh re-times the whole sweep"
            )
            return None
        log(f"sweep {sweep_dir.name}: re-timing the baseline point ({point.result.run_dir.name}) side by side with the sweep")
        req_timing = RunRequest(
            decoder=report.BASELINE_DECODER, task=req.task, model=model, limit=req.limit, batch_size=req.batch_size,
            decoder_args=dict(point.settings), task_args=dict(req.task_args), resume=False, out_dir=req.runs_dir / TIMING_DIR,
            data_dir=req.data_dir, seed=req.seed, device=req.device, progress=req.progress, ranks=where, too_long=req.too_long,
            longest_first=req.longest_first, merge_timeout=req.merge_timeout, timing_rerun_of=point.result.run_dir.name,
        )  # fmt: skip
        return SweepPoint(point.settings, run(req_timing, log=log))

    def record(complete: bool) -> None:
        if where.rank == 0:
            _write_record(sweep_dir, req, info.name, model, done, baseline, complete=complete, where=where, timing=timing)

    done: list[SweepPoint] = []
    baseline: SweepPoint | None = None
    timing: SweepPoint | None = None
    if where.rank == 0:
        sweep_dir.mkdir(parents=True, exist_ok=True)  # an unwritable --sweeps-out fails before any run
    try:
        if base_args is not None:
            log(f"sweep {sweep_dir.name}: baseline point (llada, one token per step)")
            baseline = SweepPoint({k: str(v) for k, v in base_args.items()}, one(report.BASELINE_DECODER, base_args))
        for n, settings in enumerate(points, 1):
            shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
            log(f"sweep {sweep_dir.name}: point {n}/{len(points)}: {shown}")
            done.append(SweepPoint(settings, one(info.name, settings)))
            if base_index == n - 1 and req.baseline:
                baseline = done[-1]
            record(complete=False)
        if req.retime_baseline and baseline is not None:
            timing = retime(baseline)
    except Interrupted:
        record(complete=False)
        raise
    record(complete=True)
    return SweepResult(sweep_dir, model, tuple(done), baseline, timing)


def curve_points(result: SweepResult) -> list[tuple[float, float]]:
    """(answer TPF, accuracy %) of the baseline point (unless it is one of the points) and every point."""
    pts = [(p.summary.answer_tpf, p.summary.accuracy) for p in result.points]
    if result.baseline is not None and all(p is not result.baseline for p in result.points):
        pts.insert(0, (result.baseline.summary.answer_tpf, result.baseline.summary.accuracy))
    return pts


def curve_aup(result: SweepResult, y_max: float, alpha: float = 3.0) -> float | None:
    """AUP of a sweep's curve against `y_max` (dropped points silently: they are part of the
    number being pinned); None when a point has no answer tokens, so TPF 0."""
    points = curve_points(result)
    if any(t <= 0 for t, _ in points):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AUPWarning)
        return aup_detail(points, y_max, alpha).value


def setting_label(settings: dict[str, str]) -> str:
    """`threshold=0.5, block_length=32`, or `defaults` for no settings."""
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def format_sweep(result: SweepResult) -> str:
    """One line per point (the baseline first) and the curve's AUP against this sweep's best."""
    rows = [("baseline", result.baseline)] if result.baseline and all(p is not result.baseline for p in result.points) else []
    if result.baseline_timing is not None:
        rows.append(("baseline re-timed", result.baseline_timing))
    rows += [(setting_label(p.settings), p) for p in result.points]
    base = result.speedup_base.summary if result.speedup_base else None
    width = max(len(name) for name, _ in rows)
    decoder = result.points[0].result.config["decoder"]["name"]
    out = [
        f"{result.points[0].result.config['task']['name']} · {decoder} · {result.model}   sweep {result.sweep_dir}",
        f"  {'setting':<{width}}  {'accuracy %':>10}  {'mean NFE':>8}  {'TPF':>6}  {'latency s':>9}  {'speedup':>7}",
    ]
    base_inv = {r.invocation for r in result.speedup_base.result.records} if result.speedup_base else set()
    crossed = False
    for name, p in rows:
        s = p.summary
        sp = f"{base.latency_mean / s.latency_mean:.2f}x" if base and s.latency_mean > 0 and base.latency_mean > 0 else "–"
        if sp != "–" and {r.invocation for r in p.result.records} != base_inv:
            sp, crossed = sp + "*", True
        out.append(f"  {name:<{width}}  {s.accuracy:10.2f}  {s.nfe_mean:8.2f}  {s.answer_tpf:6.2f}  {s.latency_mean:9.3f}  {sp:>7}")
    points = curve_points(result)
    if all(t > 0 for t, _ in points):
        y_max = max(y for _, y in points)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AUPWarning)
            curve = aup_detail(points, y_max)
        dropped = f"; {len(curve.dropped)} point(s) below the 5-point floor dropped" if curve.dropped else ""
        out.append(f"  AUP {curve.value:.2f} against y_max {y_max:.2f} (this sweep's best; `dleval report` uses its whole pool){dropped}")
    if result.baseline_timing is not None:
        out.append(f"  speedups divide by the baseline re-timed in this invocation ({result.baseline_timing.result.run_dir})")
    if crossed:
        out.append(
            "  * latencies measured in different invocations (other times, maybe other load): not a side-by-side ratio"
            + ("" if result.baseline_timing else "; --retime-baseline (or --fresh) times them together")
        )
    return "\n".join(out)


def _point_record(point: SweepPoint, sweep_dir: Path, timing: SweepPoint | None = None) -> dict[str, Any]:
    s = point.summary
    retimed = {}
    if timing is not None:  # the baseline's side-by-side re-timing: the latency speedups divide by it
        retimed = {
            "timing_run_dir": os.path.relpath(timing.result.run_dir.resolve(), sweep_dir.resolve()),
            "timing_latency_mean": timing.summary.latency_mean,
        }
    return {
        "settings": point.settings,
        "run_dir": os.path.relpath(point.result.run_dir.resolve(), sweep_dir.resolve()),
        "complete": point.result.complete,
        "merged": point.result.merged,
        "accuracy": s.accuracy,
        "accuracy_stderr": s.accuracy_stderr,
        "answer_tpf": s.answer_tpf,
        "nfe_mean": s.nfe_mean,
        "latency_mean": s.latency_mean,
        **retimed,
    }


def _write_record(
    sweep_dir: Path, req: SweepRequest, decoder: str, model: str, points, baseline, complete: bool, where: Ranks, timing=None
) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format_version": FORMAT_VERSION,
        "sweep_id": sweep_dir.name,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "complete": complete,
        "invocation": where.invocation,
        "world_size": where.world_size,
        "decoder": decoder,
        "task": req.task,
        "model": model,
        "limit": req.limit,
        "seed": req.seed,
        "batch_size": req.batch_size,
        "task_args": req.task_args,
        "axes": {k: list(v) for k, v in req.axes.items()},
        "baseline": _point_record(baseline, sweep_dir, timing) if baseline is not None else None,
        "points": [_point_record(p, sweep_dir) for p in points],
    }
    results.write_json_atomic(sweep_dir / "sweep.json", record)
