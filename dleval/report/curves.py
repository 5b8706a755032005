"""AUP curves and the board: the rows of one model x decoder x task (plus the baseline point)
-> a `Curve` with its AUP and PBx; the curves -> one `BoardEntry` per model + decoder, ranked by
mean AUP over the report's task list.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from dleval.errors import UserError
from dleval.metrics import AUP, PB_LEVELS, AUPWarning, aup_detail, mean_aup, pbx
from dleval.report.rows import Row, setting_labels


@dataclass(frozen=True)
class Scale:
    """How every curve of a report is scored: its task's y_max and the AUP parameters."""

    y_max: Mapping[str, float]  # task -> accuracy % that AUP is measured against
    alpha: float
    y_min_offset: float  # points more than this below the curve's first kept accuracy are dropped
    strict: bool


@dataclass(frozen=True)
class CurveRows:
    """Which rows of the report's row table make up one curve."""

    key: str  # the curve key (task, model, prompt, samples)
    decoder: str
    keys: tuple[str, ...]  # row keys by (answer TPF, run id), then the baseline point's when it is not one of them
    extra: str | None  # that baseline point's row key
    has_baseline: bool  # a one-token-per-step point exists for this curve key


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


def curve_of(which: CurveRows, rows: Mapping[str, Row], sample_sets: Mapping[str, frozenset[str]], scale: Scale, notes: list[str]) -> Curve:
    """The curve of one model x decoder x task: its rows plus the baseline point, and the AUP."""
    used = [rows[k] for k in which.keys]
    own = [rows[k] for k in which.keys if k != which.extra]
    first = own[0]
    label = f"{first.model} · {which.decoder}"
    sets = {k: sample_sets[k] for k in which.keys}
    if len(set(sets.values())) > 1:
        union = frozenset().union(*sets.values())
        short = ", ".join(f"{rows[k].run_id} ({len(v)})" for k, v in sets.items() if v != union)
        notes.append(
            f"{label} on {first.task}: the points do not share one sample set ({len(union)} samples in all; fewer in {short}), "
            "so its accuracies and AUP compare different samples"
        )
    names = setting_labels(own)
    points = tuple((r.tpf, r.accuracy_pct) for r in used)
    point_names = tuple(names.get(r.run_id, "baseline") for r in used)
    if not which.has_baseline:
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
                result = aup_detail(points, scale.y_max[first.task], scale.alpha, scale.y_min_offset, strict=scale.strict)
            except ValueError as exc:
                raise UserError(f"AUP of {label} on {first.task}: {exc}") from None
        floor = points[result.kept[0]][1] - scale.y_min_offset
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
            y_max=scale.y_max[first.task] if result else None,
            aup_alpha=scale.alpha if result else None,
            aup_point=("dropped" if r.run_id in dropped else "kept") if result else "",
        )
        for r in own
    )
    baseline = rows[which.extra] if which.extra else None
    samples = max(r.n_samples for r in own)
    return Curve(which.key, first.model, which.decoder, first.task, label, final, points, point_names, baseline, result, samples, pb)


def board_of(curves: list[Curve], mean_over: tuple[str, ...], notes: list[str]) -> tuple[BoardEntry, ...]:
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
