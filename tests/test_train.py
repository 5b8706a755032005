"""`dleval train tiny`: the recipe is deterministic and writes a loadable HF-format folder.

Run: pytest tests/test_train.py
"""

from __future__ import annotations

import hashlib

import torch

from dleval import models
from dleval.train import tiny

SMALL = tiny.TinyConfig(
    d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64, train_steps=3, batch_size=4, eval_problems=4, gen_lengths=(32,)
)


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_recipe_is_deterministic_and_loadable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    meta = tiny.train(SMALL, a, log=lambda m: None)
    tiny.train(SMALL, b, log=lambda m: None)
    assert digest(a) == digest(b)
    assert set(meta["accuracy"]) == {"1_tokens_per_step", "2_tokens_per_step", "4_tokens_per_step", "8_tokens_per_step"}
    loaded = models.load(str(a), device="cpu")
    assert loaded.model.mask_id == tiny.MASK_ID and loaded.model.eos_id == tiny.EOS_ID
    assert (
        loaded.tokenizer.chat_template
        and loaded.tokenizer.decode(loaded.tokenizer("The dial shows 3.")["input_ids"]) == "The dial shows 3."
    )


def test_chat_template_matches_the_training_prompt(bundled):
    question = "The dial shows 3. Turns: +1, -1. Where does it stop?"
    rendered = bundled.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    assert rendered == tiny.chat_prompt(question)


def test_noising_never_masks_the_prompt_and_spans_all_ratios():
    ids = torch.randint(2, 20, (64, 40))
    noisy, masked, p_mask = tiny.forward_process(ids, P=10, gen=torch.Generator().manual_seed(0), eps=0.05)
    assert not masked[:, :10].any() and (noisy[:, :10] == ids[:, :10]).all()
    assert (noisy[masked] == tiny.MASK_ID).all() and (noisy[~masked] == ids[~masked]).all()
    rates = p_mask[:, 0].sort().values
    strata = (torch.arange(64) + 0.5) / 64 * 0.95 + 0.05
    assert torch.allclose(rates, strata, atol=0.95 / 128 + 1e-6)  # one draw per 1/64 of [0, 1)


def test_loss_is_finite_and_positive():
    cfg = tiny.LLaDAConfig(d_model=16, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=32, vocab_size=20, embedding_size=20)
    model = models.llada.LLaDA(cfg)
    model.init_weights(0)
    ids = torch.randint(2, 20, (8, 12))
    loss = tiny.diffusion_loss(model, ids, P=4, gen=torch.Generator().manual_seed(0), eps=0.05)
    assert torch.isfinite(loss) and loss.item() > 0


def test_dream_recipe_is_deterministic_and_writes_a_dream_format_folder(tmp_path):
    """`dleval train tiny --arch dream`: Dream's config.json keys, parameter names, chat template and shifted objective."""
    import dataclasses
    import json

    from safetensors import safe_open

    from dleval.models.dream import Dream

    cfg = dataclasses.replace(SMALL, arch="dream")
    a, b = tmp_path / "a", tmp_path / "b"
    meta = tiny.train(cfg, a, log=lambda m: None)
    tiny.train(cfg, b, log=lambda m: None)
    assert digest(a) == digest(b) and meta["recipe"] == "dleval train tiny --arch dream"
    raw = json.loads((a / "config.json").read_text())
    assert raw["model_type"] == "Dream" and raw["architectures"] == ["DreamModel"]
    assert {"hidden_size", "num_hidden_layers", "num_key_value_heads", "rope_theta", "mask_token_id"} <= set(raw)
    with safe_open(str(a / "model.safetensors"), "pt") as f:
        assert {"model.layers.0.self_attn.q_proj.bias", "lm_head.weight", "model.embed_tokens.weight"} <= set(f.keys())
    loaded = models.load(str(a), device="cpu")
    assert isinstance(loaded.model, Dream) and loaded.model.mask_id == tiny.MASK_ID
    question = "The dial shows 3. Turns: +1, -1. Where does it stop?"
    rendered = loaded.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    assert rendered == tiny.chat_prompt(question, "dream")
    assert loaded.model.eot_id == loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
