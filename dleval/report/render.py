"""A Report on disk: leaderboard.csv (one Row per line, the field order is the column order),
board.csv (one model + decoder per line, AUP / PBx / TPF / accuracy per task) and report.html,
one self-contained page rendered from `report.html.j2` with a matplotlib figure per task
(accuracy vs answer TPF, and vs speedup where timed) inlined as base64 PNG.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

from dleval import __version__
from dleval.metrics import PB_LEVELS
from dleval.report.curves import Curve
from dleval.report.rows import COLUMNS, setting_labels
from dleval.report.tables import Report


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
            names = setting_labels(c.rows)
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
