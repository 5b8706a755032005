"""The CI regression gate (`dleval check`): pinned tiny-model sweeps rerun and compared.

A reference file (`results/reference/*.json`) pins tiny-model sweeps on a fixed subset of a
task, the pool's `y_max`, the measured accuracy, mean NFE and AUP of every point and curve, and
the tolerances. `check` reruns those sweeps (through `dleval.sweep`) in a scratch folder and
compares; `update=True` regenerates the file on purpose (and adds every decoder the registry has
but the file lacks, at its default settings), keeping axes and tolerances.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dleval import decoders, report
from dleval.errors import UserError
from dleval.metrics import AUPWarning, Summary, aup_detail
from dleval.ranks import Ranks, detect
from dleval.sweep import SweepRequest, SweepResult, curve_aup, run_sweep, setting_label

FORMAT_VERSION = 1  # of the reference file
Log = Callable[[str], None]


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


def check(
    ref: Reference,
    *,
    update: bool = False,
    work_dir: Path | None = None,
    threads: int = 1,
    progress: bool = False,
    log: Log = print,
    ranks: Ranks | None = None,
) -> tuple[CheckResult, dict[str, Any] | None]:
    """Rerun the pinned sweeps and compare (or, with `update`, also return the new reference).

    Every run goes to `work_dir` (a temporary folder by default), so nothing is resumed from
    earlier results; the llada baseline is run once per model and shared by all sweeps. Torch
    runs on `threads` threads (1 by default: the same float reductions on every machine, and a
    shared CI box with more busy threads than cores loses ~10-30x to OpenMP spin-waiting).

    Under a launcher (`ranks` sharded) every rank runs its share of every point; the default
    work folder is then one every rank of the node can name (the temp dir plus the invocation
    id; give a shared --keep folder across machines), and only rank 0's result is complete."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _check(ref, update, work_dir, progress, log, ranks or detect())
    finally:
        torch.set_num_threads(previous)


def _check(
    ref: Reference, update: bool, work_dir: Path | None, progress: bool, log: Log, where: Ranks
) -> tuple[CheckResult, dict[str, Any] | None]:
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

    tmp = None if work_dir is not None or where.sharded else tempfile.TemporaryDirectory(prefix="dleval-check-")
    shared = Path(tempfile.gettempdir()) / f"dleval-check-{re.sub(r'[^A-Za-z0-9.-]+', '-', where.invocation)}"
    root = Path(tmp.name) if tmp is not None else Path(work_dir) if work_dir is not None else shared
    try:
        results: list[tuple[PinnedSweep, SweepResult]] = []
        for n, s in enumerate(pinned, 1):
            log(f"[{n}/{len(pinned)}] {s.decoder} on {s.model}: {setting_label({k: ','.join(v) for k, v in s.axes.items()})}")
            req = SweepRequest(
                decoder=s.decoder, task=ref.task, axes=s.axes, model=s.model, limit=ref.limit, batch_size=ref.batch_size,
                task_args=ref.task_args, runs_dir=root / "runs", sweeps_dir=root / "sweeps", seed=ref.seed, progress=progress,
                ranks=where,
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
                by_setting = {setting_label(p.settings): p for p in r.points}
                ref_points = {setting_label(p.settings): p for p in s.points}
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
        elif work_dir is None and where.rank == 0:  # every rank's done flag of the last point is in: nobody writes there any more
            shutil.rmtree(root, ignore_errors=True)


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
