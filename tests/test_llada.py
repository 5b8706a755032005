"""LLaDA baseline invariants (decoders.md §1.1): quota, NFE = steps, flags, CFG, remasking.

Run: pytest tests/test_llada.py
"""

from __future__ import annotations

import pytest
import torch

from dleval.decoders import _parts, llada
from dleval.models.base import Counted, ForwardOutput, KVCache
from tests.conftest import random_llada

PROMPT = [[5, 9, 12, 7, 30]]


def decode(cfg, prompts=PROMPT, model=None):
    counted = Counted(model or random_llada())
    steps = []
    gens = llada.decode(counted, prompts, cfg, on_step=steps.append)
    return gens, counted, steps


@pytest.mark.parametrize("gen,block,steps", [(16, 16, 16), (16, 8, 8), (16, 4, 8), (12, 4, 6), (10, 10, 4)])
def test_nfe_equals_steps_and_quota_is_exact(gen, block, steps):
    gens, counted, trace = decode(llada.Config(gen_length=gen, block_length=block, steps=steps))
    assert counted.nfe == steps
    per_block = steps // (gen // block)
    expected = []
    for _ in range(gen // block):
        expected += _parts.quota(torch.tensor([block]), per_block)[0].tolist()
    assert list(gens[0].committed_per_step) == expected
    assert 1 not in gens[0].tokens
    # Semi-AR: every commit of step i lies in the block that step belongs to.
    P = len(PROMPT[0])
    for i, step in enumerate(trace):
        b = i // per_block
        pos = step.committed[0].nonzero().flatten().tolist()
        assert all(P + b * block <= p < P + (b + 1) * block for p in pos)


def test_quota_table():
    assert _parts.quota(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert _parts.quota(torch.tensor([8, 3]), 4).tolist() == [[2, 2, 2, 2], [1, 1, 1, 0]]


def test_commits_highest_confidence_with_position_tiebreak():
    scores = torch.tensor([[0.1, 0.9, 0.9, 0.5]])
    assert _parts.top_k_mask(scores, [2]).tolist() == [[False, True, True, False]]
    assert _parts.top_k_mask(scores, [1]).tolist() == [[False, True, False, False]]


def test_invalid_configs():
    with pytest.raises(ValueError, match="multiple of block_length"):
        llada.Config(gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        llada.Config(gen_length=16, block_length=4, steps=6)
    with pytest.raises(ValueError, match="remasking"):
        llada.Config(gen_length=8, block_length=8, remasking="greedy")


class FixedLogits:
    """A fake model whose logits are fixed per position: position-dependent favourite tokens."""

    mask_id, eos_id, eot_id, vocab_size = 1, 0, 2, 8
    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table  # (T, V)

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        logits = self.table[start : start + ids.shape[1]].expand(ids.shape[0], -1, -1).clone()
        return ForwardOutput(logits=logits, kv=KVCache([], []))


def eos_favouring_table(P: int, L: int) -> torch.Tensor:
    table = torch.zeros(P + L, 8)
    table[:, 0] = 5.0  # EOS is everyone's argmax
    table[:, 3] = 4.0
    table[P + 2, 3] = 5.5  # except one position, which prefers token 3, less confidently
    table[P + 2, 0] = 5.0
    return table


def test_logits_eos_inf_forbids_eos():
    P, L = 2, 4
    model = FixedLogits(eos_favouring_table(P, L))
    gens, _, _ = decode(llada.Config(gen_length=L, block_length=L, logits_eos_inf=True), [[4, 5]], model)
    assert 0 not in gens[0].tokens


def test_confidence_eos_eot_inf_defers_eos_but_allows_it():
    P, L = 2, 4
    model = FixedLogits(eos_favouring_table(P, L))
    _, _, plain = decode(llada.Config(gen_length=L, block_length=L), [[4, 5]], model)
    _, _, flagged = decode(llada.Config(gen_length=L, block_length=L, confidence_eos_eot_inf=True), [[4, 5]], model)
    first_plain = plain[0].committed[0].nonzero().flatten().tolist()
    first_flagged = flagged[0].committed[0].nonzero().flatten().tolist()
    assert first_plain == [P]  # EOS positions are most confident without the flag (ties by position)
    assert first_flagged == [P + 2]  # with it, the non-EOS token goes first
    gens, _, _ = decode(llada.Config(gen_length=L, block_length=L, confidence_eos_eot_inf=True), [[4, 5]], model)
    assert gens[0].tokens.count(0) == 3  # EOS still fills the quota at confidence 0


def test_cfg_is_one_forward_per_step_with_two_rows():
    gens, counted, _ = decode(llada.Config(gen_length=8, block_length=8, cfg_scale=1.0))
    assert counted.nfe == 8 and counted.rows == 16
    assert 1 not in gens[0].tokens


def test_random_remasking_and_temperature_are_seeded():
    cfg = llada.Config(gen_length=8, block_length=4, remasking="random", temperature=0.7)
    torch.manual_seed(3)
    a, _, _ = decode(cfg)
    torch.manual_seed(3)
    b, _, _ = decode(cfg)
    assert a == b and 1 not in a[0].tokens
