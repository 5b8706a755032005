"""Distillation recipes (decoders.md §3.2, §4.4): losses on hand-built logits, masks, schedules, smoke runs.

Run: pytest tests/test_distill.py
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from dleval import models
from dleval.train import distill
from dleval.train.distill import DistillConfig, TeacherSample


def logits_for(rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_entropy_term_only_on_correct_masked_positions_with_temperature():
    logits = logits_for([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]])  # (1, 3, V=3)
    targets = torch.tensor([[0, 0, 2]])
    masked = torch.tensor([[True, True, False]])
    # Position 0 is masked and correct; position 1 is masked but wrong; position 2 is not masked.
    p = torch.softmax(torch.tensor([2.0, 0.0, 0.0]) / 0.5, dim=0)
    expected = -(p * torch.log(p + 1e-12)).sum()
    got = distill.certainty_entropy(logits, targets, masked, temperature=0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    untempered = distill.certainty_entropy(logits, targets, masked, temperature=1.0)
    assert untempered.item() > got.item()  # the temperature sharpens before the entropy is taken


def test_no_correct_position_gives_zero_entropy_loss():
    logits = logits_for([[[0.0, 5.0]]])
    assert distill.certainty_entropy(logits, torch.tensor([[0]]), torch.tensor([[True]]), 0.5).item() == 0.0


def test_masked_ce_is_a_mean_over_masked_positions():
    logits = logits_for([[[0.0, 0.0], [math.log(3), 0.0]]])
    ce = distill.masked_ce(logits, torch.tensor([[0, 0]]), torch.tensor([[True, True]]))
    assert ce.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)


def test_dparallel_masks_are_complementary_and_later_blocks_excluded():
    cfg = DistillConfig(gen_length=32, block_length=8)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    for _ in range(50):
        masked, complement, after = distill.dparallel_masks(rng, gen, 32, cfg)
        inside = masked | complement
        assert not (masked & complement).any()
        assert not (inside & after).any()  # later positions: masked in the input, never in the loss
        start = int(inside.nonzero()[0]) if inside.any() else 32
        assert start % 8 == 0 and not after[:start].any()  # earlier blocks are clean context
        if inside.any():
            end = int(inside.nonzero()[-1]) + 1
            assert after[end:].all()


def test_dparallel_mask_rate_is_half():
    cfg = DistillConfig(gen_length=32, block_length=32)
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    rates = [distill.dparallel_masks(rng, gen, 32, cfg)[0].float().mean().item() for _ in range(400)]
    assert sum(rates) / len(rates) == pytest.approx(0.5, abs=0.02)


def test_d3llm_masks_follow_the_teacher_order():
    order = tuple(range(31, -1, -1))  # the teacher committed right to left
    sample = TeacherSample(prompt=(5,), canvas=(7,) * 32, order=order, answer_length=32, correct=True)
    masked, complement, after = distill.d3llm_masks(random.Random(0), sample, ratio=0.5, block=32, L=32)
    # Segment [0, 32), state index 16: tokens committed at steps 0..16 (17 of them) are visible.
    assert masked.sum() == 15 and complement.sum() == 17
    assert masked[:15].all() and not masked[15:].any()  # the left part was decoded last


def test_progressive_block_size_schedule():
    sizes = (16, 16, 24, 24, 32, 32)
    assert distill.block_size_at(0.0, sizes) == 16
    assert distill.block_size_at(1.5 / 6, sizes) == 20  # epoch 1 interpolates 16 -> 24
    assert distill.block_size_at(2.5 / 6, sizes) == 24  # epoch 2 stays at 24
    assert distill.block_size_at(0.99, sizes) == 32


def test_lora_starts_at_the_base_model_and_merges_to_plain_weights(bundled):
    from dleval.models.llada import LLaDA

    student = LLaDA(bundled.model.cfg)
    student.load_state_dict(bundled.model.state_dict())
    distill.add_lora(student, rank=4, seed=0)
    x = torch.randint(2, bundled.model.vocab_size, (1, 12))
    torch.testing.assert_close(student.forward(x).logits, bundled.model.forward(x).logits)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    distill.merge_lora(student)
    assert set(student.state_dict()) == set(bundled.model.state_dict())


@pytest.mark.parametrize("method", ["dparallel", "d3llm"])
def test_smoke_training_run(method, tmp_path, bundled):
    cfg = DistillConfig(method=method, prompts=8, teacher_batch=8, batch_size=4, epochs=1)
    meta = distill.train(bundled, cfg, tmp_path / method, log=lambda m: None)
    assert meta["kept"] >= 1 and meta["steps"] >= 1
    student = models.load(str(tmp_path / method), device="cpu")
    assert student.model.cfg == bundled.model.cfg
