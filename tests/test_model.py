"""The native LLaDA transformer: cache equivalence, padding, checkpoint round trip and errors.

Run: pytest tests/test_model.py
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dleval import models
from dleval.errors import UserError
from dleval.models.base import Counted, KVCache
from tests.conftest import random_llada

ATOL = 1e-5


def canvas(seed: int = 0, length: int = 40, vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (2, length), generator=g)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prefix_cache_matches_full_forward(kv_heads):
    model = random_llada(kv_heads=kv_heads)
    x = canvas()
    full = model.forward(x)
    for s in (1, 17, 39):
        cache = full.kv.keep(s)
        out = model.forward(x[:, s:], start=s, cache=cache)
        torch.testing.assert_close(out.logits, full.logits[:, s:], atol=ATOL, rtol=0)
        assert cache.length == s  # a prefix forward does not extend the cache


def test_inplace_span_matches_full_forward():
    model = random_llada()
    x = canvas()
    full = model.forward(x)
    cache = full.kv.clone()
    before = cache.keys[0].clone()
    out = model.forward(x[:, 16:24], start=16, cache=cache)
    torch.testing.assert_close(out.logits, full.logits[:, 16:24], atol=ATOL, rtol=0)
    assert cache.length == x.shape[1]
    torch.testing.assert_close(cache.keys[0], before, atol=ATOL, rtol=0)  # rewritten with equal values


def test_inplace_span_writes_new_tokens_into_the_cache():
    model = random_llada()
    x = canvas()
    cache = model.forward(x).kv.clone()
    y = x.clone()
    y[:, 16:24] = 5
    model.forward(y[:, 16:24], start=16, cache=cache)
    fresh = model.forward(y).kv
    # The span's K/V are those of the new tokens, computed against the stale rest of the cache.
    assert not torch.allclose(cache.keys[1][:, :, 16:24], model.forward(x).kv.keys[1][:, :, 16:24])
    torch.testing.assert_close(cache.keys[0][:, :, 16:24], fresh.keys[0][:, :, 16:24], atol=ATOL, rtol=0)


def test_append_first_n_positions_matches_full_forward():
    model = random_llada()
    x = canvas()
    full = model.forward(x)
    cache = full.kv.keep(10)
    out = model.forward(x[:, 10:], start=10, cache=cache)
    torch.testing.assert_close(out.logits, full.logits[:, 10:], atol=ATOL, rtol=0)
    grown = cache.append(out.kv, 8)
    assert grown.length == 18
    for got, want in zip(grown.keys + grown.values, full.kv.keys + full.kv.values):
        torch.testing.assert_close(got, want[:, :, :18], atol=ATOL, rtol=0)
    again = model.forward(x[:, 18:], start=18, cache=grown)
    torch.testing.assert_close(again.logits, full.logits[:, 18:], atol=ATOL, rtol=0)


def test_rebuilt_cache_after_change_matches_full_forward():
    model = random_llada()
    x = canvas()
    stale = model.forward(x).kv.keep(20)
    x[:, 5] = 7  # an earlier token changed: a refresh must rebuild from a full forward
    rebuilt = model.forward(x).kv.keep(20)
    out = model.forward(x[:, 20:], start=20, cache=rebuilt)
    torch.testing.assert_close(out.logits, model.forward(x).logits[:, 20:], atol=ATOL, rtol=0)
    assert not torch.allclose(stale.keys[-1], rebuilt.keys[-1])


def test_left_padding_with_mask_matches_unpadded_row():
    model = random_llada()
    x = canvas()[:1]
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), x], dim=1)
    mask = torch.ones_like(padded, dtype=torch.bool)
    mask[:, :5] = False
    alone = model.forward(x).logits
    torch.testing.assert_close(model.forward(padded, attention_mask=mask).logits[:, 5:], alone, atol=ATOL, rtol=0)


def test_cache_misuse_is_rejected():
    model = random_llada()
    x = canvas()
    cache = model.forward(x).kv.keep(10)
    with pytest.raises(ValueError, match="gap"):
        model.forward(x[:, 12:], start=12, cache=cache)
    with pytest.raises(ValueError, match="position 0"):
        model.forward(x, start=3)


def test_counted_counts_every_call_once():
    counted = Counted(random_llada())
    x = canvas()
    out = counted.forward(x)
    counted.forward(x[:, 10:], start=10, cache=out.kv.keep(10))
    assert (counted.nfe, counted.rows, counted.positions) == (2, 4, 2 * 40 + 2 * 30)
    assert counted.mask_id == 1


def test_kvcache_keep_and_append_shapes():
    k = [torch.zeros(1, 2, 5, 4)]
    cache = KVCache(k, [t.clone() for t in k]).keep(3)
    assert cache.length == 3
    assert cache.append(KVCache([torch.ones(1, 2, 4, 4)], [torch.ones(1, 2, 4, 4)]), 2).length == 5


def test_checkpoint_round_trip(tmp_path, bundled):
    """A saved folder (LLaDA key names) loads back to the same logits."""
    from dleval.train.tiny import save_folder

    save_folder(tmp_path, bundled.model, bundled.tokenizer._tokenizer, {"test": True})
    keys = set(json.loads((tmp_path / "config.json").read_text()))
    assert {"d_model", "n_layers", "mask_token_id", "rope_theta", "mlp_hidden_size"} <= keys
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "model.transformer.blocks.0.q_proj.weight" in f.keys()
        assert "model.transformer.ff_out.weight" in f.keys()
    again = models.load(str(tmp_path), device="cpu")
    x = canvas(vocab=bundled.model.vocab_size)
    torch.testing.assert_close(again.model.forward(x).logits, bundled.model.forward(x).logits)


def test_fingerprint_tells_retrained_weights_of_one_architecture_apart(tmp_path, bundled):
    """Resume and the gate key on the fingerprint, so same-size weights with new values must differ."""
    from dleval.train.tiny import save_folder

    tokenizer = bundled.tokenizer._tokenizer
    save_folder(tmp_path / "a", bundled.model, tokenizer, {})
    save_folder(tmp_path / "b", bundled.model, tokenizer, {})
    changed = copy.deepcopy(bundled.model)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[-1] += 1.0  # one weight, where no size can show it
    save_folder(tmp_path / "c", changed, tokenizer, {})
    a, b, c = (models.load(str(tmp_path / n), device="cpu") for n in "abc")
    assert (tmp_path / "a/model.safetensors").stat().st_size == (tmp_path / "c/model.safetensors").stat().st_size
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_missing_folder_and_corrupt_checkpoint_are_user_errors(tmp_path, bundled):
    with pytest.raises(UserError, match="unknown model"):
        models.load("no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.load(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in bundled.folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt checkpoint"):
        models.load(str(broken))
