"""Deciding on the host (`dleval/decoders/_host.py`, used by wino, klass and dInfer's decoders):
the torch properties it relies on, the [MASK] fallback of the draft, the noise at T > 0, and the
host rules against the reference's tensor code.

Run: pytest tests/test_host.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dleval.decoders import _dinfer, _host, _parts, _picks, dinfer, klass, wino
from dleval.models.base import Counted
from tests.conftest import random_llada


def test_scores_of_some_rows_are_the_bits_of_all_rows():
    """What computing scores for a span of the block relies on (per machine: kernels differ)."""
    gen = torch.Generator().manual_seed(0)
    for L in (1, 7, 40, 61):
        x = torch.randn(1, L, 348, generator=gen) * 4
        for lo, hi in ((0, L), (L // 3, L), (1, max(2, L - 1))):
            hi = min(hi, L)
            part = x[:, lo:hi]
            for f in (
                lambda t: torch.softmax(t, -1, dtype=torch.float64),
                lambda t: torch.softmax(t, -1, dtype=torch.float32),
                lambda t: F.log_softmax(t, -1),
                lambda t: t.argmax(-1),
                lambda t: torch.softmax(t, -1).max(-1).indices,
                lambda t: (lambda p: (p * (p + 1e-12).log()).sum(-1))(torch.softmax(t, -1, dtype=torch.float64)),
            ):
                assert torch.equal(f(x)[:, lo:hi], f(part))
    v = torch.rand(5000, generator=gen, dtype=torch.float64) + 1e-3
    for dtype in (torch.float32, torch.float64):
        w = v.to(dtype)
        for k in (1, 3, 8, 13):  # elementwise exp and log do not depend on where an element sits
            assert torch.equal(w.log()[k:], w[k:].clone().log())
            assert torch.equal((-w).exp()[k:], (-w[k:].clone()).exp())


def test_draft_skips_mask_ranked_first_and_matches_propose():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 10, generator=gen)
    logits[0, 2, 4] = 50.0  # row 2 ranks [MASK] (id 4) first: the fallback
    expected = _parts.propose(logits, 0.0, 4)
    x0, tokens = _host.draft(logits.clone(), 0.0, 4)
    assert tokens == expected[0].tolist() and x0[..., 0].tolist() == expected.tolist() and 4 not in tokens
    plain = torch.randn(1, 6, 10, generator=gen)
    plain[..., 4] = -50.0  # no row ranks [MASK] first: one argmax
    assert _host.draft(plain.clone(), 0.0, 4)[1] == _parts.propose(plain, 0.0, 4)[0].tolist()


def test_draft_at_temperature_draws_the_whole_blocks_noise():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 12, 10, generator=gen)  # the canvas; block [3, 11), rows [5, 9)
    torch.manual_seed(7)
    expected = _parts.propose(logits[:, 3:11], 0.8, 4)[0, 2:6].tolist()
    after = torch.rand(3)
    torch.manual_seed(7)
    work = logits.clone()
    _, tokens = _host.draft(work[:, 5:9], 0.8, 4, work, 3, 11, 5)
    assert tokens == expected and torch.equal(torch.rand(3), after)  # the same draws, and as many


def reference_threshold(conf: torch.Tensor, masked: torch.Tensor, threshold: float) -> torch.Tensor:
    """get_transfer_index_threshold's choice from float32 confidences (inclusionAI/dInfer @fce4e32)."""
    conf = torch.where(masked, conf, float("-inf"))
    bar = (torch.max(conf, dim=1)[0] - 1e-5).clamp(-1000, threshold).unsqueeze(-1)
    return (conf >= bar) & masked


def reference_hierarchy(conf: torch.Tensor, masked: torch.Tensor, threshold: float, low: float) -> torch.Tensor:
    """HierarchyDecoder.get_transfer_index's choice from confidences (inclusionAI/dInfer @fce4e32)."""
    floor = torch.finfo(conf.dtype).min
    conf = torch.where(masked, conf, torch.tensor(floor, dtype=conf.dtype))
    prev = torch.cat([masked.new_zeros((1, 1)), masked[:, :-1]], dim=1)
    seg = torch.where(masked, torch.cumsum((masked & ~prev).long(), dim=-1) - 1, 0)
    seg_max = torch.full(conf.shape, floor, dtype=conf.dtype).scatter_reduce(1, seg, conf, reduce="amax", include_self=True)
    chosen = ((conf == seg_max.gather(1, seg)) & torch.gt(conf, low)) | torch.gt(conf, threshold)
    chosen |= F.one_hot(conf.argmax(dim=-1), num_classes=conf.shape[1]).bool()
    return chosen & masked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_rules_equal_the_references_tensor_code(dtype):
    gen = torch.Generator().manual_seed(3)
    for trial in range(300):
        b = int(torch.randint(1, 12, (1,), generator=gen))
        conf = torch.rand(1, b, generator=gen).to(dtype)
        if trial % 3 == 0:  # values on the thresholds (rounded as torch rounds them) and ties
            conf[0, : b // 2] = torch.tensor(0.9 if trial % 2 else 0.3).to(dtype)
        masked = torch.rand(1, b, generator=gen) < 0.7
        masked[0, int(torch.randint(0, b, (1,), generator=gen))] = True
        at = [j for j in range(b) if masked[0, j]]
        c = [float(conf[0, j]) for j in at]
        picked = _dinfer.hierarchy_pick(c, at, _picks.as_dtype(0.9, dtype), _picks.as_dtype(0.3, dtype))
        assert [j for j, f in zip(at, picked) if f] == reference_hierarchy(conf, masked, 0.9, 0.3)[0].nonzero().flatten().tolist()
        if dtype == torch.float32:
            picked = _dinfer.threshold_pick(c, _host.f32(0.9))
            assert [j for j, f in zip(at, picked) if f] == reference_threshold(conf, masked, 0.9)[0].nonzero().flatten().tolist()


def test_canvas_is_the_tensor_the_model_reads():
    model = random_llada()
    canvas = _host.Canvas(model, [5, 9, 12], 4)
    assert canvas.x.tolist() == [[5, 9, 12, 1, 1, 1, 1]] and (canvas.P, canvas.N) == (3, 7)
    canvas.ids[4] = 33
    canvas.push()
    assert canvas.x[0, 4] == 33  # the CPU tensor shares the array
    with pytest.raises(ValueError, match="mask token"):
        _host.Canvas(model, [5, 1], 4)


class MaskFirst:
    """A model whose every row ranks [MASK] (id 1) first, far ahead of the rest."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, **kwargs):
        out = self.inner.forward(ids, **kwargs)
        out.logits[..., 1] += 100.0
        return out


@pytest.mark.parametrize("module", [dinfer, klass, wino])
def test_a_model_that_ranks_mask_first_never_commits_it(module, monkeypatch):
    fallbacks = []
    propose_ = _parts.propose_
    monkeypatch.setattr(_parts, "propose_", lambda *a, **k: fallbacks.append(1) or propose_(*a, **k))
    counted = Counted(MaskFirst(random_llada()))
    (gen,) = module.decode(counted, [[5, 9, 12, 7, 30]], module.Config(gen_length=16, block_length=8))
    assert 1 not in gen.tokens and len(gen.tokens) == 16
    assert len(fallbacks) >= sum(1 for n in gen.committed_per_step if n)  # every forward that committed took the fallback
