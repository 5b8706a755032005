"""dInfer's threshold, credit and hierarchy decoders (`dinfer`, `dinfer_credit`, `dinfer_hierarchy`,
one shared loop in `_dinfer.py`): block alignment, unrolled groups, EOS stop,
the hierarchy rule by hand, config checks (parity with inclusionAI/dInfer is measured outside the
repository; see the decoder's docstring).

Run: pytest tests/test_dinfer.py
"""

from __future__ import annotations

import math

import pytest
import torch

from dleval.decoders import _dinfer, dinfer, dinfer_credit, dinfer_hierarchy
from dleval.models.base import Counted
from dleval.types import Step
from tests.conftest import random_llada

PROMPT = [5, 9, 12, 7, 30]


def test_first_block_is_aligned_to_absolute_positions():
    steps: list[Step] = []
    dinfer.decode(Counted(random_llada()), [PROMPT], dinfer.Config(gen_length=16, block_length=8), on_step=steps.append)
    first = steps[0].committed[0].nonzero().flatten().tolist()
    assert first and all(5 <= p < 8 for p in first)  # block [0, 8) holds the prompt's 5 tokens and 3 masks


def test_unrolled_group_spends_idle_forwards_as_the_reference():
    model = random_llada()
    cfg = dict(gen_length=27, block_length=32, threshold=0.0)  # one aligned block [0, 32): 27 masks, all committed at once
    a, b = Counted(model), Counted(model)
    (gen,) = dinfer.decode(a, [PROMPT], dinfer.Config(**cfg))
    (lean,) = dinfer.decode(b, [PROMPT], dinfer.Config(**cfg, maximum_unroll=1))
    assert gen.committed_per_step == (27, 0, 0) and a.nfe == 3  # unroll = min(27 // 8, 4) = 3 forwards before the check
    assert lean.committed_per_step == (27,) and b.nfe == 1 and lean.tokens == gen.tokens


def test_eos_in_a_block_fills_the_rest_and_stops():
    model = random_llada()
    model.model.transformer["ff_out"].weight.data[0] += 5.0  # EOS (id 0) everywhere likely
    counted = Counted(model)
    (gen,) = dinfer.decode(counted, [PROMPT], dinfer.Config(gen_length=40, block_length=8))
    assert gen.finish == "eos"
    assert sum(gen.committed_per_step) == len(gen.tokens) == 40
    first_eos_block_end = next(e for e in range(8, 48, 8) if 0 in gen.tokens[: e - 5])
    assert set(gen.tokens[first_eos_block_end - 5 :]) <= {0}


def probs_logits(p: list[float], V: int = 4) -> torch.Tensor:
    """(1, T, V) logits whose softmax puts p[i] on token 2 and the rest evenly on the others."""
    rows = []
    for q in p:
        rest = (1 - q) / (V - 1)
        rows.append([math.log(rest)] * 2 + [math.log(q)] + [math.log(rest)] * (V - 3))
    return torch.tensor([rows])


@pytest.mark.parametrize(
    "low, expected",
    [(0.3, {0, 5}), (0.6, {5}), (0.96, {5})],
)
def test_hierarchy_rule_by_hand(low, expected):
    conf = [0.5, 0.35, 0.9, 0.3, 0.45, 0.95]
    masked = torch.tensor([[True, True, False, True, True, True]])  # runs {0, 1} and {3, 4, 5}
    x0, chosen = _dinfer.hierarchy_rule(probs_logits(conf), masked, 0.9, low, 0.0, mask_id=1)
    assert set(chosen[0].nonzero().flatten().tolist()) == expected and bool((x0 == 2).all())


def test_threshold_rule_commits_the_best_even_below_threshold():
    masked = torch.ones(1, 3, dtype=torch.bool)
    _, chosen = _dinfer.threshold_rule(probs_logits([0.4, 0.6, 0.5]), masked, 0.9, 0.0, mask_id=1)
    assert chosen.tolist() == [[False, True, False]]
    _, chosen = _dinfer.threshold_rule(probs_logits([0.4, 0.6, 0.5]), masked, 0.45, 0.0, mask_id=1)
    assert chosen.tolist() == [[False, True, True]]


def test_credit_accumulates_only_on_masked_positions_and_decays():
    logits = probs_logits([0.5, 0.8])
    masked = torch.tensor([[True, False]])
    c1 = _dinfer.credit_update(logits, masked, None, 0.8, 0.2)
    assert c1[0, 0, 2] == pytest.approx(0.5**0.2) and float(c1[0, 1].abs().sum()) == 0.0
    c2 = _dinfer.credit_update(logits, masked, c1, 0.8, 0.2)
    assert c2[0, 0, 2] == pytest.approx(0.5**0.2 * (1 + 0.8))


@pytest.mark.parametrize(
    "module, field, value",
    [
        (dinfer, "threshold", math.nan),
        (dinfer, "threshold", 1.5),
        (dinfer, "maximum_unroll", 0),
        (dinfer_hierarchy, "low_threshold", 2.0),
        (dinfer_hierarchy, "low_threshold", math.nan),
        (dinfer_credit, "credit_alpha", math.nan),
        (dinfer_credit, "decay_beta", 1.5),
    ],
)
def test_invalid_config_is_rejected(module, field, value):
    with pytest.raises(ValueError):
        module.Config(**{field: value})


@pytest.mark.parametrize("module", [dinfer_credit, dinfer_hierarchy])
def test_credit_and_hierarchy_share_the_loop(module):
    """Same loop: with threshold 0 every rule commits a whole block per forward, like `dinfer`."""
    cfg = dict(gen_length=16, block_length=8, threshold=0.0)
    a, b = Counted(random_llada()), Counted(random_llada())
    (ours,) = module.decode(a, [PROMPT], module.Config(**cfg))
    (base,) = dinfer.decode(b, [PROMPT], dinfer.Config(**cfg))
    assert ours.committed_per_step == base.committed_per_step and a.nfe == b.nfe
