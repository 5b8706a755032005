"""WINO: the shadow-block forward, revocation and config checks (parity with Feng-Hong/WINO-DLLM
is measured outside the repository; see the decoder's docstring).

Run: pytest tests/test_wino.py
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from dleval.decoders import wino
from dleval.models.base import Counted
from tests.conftest import random_llada


def shadow_forward(model, x, s, B):
    N = x.shape[1]
    xx = torch.cat([x, torch.ones(1, B, dtype=torch.long)], dim=1)
    positions = torch.cat([torch.arange(N), torch.arange(s, s + B)])
    att = torch.ones(1, N + B, N + B, dtype=torch.bool)
    att[:, :, N:] = False
    att[:, N:, N:] = True
    att[:, N:, s : s + B] = ~torch.eye(B, dtype=torch.bool)
    return model.forward(xx, attention_mask=att, positions=positions).logits


def test_shadow_block_is_invisible_and_sees_all_but_its_own_position():
    # One layer: with more, block position i still reaches shadow i through the other positions'
    # hidden states (the reference masks direct attention only).
    model = random_llada(layers=1)
    x = torch.randint(2, 60, (1, 20), generator=torch.Generator().manual_seed(0))
    s, B = 8, 4
    logits = shadow_forward(model, x, s, B)
    torch.testing.assert_close(logits[:, :20], model.forward(x).logits)  # the real canvas is untouched
    y = x.clone()
    y[0, s + 2] = 61  # change the token at block position 2
    changed = shadow_forward(model, y, s, B)
    torch.testing.assert_close(changed[:, 20 + 2], logits[:, 20 + 2])  # shadow 2 never saw it...
    assert not torch.allclose(changed[:, 20 + 1], logits[:, 20 + 1])  # ...shadow 1 did


def test_wide_in_commits_drafts_above_tau1_and_every_step_commits():
    model = random_llada()
    loose = Counted(model)
    (gen,) = wino.decode(loose, [[5, 9, 12]], wino.Config(gen_length=16, block_length=16, threshold=0.0, threshold_back=0.0))
    # tau1 = 0: every mask qualifies, capped at max_accept = min(max(int(16 * 0.7), 5), 20) = 11; tau2 = 0 revokes nothing
    assert gen.committed_per_step == (11, 5) and gen.revoked == 0 and loose.nfe == 2


def test_narrow_out_revokes_only_after_a_multi_token_step():
    model = random_llada()
    (gen,) = wino.decode(Counted(model), [[5, 9, 12]], wino.Config(gen_length=16, block_length=16, threshold=0.0, threshold_back=1.0))
    # tau2 = 1: every committed token fails verification; step 2 (5 drafts) revokes at most 11 - 1 = 10
    assert gen.committed_per_step[:2] == (11, 5) and gen.revoked >= 10
    assert sum(gen.committed_per_step) - gen.revoked == 16


@pytest.mark.parametrize("field, value", [("threshold", math.nan), ("threshold", 1.5), ("threshold_back", -0.1), ("temperature", math.nan)])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError):
        wino.Config(**{field: value})


def test_a_model_without_custom_attention_is_rejected():
    plain = types.SimpleNamespace(mask_id=1, eos_id=0, eot_id=None, vocab_size=64, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="custom_attention"):
        wino.check(plain, wino.Config())
    wino.check(Counted(random_llada()), wino.Config())  # Counted passes the capability through


def test_float32_choices_defer_to_float64_near_a_boundary():
    band = 1e-4
    far = [(0.95, 3), (0.2, 4), (0.7, 5)]
    assert wino._accept(far, 0.6, 5, band) == wino._accept(far, 0.6, 5, None) == [3, 5]
    assert wino._accept([(0.60005, 3), (0.2, 4)], 0.6, 5, band) is None  # within the band of the threshold
    assert wino._accept([(0.3, 3), (0.30005, 4)], 0.6, 5, band) is None  # none above: the best, too close to call
    assert wino._accept([(0.3, 3), (0.5, 4)], 0.6, 5, band) == [4]
    assert wino._revoke([(0.5, 3), (0.89995, 4)], 0.9, 30, band) is None
    tight = [(0.5, 3), (0.50005, 4), (0.1, 6)]  # three fail, last_accept 3: the 2 least confident, a near tie at the cut
    assert wino._revoke(tight, 0.9, 3, band) is None and wino._revoke(tight, 0.9, 3, None) == [3, 6]


def test_guard_band_fallbacks_give_the_float64_tokens(monkeypatch):
    """Every float32 choice deferred to float64 (the band covers [0, 1]): the same generation."""
    cfg = wino.Config(gen_length=32, block_length=16)
    prompts = [[5, 9, 12], [7, 3, 30, 2]]
    first = wino.decode(Counted(random_llada()), prompts, cfg)
    monkeypatch.setattr(wino, "guard", lambda vocab: 1.0)
    assert wino.decode(Counted(random_llada()), prompts, cfg) == first
