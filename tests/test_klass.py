"""KLASS: the stability rule, its quota fallback and config checks (parity with shkim0116/KLASS is
measured outside the repository; see the decoder's docstring).

Run: pytest tests/test_klass.py
"""

from __future__ import annotations

import math

import pytest

from dleval.decoders import klass, llada
from dleval.models.base import Counted
from tests.conftest import random_llada

PROMPT = [5, 9, 12, 7, 30]


def test_nothing_ready_is_llada_with_the_same_schedule():
    model = random_llada()
    a, na = Counted(model), Counted(model)
    (ours,) = klass.decode(a, [PROMPT], klass.Config(gen_length=16, block_length=8, conf_threshold=1.0))
    (base,) = llada.decode(na, [PROMPT], llada.Config(gen_length=16, block_length=8))
    assert ours.tokens == base.tokens and a.nfe == na.nfe == 16


def test_everything_stable_commits_the_block_at_step_history_length_minus_one():
    model = random_llada()
    counted = Counted(model)
    (gen,) = klass.decode(counted, [PROMPT], klass.Config(gen_length=16, block_length=8, conf_threshold=0.0, kl_threshold=math.inf))
    # step 0: the history is not full, so the quota (1); step 1: every remaining mask is ready
    assert gen.committed_per_step == (1, 7, 1, 7) and counted.nfe == 4


def test_history_length_one_can_commit_at_a_block_start():
    model = random_llada()
    cfg = klass.Config(gen_length=16, block_length=8, conf_threshold=0.0, kl_threshold=math.inf, history_length=1)
    (gen,) = klass.decode(Counted(model), [PROMPT], cfg)
    assert gen.committed_per_step == (8, 8)


def test_the_history_is_per_call():
    model = random_llada()
    cfg = klass.Config(gen_length=16, block_length=8, conf_threshold=0.2, kl_threshold=0.5)
    first = klass.decode(Counted(model), [PROMPT], cfg)
    assert klass.decode(Counted(model), [PROMPT], cfg) == first
    assert klass.decode(Counted(model), [[3, 4], PROMPT], cfg)[1] == first[0]  # an earlier prompt leaves no state


@pytest.mark.parametrize(
    "field, value",
    [
        ("conf_threshold", math.nan),
        ("conf_threshold", 1.2),
        ("kl_threshold", -1.0),
        ("kl_threshold", math.nan),
        ("history_length", 0),
        ("steps", 7),
    ],
)
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError):
        klass.Config(**{field: value})
