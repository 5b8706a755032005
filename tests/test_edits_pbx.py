"""Edit-aware accounting (committed / revoked / rewritten) and PBx, on hand-computed cases.

Definitions: dleval/metrics.py. Run: pytest tests/test_edits_pbx.py
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from dleval.decoders import _parts, wino
from dleval.metrics import PB_LEVELS, pbx, summarize
from dleval.models.base import Counted
from dleval.types import Record


def rec(nfe=10, committed_per_step=(3, 3, 4), revoked=0, rewritten=0, answer_tokens=6):
    committed = sum(committed_per_step)
    return Record(
        sample_id="s", config_hash="h", completion="", raw="", answer="", correct=1.0, metrics={}, nfe=nfe, rows_forwarded=nfe,
        gen_tokens=committed - revoked, answer_tokens=answer_tokens, prompt_tokens=5, seconds=1.0,
        committed_per_step=tuple(committed_per_step), finish="length", batch_size=1,
        committed=committed, revoked=revoked, rewritten=rewritten,
    )  # fmt: skip


# --- edit accounting -----------------------------------------------------------------------


def test_canvas_tpf_counts_net_commits_and_answer_tpf_final_answer_tokens():
    # 12 commits in 4 forwards, 4 of them revoked (2 rewritten to another token): 8 positions net.
    s = summarize([rec(nfe=4, committed_per_step=(5, 3, 2, 2), revoked=4, rewritten=2, answer_tokens=6)])
    assert s.canvas_tpf == pytest.approx(8 / 4)  # net commits / NFE, not 12 / 4
    assert s.answer_tpf == pytest.approx(6 / 4)  # final answer tokens / NFE
    assert (s.committed_mean, s.revoked_mean, s.rewritten_mean) == (12, 4, 2)
    assert s.nfe_mean == 4  # every forward counts, the ones whose commits were revoked too


def test_records_written_before_the_edit_counts_still_load():
    data = dataclasses.asdict(rec())
    for key in ("committed", "revoked", "rewritten"):
        del data[key]
    old = Record.from_json(json.dumps(data))
    assert (old.committed, old.revoked, old.rewritten) == (10, 0, 0)  # nothing was revoked then
    assert Record.from_json(rec(revoked=2, rewritten=1).to_json()).revoked == 2


def test_edits_counts_revocations_and_rewrites_by_hand():
    mask = 1
    edits = _parts.Edits(torch.tensor([[mask, mask, mask]]), mask)
    edits.commit(torch.tensor([[True, True, False]]), torch.tensor([[7, 8, 9]]))
    edits.revoke(torch.tensor([[True, True, False]]))  # both taken back
    edits.commit(torch.tensor([[True, True, True]]), torch.tensor([[7, 5, 9]]))  # 7 again (no rewrite), 8 -> 5 (rewrite)
    assert (edits.revoked, edits.rewritten) == (2, 1)


def test_wino_accounting_matches_a_replay_of_its_steps(bundled):
    """On the trained tiny model WINO revokes; replaying on_step reproduces its counts."""
    from dleval import prompts, tasks

    loaded = bundled
    spec = tasks.load_task("synth_gsm", None)
    sample = tasks.load_samples(spec)[0]
    prompt = list(prompts.render(sample, spec.prompt, loaded.tokenizer).ids)
    cfg = wino.Config(gen_length=64, block_length=64)
    counted = Counted(loaded.model)
    canvases = []
    (gen,) = wino.decode(counted, [prompt], cfg, on_step=lambda s: canvases.append(s.canvas[0, len(prompt) :].clone()))
    assert gen.revoked > 0, "the tiny model should make WINO revoke at block 64"
    before = torch.full((64,), loaded.model.mask_id)
    committed = revoked = 0
    for canvas in canvases:
        committed += int(((before == loaded.model.mask_id) & (canvas != loaded.model.mask_id)).sum())
        revoked += int(((before != loaded.model.mask_id) & (canvas == loaded.model.mask_id)).sum())
        before = canvas
    # A position committed and revoked within one step cannot happen (revocations are of earlier commits).
    assert (committed, revoked) == (sum(gen.committed_per_step), gen.revoked)
    assert len(gen.committed_per_step) == counted.nfe
    assert sum(gen.committed_per_step) - gen.revoked == len(gen.tokens) == 64


# --- PBx -----------------------------------------------------------------------------------


def test_pbx_interpolates_the_crossing_by_hand():
    # best 80 -> PB90 bar 72, PB80 bar 64. Segment (2, 76) -> (4, 60): 72 crossed at
    # 2 + (76 - 72) * 2 / 16 = 2.5; 64 at 2 + (76 - 64) * 2 / 16 = 3.5.
    points = [(1.0, 80.0), (2.0, 76.0), (4.0, 60.0), (8.0, 20.0)]
    assert pbx(points, 90) == pytest.approx(2.5)
    assert pbx(points, 80) == pytest.approx(3.5)
    assert pbx(points, 25) == 8.0  # bar 20 is met at the last point
    assert pbx(list(reversed(points)), 90) == pytest.approx(2.5)  # order of the sweep does not matter


def test_pbx_takes_the_largest_tpf_and_never_extrapolates():
    # A dip and a recovery: the recovered point 6 keeps 90 %, so PB90 is past the dip.
    points = [(1.0, 50.0), (3.0, 30.0), (6.0, 46.0), (7.0, 10.0)]
    assert pbx(points, 90) == pytest.approx(6.0 + (46 - 45) * 1 / 36)
    assert pbx([(1.0, 50.0), (5.0, 49.0)], 90) == 5.0  # still above the bar at the end: the last TPF
    assert pbx([(2.0, 40.0)], 80) == 2.0


def test_pbx_uses_the_curve_best_not_the_first_point():
    points = [(1.0, 40.0), (2.0, 50.0), (3.0, 30.0)]  # best 50 at TPF 2; bar 45 crossed at 2 + 5 / 20
    assert pbx(points, 90) == pytest.approx(2.25)


def test_pbx_edge_cases():
    assert pbx([(1.0, 0.0), (4.0, 0.0)], 80) is None  # no score to keep a share of
    for bad in (0, -5, 101, math.nan):
        with pytest.raises(ValueError):
            pbx([(1.0, 50.0)], bad)
    with pytest.raises(ValueError):
        pbx([], 80)
    assert PB_LEVELS == (80, 90)


def test_the_leaderboard_shows_the_edit_counts():
    from dleval.report.rows import Row

    names = [f.name for f in dataclasses.fields(Row)]
    assert names.index("avg_revoked") == names.index("avg_gen_tokens") + 1 and "avg_rewritten" in names
