"""Sweeps and the CI regression gate: grids of decoder settings run through the run loop.

`run_sweep` runs the cross product of comma-separated `-D` lists (`threshold=0.3,0.5` x
`block_length=16,32`), each point a normal run that resumes a finished or partial run of the
same configuration, plus the **baseline point** (the `llada` decoder at one token per step with
the same model, task, samples and gen_length), and records the curve in
`results/sweeps/<id>/sweep.json` (run folders relative to it, so `dleval report` can read it).

`check` is the regression gate. A reference file (`results/reference/*.json`) pins tiny-model
sweeps on a fixed subset of a task, the pool's `y_max`, the measured accuracy, mean NFE and
AUP of every point and curve, and the tolerances. `check` reruns those sweeps in a scratch
folder and compares; `update=True` regenerates the file on purpose (and adds every decoder the
registry has but the file lacks, at its default settings), keeping axes and tolerances.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dleval import decoders, report, tasks
from dleval.errors import UserError
from dleval.metrics import AUPWarning, Summary, aup_detail
from dleval.run import Interrupted, RunRequest, RunResult, choose_model, decoder_config, run

FORMAT_VERSION = 1
Log = Callable[[str], None]


# --- sweeps ---------------------------------------------------------------------------------


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
    resume: bool = True


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
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{req.task}_{req.decoder}_{Path(model).name}_{digest}"


def run_sweep(req: SweepRequest, log: Log = print) -> SweepResult:
    """Run every point of the grid (and the baseline), writing sweep.json as points finish."""
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
                device=req.device, progress=req.progress,
            ),
            log=log,
        )  # fmt: skip

    done: list[SweepPoint] = []
    baseline: SweepPoint | None = None
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
            _write_record(sweep_dir, req, info.name, model, done, baseline, complete=False)
    except Interrupted:
        _write_record(sweep_dir, req, info.name, model, done, baseline, complete=False)
        raise
    _write_record(sweep_dir, req, info.name, model, done, baseline, complete=True)
    return SweepResult(sweep_dir, model, tuple(done), baseline)


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


def aup_band(points: list[tuple[float, float]], y_max: float, alpha: float, accuracy_tol: float) -> tuple[float, float]:
    """The range of AUP over curves whose accuracies each lie within `accuracy_tol` points of
    `points` (TPFs fixed): the AUP tolerance that the per-point accuracy tolerance implies.

    AUP is not continuous in the accuracies: a point that falls below the floor (the first
    point's accuracy minus 5) is dropped with its area, so a fixed relative AUP tolerance fails
    on sampling noise the accuracy checks accept. AUP rises with every accuracy except the first
    one's, which also lifts the floor; so the other accuracies take -tol, 0 or +tol, and the first
    one those values plus every floor crossing inside its interval.
    """
    if any(t <= 0 for t, _ in points):
        return (0.0, 0.0)
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    first, rest = order[0], order[1:]
    y1 = points[first][1]
    offsets = (-accuracy_tol, 0.0, accuracy_tol) if len(rest) <= 7 else (-accuracy_tol, accuracy_tol)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AUPWarning)
        for shift in itertools.product(offsets, repeat=len(rest)):
            ys = {i: min(100.0, max(0.0, points[i][1] + d)) for i, d in zip(rest, shift)}
            firsts = {y1 + d for d in offsets} | {ys[i] + 5.0 for i in rest if abs(ys[i] + 5.0 - y1) <= accuracy_tol}
            for f in firsts:
                ys[first] = min(100.0, max(0.0, f))
                values.append(aup_detail([(points[i][0], ys[i]) for i in range(len(points))], y_max, alpha).value)
    return min(values), max(values)


def format_sweep(result: SweepResult) -> str:
    """One line per point (the baseline first) and the curve's AUP against this sweep's best."""
    rows = [("baseline", result.baseline)] if result.baseline and all(p is not result.baseline for p in result.points) else []
    rows += [(_setting(p.settings), p) for p in result.points]
    base = result.baseline.summary if result.baseline else None
    width = max(len(name) for name, _ in rows)
    decoder = result.points[0].result.config["decoder"]["name"]
    out = [
        f"{result.points[0].result.config['task']['name']} · {decoder} · {result.model}   sweep {result.sweep_dir}",
        f"  {'setting':<{width}}  {'accuracy %':>10}  {'mean NFE':>8}  {'TPF':>6}  {'latency s':>9}  {'speedup':>7}",
    ]
    for name, p in rows:
        s = p.summary
        sp = f"{base.latency_mean / s.latency_mean:.2f}x" if base and s.latency_mean > 0 and base.latency_mean > 0 else "–"
        out.append(f"  {name:<{width}}  {s.accuracy:10.2f}  {s.nfe_mean:8.2f}  {s.answer_tpf:6.2f}  {s.latency_mean:9.3f}  {sp:>7}")
    points = curve_points(result)
    if all(t > 0 for t, _ in points):
        y_max = max(y for _, y in points)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AUPWarning)
            curve = aup_detail(points, y_max)
        dropped = f"; {len(curve.dropped)} point(s) below the 5-point floor dropped" if curve.dropped else ""
        out.append(f"  AUP {curve.value:.2f} against y_max {y_max:.2f} (this sweep's best; `dleval report` uses its whole pool){dropped}")
    return "\n".join(out)


def _point_record(point: SweepPoint, sweep_dir: Path) -> dict[str, Any]:
    s = point.summary
    return {
        "settings": point.settings,
        "run_dir": os.path.relpath(point.result.run_dir.resolve(), sweep_dir.resolve()),
        "complete": point.result.complete,
        "accuracy": s.accuracy,
        "accuracy_stderr": s.accuracy_stderr,
        "answer_tpf": s.answer_tpf,
        "nfe_mean": s.nfe_mean,
        "latency_mean": s.latency_mean,
    }


def _write_record(sweep_dir: Path, req: SweepRequest, decoder: str, model: str, points, baseline, complete: bool) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format_version": FORMAT_VERSION,
        "sweep_id": sweep_dir.name,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "complete": complete,
        "decoder": decoder,
        "task": req.task,
        "model": model,
        "limit": req.limit,
        "seed": req.seed,
        "batch_size": req.batch_size,
        "task_args": req.task_args,
        "axes": {k: list(v) for k, v in req.axes.items()},
        "baseline": _point_record(baseline, sweep_dir) if baseline is not None else None,
        "points": [_point_record(p, sweep_dir) for p in points],
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")


# --- the regression gate --------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    accuracy_pct: float  # absolute, in percentage points
    nfe_rel: float  # relative to the reference mean NFE
    aup_rel: float  # relative to the reference AUP ...
    aup_abs: float  # ... or this absolute amount, whichever is larger


@dataclass(frozen=True)
class PinnedPoint:
    settings: dict[str, str]
    accuracy_pct: float
    nfe_mean: float
    answer_tpf: float


@dataclass(frozen=True)
class PinnedSweep:
    decoder: str
    model: str
    axes: dict[str, tuple[str, ...]]
    points: tuple[PinnedPoint, ...] = ()
    aup: float | None = None


@dataclass(frozen=True)
class Reference:
    path: Path
    task: str
    task_args: dict[str, Any]
    limit: int
    seed: int
    batch_size: int
    y_max: float | None  # None until the first --update
    alpha: float
    tolerance: Tolerance
    fingerprints: dict[str, str]  # model -> fingerprint the numbers were measured with
    baselines: dict[str, PinnedPoint]  # model -> its llada one-token-per-step point
    sweeps: tuple[PinnedSweep, ...]
    raw: dict[str, Any]  # the file as read, so --update keeps what it does not manage


def _pinned_point(d: dict[str, Any]) -> PinnedPoint:
    return PinnedPoint(
        {k: str(v) for k, v in d.get("settings", {}).items()}, float(d["accuracy_pct"]), float(d["nfe_mean"]), float(d["answer_tpf"])
    )


def load_reference(path: Path) -> Reference:
    if not path.is_file():
        raise UserError(f"reference file '{path}' does not exist")
    try:
        raw = json.loads(path.read_text())
        limit = int(raw["limit"])
        tol = raw.get("tolerance", {})
        return Reference(
            path=path,
            task=raw["task"],
            task_args=dict(raw.get("task_args", {})),
            limit=limit,
            seed=int(raw.get("seed", 1234)),
            batch_size=int(raw.get("batch_size", 8)),
            y_max=None if raw.get("y_max") is None else float(raw["y_max"]),
            alpha=float(raw.get("alpha", 3.0)),
            tolerance=Tolerance(
                accuracy_pct=float(tol.get("accuracy_pct", round(200.0 / limit, 2))),  # two samples' worth
                nfe_rel=float(tol.get("nfe_rel", 0.02)),
                aup_rel=float(tol.get("aup_rel", 0.05)),
                aup_abs=float(tol.get("aup_abs", 1.0)),
            ),
            fingerprints={k: str(v) for k, v in raw.get("fingerprints", {}).items()},
            baselines={b["model"]: _pinned_point(b) for b in raw.get("baselines", [])},
            sweeps=tuple(
                PinnedSweep(
                    decoder=s["decoder"],
                    model=s.get("model", raw.get("model", "tiny")),
                    axes={k: tuple(str(x) for x in (v if isinstance(v, list) else [v])) for k, v in s.get("axes", {}).items()},
                    points=tuple(_pinned_point(p) for p in s.get("points", [])),
                    aup=None if s.get("aup") is None else float(s["aup"]),
                )
                for s in raw["sweeps"]
            ),
            raw=raw,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"'{path}' is not a dleval reference file ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Comparison:
    """One line of the gate's table."""

    decoder: str
    setting: str
    metric: str
    reference: float | None
    current: float | None
    tolerance: str
    ok: bool
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.reference is None or self.current is None:
            return None
        d = self.current - self.reference
        return 0.0 if abs(d) < 5e-3 else d  # the reference keeps 4 decimals: no "-0.00"


@dataclass(frozen=True)
class CheckResult:
    reference: Reference
    lines: tuple[Comparison, ...]
    seconds: float  # wall clock of the gate's runs
    cpu_seconds: float  # CPU time of this process: what the gate costs on an idle machine
    runs: int
    sweep_dirs: tuple[Path, ...]
    y_max: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.lines)


def _setting(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def _compare_point(decoder: str, setting: str, ref: PinnedPoint | None, cur: Summary | None, tol: Tolerance) -> list[Comparison]:
    if ref is None or cur is None:
        note = "not in the reference" if ref is None else "not measured"
        return [Comparison(decoder, setting, "point", None, None, "", False, note)]
    nfe_tol = tol.nfe_rel * ref.nfe_mean + 1e-9
    return [
        Comparison(
            decoder, setting, "accuracy", ref.accuracy_pct, cur.accuracy, f"±{tol.accuracy_pct:g}",
            abs(cur.accuracy - ref.accuracy_pct) <= tol.accuracy_pct + 1e-9,
        ),
        Comparison(decoder, setting, "mean NFE", ref.nfe_mean, cur.nfe_mean, f"±{100 * tol.nfe_rel:g}%", abs(cur.nfe_mean - ref.nfe_mean) <= nfe_tol),
    ]  # fmt: skip


def check(
    ref: Reference, *, update: bool = False, work_dir: Path | None = None, threads: int = 1, progress: bool = False, log: Log = print
) -> tuple[CheckResult, dict[str, Any] | None]:
    """Rerun the pinned sweeps and compare (or, with `update`, also return the new reference).

    Every run goes to `work_dir` (a temporary folder by default), so nothing is resumed from
    earlier results; the llada baseline is run once per model and shared by all sweeps. Torch
    runs on `threads` threads (1 by default: the same float reductions on every machine, and a
    shared CI box with more busy threads than cores loses ~10-30x to OpenMP spin-waiting)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _check(ref, update, work_dir, progress, log)
    finally:
        torch.set_num_threads(previous)


def _check(ref: Reference, update: bool, work_dir: Path | None, progress: bool, log: Log) -> tuple[CheckResult, dict[str, Any] | None]:
    start, cpu_start = time.perf_counter(), time.process_time()
    names = decoders.names()
    pinned = list(ref.sweeps)
    lines: list[Comparison] = []
    if update:
        gone = [s for s in pinned if s.decoder not in names]
        for s in gone:
            log(f"decoder '{s.decoder}' no longer exists: dropping it from the reference")
        pinned = [s for s in pinned if s.decoder in names]
        listed = {s.decoder for s in pinned}
        for name in names:
            if name not in listed:
                log(f"decoder '{name}' is not in the reference: adding it at its default settings (edit its axes and update again)")
                pinned.append(PinnedSweep(name, decoders.info(name).cpu_model, {}))
    else:
        listed = {s.decoder for s in pinned}
        for name in names:
            if name not in listed:
                lines.append(Comparison(name, "", "pinned", None, None, "", False, "decoder has no reference entry"))
        for s in pinned:
            if s.decoder not in names:
                lines.append(Comparison(s.decoder, "", "pinned", None, None, "", False, "decoder in the reference does not exist"))
        pinned = [s for s in pinned if s.decoder in names]

    tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="dleval-check-")
    root = Path(tmp.name) if tmp is not None else Path(work_dir)  # type: ignore[arg-type]
    try:
        results: list[tuple[PinnedSweep, SweepResult]] = []
        for n, s in enumerate(pinned, 1):
            log(f"[{n}/{len(pinned)}] {s.decoder} on {s.model}: {_setting({k: ','.join(v) for k, v in s.axes.items()})}")
            req = SweepRequest(
                decoder=s.decoder, task=ref.task, axes=s.axes, model=s.model, limit=ref.limit, batch_size=ref.batch_size,
                task_args=ref.task_args, runs_dir=root / "runs", sweeps_dir=root / "sweeps", seed=ref.seed, progress=progress,
            )  # fmt: skip
            results.append((s, run_sweep(req, log=lambda m: None)))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        runs = len({p.result.run_dir for _, r in results for p in [*r.points, *([r.baseline] if r.baseline else [])]})
        pool = [p.summary.accuracy for _, r in results for p in [*r.points, *([r.baseline] if r.baseline else [])]]
        y_max = max(pool, default=0.0) if update or ref.y_max is None else ref.y_max
        fingerprints = {}
        for s, r in results:
            fingerprints[s.model] = r.points[0].result.config["model"]["fingerprint"]
        if not update:
            for model, fp in sorted(fingerprints.items()):
                old = ref.fingerprints.get(model)
                if old != fp:
                    lines.insert(
                        0,
                        Comparison("", model, "model", None, None, "", False, f"model fingerprint {fp} differs from the reference's {old}"),
                    )
            seen_base: set[str] = set()
            for s, r in results:
                if r.baseline is not None and s.model not in seen_base:
                    seen_base.add(s.model)
                    lines += _compare_point(
                        report.BASELINE_DECODER, f"baseline ({s.model})", ref.baselines.get(s.model), r.baseline.summary, ref.tolerance
                    )
                by_setting = {_setting(p.settings): p for p in r.points}
                ref_points = {_setting(p.settings): p for p in s.points}
                for key in dict.fromkeys([*ref_points, *by_setting]):
                    cur = by_setting.get(key)
                    lines += _compare_point(s.decoder, key, ref_points.get(key), cur.summary if cur else None, ref.tolerance)
                value = curve_aup(r, y_max, ref.alpha)
                tol = max(ref.tolerance.aup_abs, ref.tolerance.aup_rel * (s.aup or 0.0))
                base = ref.baselines.get(s.model) if r.baseline is not None and all(p is not r.baseline for p in r.points) else None
                pinned_curve = [(p.answer_tpf, p.accuracy_pct) for p in ([base] if base else []) + list(s.points)]
                lo, hi = aup_band(pinned_curve, y_max, ref.alpha, ref.tolerance.accuracy_pct) if pinned_curve else (s.aup, s.aup)
                lo, hi = min(lo, s.aup or 0.0) - tol, max(hi, s.aup or 0.0) + tol
                ok = s.aup is not None and value is not None and lo - 1e-9 <= value <= hi + 1e-9
                note = "a point has no answer tokens (TPF 0)" if value is None else ""
                lines.append(Comparison(s.decoder, "curve", "AUP", s.aup, value, f"{lo:.1f}..{hi:.1f}", ok, note))
        result = CheckResult(ref, tuple(lines), seconds, cpu_seconds, runs, tuple(r.sweep_dir for _, r in results), y_max)
        new = _updated(ref, results, y_max, fingerprints, result) if update else None
        return result, new
    finally:
        if tmp is not None:
            tmp.cleanup()


def _updated(
    ref: Reference, results: list[tuple[PinnedSweep, SweepResult]], y_max: float, fingerprints, check: CheckResult
) -> dict[str, Any]:
    def point(settings: dict[str, str], s: Summary) -> dict[str, Any]:
        return {
            "settings": settings,
            "accuracy_pct": round(s.accuracy, 4),
            "nfe_mean": round(s.nfe_mean, 4),
            "answer_tpf": round(s.answer_tpf, 4),
        }

    baselines: dict[str, Any] = {}
    sweeps = []
    for s, r in results:
        if r.baseline is not None and s.model not in baselines:
            baselines[s.model] = {"model": s.model, **point(r.baseline.settings, r.baseline.summary)}
        sweeps.append(
            {
                "decoder": s.decoder,
                "model": s.model,
                "axes": {k: list(v) for k, v in s.axes.items()},
                "points": [point(p.settings, p.summary) for p in r.points],
                "aup": None if (value := curve_aup(r, y_max, ref.alpha)) is None else round(value, 4),
            }
        )
    from dleval import __version__

    env = results[0][1].points[0].result.config["environment"] if results else {}
    out = dict(ref.raw)
    out.update(
        {
            "format_version": FORMAT_VERSION,
            "regenerate": f"python -m dleval check --reference {ref.path} --update",
            "task": ref.task,
            "task_args": ref.task_args,
            "limit": ref.limit,
            "seed": ref.seed,
            "batch_size": ref.batch_size,
            "y_max": round(y_max, 4),
            "alpha": ref.alpha,
            "tolerance": dataclasses.asdict(ref.tolerance),
            "fingerprints": fingerprints,
            "baselines": list(baselines.values()),
            "sweeps": sweeps,
            "measured": {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "dleval": __version__,
                "git_sha": env.get("git_sha", ""),
                "torch": env.get("torch", ""),
                "device": env.get("device", ""),
                "threads": torch.get_num_threads(),
                "gate_seconds": round(check.seconds, 1),
                "gate_cpu_seconds": round(check.cpu_seconds, 1),
            },
        }
    )
    return out


def format_check(result: CheckResult) -> str:
    """The gate's table: current vs reference with deltas and a status per line, then a verdict."""
    ref = result.reference

    def num(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    header = ("decoder", "setting", "metric", "reference", "current", "delta", "tolerance", "status")
    body = [
        (
            c.decoder, c.setting, c.metric, num(c.reference), num(c.current),
            "–" if c.delta is None else f"{c.delta:+.2f}", c.tolerance, ("ok" if c.ok else "FAIL") + (f" ({c.note})" if c.note else ""),
        )
        for c in result.lines
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = {3, 4, 5}

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    failed = [c for c in result.lines if not c.ok]
    out = [
        f"dleval check {ref.path}",
        f"  {ref.task}: first {ref.limit} samples, seed {ref.seed}, batch {ref.batch_size}; "
        f"y_max {result.y_max:.2f}% (pinned), alpha {ref.alpha:g}",
        "",
        "  " + fmt(header),
        *("  " + fmt(r) for r in body),
        "",
    ]
    timing = f"{result.runs} runs in {result.seconds:.0f} s, {result.cpu_seconds:.0f} s of CPU"
    if not failed:
        out.append(f"PASS: all {len(result.lines)} checks within tolerance ({timing})")
    else:
        out.append(f"FAIL: {len(failed)} of {len(result.lines)} checks outside tolerance ({timing}):")
        for c in failed:
            what = f"{c.decoder} {c.setting} {c.metric}".strip()
            if c.delta is None:
                out.append(f"  {what}: {c.note}")
            else:
                out.append(f"  {what}: {c.current:.2f} vs reference {c.reference:.2f} ({c.delta:+.2f}, tolerance {c.tolerance})")
        out.append("If the change is intended, regenerate the reference on purpose and commit it:")
        out.append(f"  python -m dleval check --reference {ref.path} --update")
    return "\n".join(out)
