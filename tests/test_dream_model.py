"""The native Dream transformer: logit shift, cache equivalence, padding, and loading a Dream-format folder.

Run: pytest tests/test_dream_model.py
"""

from __future__ import annotations

import json

import pytest
import torch

from dleval import models
from dleval.errors import UserError
from dleval.models.dream import Dream, DreamConfig
from tests.conftest import random_dream

ATOL = 1e-5

# Dream-org/Dream-v0-Instruct-7B config.json (the keys that define the network), verbatim.
DREAM_7B_CONFIG = {
    "architectures": ["DreamModel"],
    "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "mask_token_id": 151666,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "model_type": "Dream",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "pad_token_id": 151643,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2",
    "use_cache": False,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


def canvas(seed: int = 0, length: int = 40, vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (2, length), generator=g)


def raw_logits(model: Dream, ids: torch.Tensor) -> torch.Tensor:
    """The network's own output (logit at i predicts token i+1), recomputed from the parts."""
    h = model.forward(ids).kv.keys[-1][:, 0]  # (B, T, hidden): the final normed hidden states
    return h @ model.lm_head.weight.T


def test_logit_shift_is_undone():
    model = random_dream()
    x = canvas()
    out = model.forward(x).logits
    raw = raw_logits(model, x)
    torch.testing.assert_close(out[:, 1:], raw[:, :-1], atol=ATOL, rtol=0)  # logits[:, i] = raw[:, i-1]
    torch.testing.assert_close(out[:, 0], raw[:, 0], atol=ATOL, rtol=0)  # position 0 keeps its own, as diffusion_generate


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_prefix_cache_matches_full_forward(kv_heads):
    """A span after a prefix cache takes its first logit from the position before it."""
    model = random_dream(kv_heads=kv_heads)
    x = canvas()
    full = model.forward(x)
    for s in (1, 17, 39):
        cache = full.kv.keep(s)
        out = model.forward(x[:, s:], start=s, cache=cache)
        torch.testing.assert_close(out.logits, full.logits[:, s:], atol=ATOL, rtol=0)
        assert cache.length == s


def test_inplace_span_matches_full_forward_and_updates_hidden_states():
    model = random_dream()
    x = canvas()
    full = model.forward(x)
    cache = full.kv.clone()
    out = model.forward(x[:, 16:24], start=16, cache=cache)
    torch.testing.assert_close(out.logits, full.logits[:, 16:24], atol=ATOL, rtol=0)
    y = x.clone()
    y[:, 16:24] = 5
    model.forward(y[:, 16:24], start=16, cache=cache)
    # the next span starting at 24 reads the hidden state at 23 written by the span forward
    after = model.forward(y[:, 24:30], start=24, cache=cache.keep(24)).logits[:, 0]
    torch.testing.assert_close(after, cache.keys[-1][:, 0, 23] @ model.lm_head.weight.T, atol=ATOL, rtol=0)


def test_append_first_n_positions_matches_full_forward():
    """d3LLM's delayed cache: append the first n positions of a forward, then continue after them."""
    model = random_dream()
    x = canvas()
    full = model.forward(x)
    cache = full.kv.keep(10)
    step = model.forward(x[:, 10:], start=10, cache=cache)
    grown = cache.append(step.kv, 8)
    assert grown.length == 18
    for got, want in zip(grown.keys + grown.values, full.kv.keys + full.kv.values):  # hidden-state entry included
        torch.testing.assert_close(got, want[:, :, :18], atol=ATOL, rtol=0)
    out = model.forward(x[:, 18:], start=18, cache=grown)
    torch.testing.assert_close(out.logits, full.logits[:, 18:], atol=ATOL, rtol=0)


def test_left_padding_matches_unpadded_row():
    """Position ids from the cumulative attention mask, as Dream's diffusion_generate."""
    model = random_dream()
    x = canvas()
    x[1, :3] = 0
    attention = torch.ones_like(x, dtype=torch.bool)
    attention[1, :3] = False
    padded = model.forward(x, attention_mask=attention)
    alone = model.forward(x[1:, 3:])
    torch.testing.assert_close(padded.logits[1, 4:], alone.logits[0, 1:], atol=ATOL, rtol=0)
    cached = model.forward(x[:, 20:], start=20, cache=padded.kv.keep(20), attention_mask=attention)
    torch.testing.assert_close(cached.logits, padded.logits[:, 20:], atol=ATOL, rtol=0)


def test_cache_misuse_is_rejected():
    model = random_dream()
    x = canvas()
    with pytest.raises(ValueError, match="without a cache"):
        model.forward(x[:, 5:], start=5)
    cache = model.forward(x).kv
    with pytest.raises(ValueError, match="not built by a Dream model"):
        model.forward(x[:, :4], start=0, cache=type(cache)(cache.keys[:-1], cache.values[:-1]))
    with pytest.raises(ValueError, match="gap"):
        model.forward(x[:, :4], start=41, cache=cache)


def write_tokenizer(folder):
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3}
    Tokenizer(tok_models.WordLevel(vocab, unk_token="<|endoftext|>")).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"})
    )


def scaled_7b_config() -> dict:
    """The 7B config scaled down in layers and width (same 7:1 grouped-query ratio, same vocab and ids)."""
    return {
        **DREAM_7B_CONFIG,
        "hidden_size": 56,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 7,
        "num_key_value_heads": 1,
    }


def test_dream_format_folder_loads_with_checkpoint_names_and_without_a_copy(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    raw = scaled_7b_config()
    (tmp_path / "config.json").write_text(json.dumps(raw))
    write_tokenizer(tmp_path)
    reference = Dream(DreamConfig.from_dict(raw))
    reference.init_weights(0)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    names = sorted(state)
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.layers.1.self_attn.k_proj.bias" in names
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert not any(k.endswith("o_proj.bias") or "mlp" in k and k.endswith("bias") for k in names)  # bias on q/k/v only
    half = len(names) // 2  # two shards with an index, as the hub checkpoints
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    import safetensors.torch as st

    loaded_tensors = []
    real_load = st.load_file

    def recording_load(path, device="cpu"):
        shard = real_load(path, device=device)
        loaded_tensors.extend(shard.values())
        return shard

    monkeypatch.setattr(st, "load_file", recording_load)
    loaded = models.load(str(tmp_path), device="cpu")
    model = loaded.model
    assert isinstance(model, Dream) and model.logit_shift
    assert model.mask_id == 151666 and model.eos_id == 151643 and model.eot_id == 2
    assert model.cfg.rope_theta == 1e6 and model.cfg.num_key_value_heads == 1
    assert sorted(model.state_dict()) == names
    # The parameters are the shard tensors themselves: no second copy of the weights was made.
    shard_ptrs = {t.data_ptr() for t in loaded_tensors}
    assert all(p.data_ptr() in shard_ptrs for p in model.parameters())
    assert not any(p.is_meta for p in model.parameters())
    x = torch.randint(0, 1000, (1, 12))
    torch.testing.assert_close(model.forward(x).logits, reference.forward(x).logits)


def test_unsupported_dream_configs_are_user_errors(tmp_path):
    for bad in ({"rope_scaling": {"type": "yarn", "factor": 4}}, {"hidden_act": "gelu"}, {"mask_token_id": None}):
        (tmp_path / "config.json").write_text(json.dumps({**scaled_7b_config(), **bad}))
        write_tokenizer(tmp_path)
        from safetensors.torch import save_file

        save_file({"lm_head.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
        with pytest.raises(UserError, match="invalid config.json"):
            models.load(str(tmp_path), device="cpu")


def test_model_family_picks_the_dream_checkpoints():
    from dleval import decoders

    assert decoders.info("dparallel", "dream").paper_model == "Zigeng/dParallel_Dream_7B_Instruct"
    assert decoders.info("d3llm", "dream").paper_model == "d3LLM/d3LLM_Dream"
    assert decoders.info("fastdllm", "dream").paper_model == "Dream-org/Dream-v0-Base-7B"
    assert decoders.info("llada", "dream").paper_model == "Dream-org/Dream-v0-Instruct-7B"
    assert all(decoders.info(n, "dream").cpu_model == "tiny-dream" for n in decoders.names())
    assert decoders.info("dparallel").paper_model == "Zigeng/dParallel-LLaDA-8B-instruct"  # the default family is unchanged
    for name in (
        "dream-7b-instruct",
        "dream-7b-base",
        "diffucoder-7b-instruct",
        "dream-coder-7b-instruct",
        "dparallel-dream-7b",
        "d3llm-dream",
    ):
        assert models.REGISTRY[name].source.count("/") == 1
    with pytest.raises(UserError, match="model family"):
        decoders.info("llada", "qwen")


def test_bos_prompt_field_prepends_the_tokenizer_bos_once(bundled):
    """Dream Base evaluations prepend BOS (add_bos_token=true): -T bos=true."""
    from dleval import prompts
    from dleval.tasks import PromptSpec
    from dleval.types import Sample

    sample = Sample("1", "What is 2+2?", "4")
    tok = bundled.tokenizer
    plain = prompts.render(sample, PromptSpec(style="raw"), tok)
    with_bos = prompts.render(sample, PromptSpec(style="raw", bos=True), tok)
    assert plain.ids[0] != tok.bos_token_id
    assert with_bos.ids == [tok.bos_token_id, *plain.ids]
    assert prompts.template_hash(PromptSpec(bos=True), tok) != prompts.template_hash(PromptSpec(), tok)


# ---------------------------------------------------------------------------- custom attention (WINO)


def shadow_forward(model, x, s, B):
    """WINO's extended canvas (tests/test_wino.py): a [MASK] shadow of block [s, s+B) after the canvas."""
    N = x.shape[1]
    xx = torch.cat([x, torch.full((1, B), model.mask_id, dtype=torch.long)], dim=1)
    positions = torch.cat([torch.arange(N), torch.arange(s, s + B)])
    att = torch.ones(1, N + B, N + B, dtype=torch.bool)
    att[:, :, N:] = False
    att[:, N:, N:] = True
    att[:, N:, s : s + B] = ~torch.eye(B, dtype=torch.bool)
    return model.forward(xx, attention_mask=att, positions=positions).logits


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_custom_attention_with_a_full_mask_and_plain_positions_is_the_plain_forward(kv_heads):
    model = random_dream(kv_heads=kv_heads)
    x = torch.randint(2, 60, (2, 17), generator=torch.Generator().manual_seed(0))
    plain = model.forward(x)
    custom = model.forward(x, attention_mask=torch.ones(2, 17, 17, dtype=torch.bool), positions=torch.arange(17))
    torch.testing.assert_close(custom.logits, plain.logits)
    for a, b in zip(custom.kv.keys, plain.kv.keys):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_custom_attention_predicts_a_shadow_position_as_dream_predicts_a_remasked_one(kv_heads):
    """One layer and a one-position shadow at p: its logits are Dream's prediction of token p on
    the canvas with p masked (the query at p-1 sees [MASK] at p, not the real token), while the
    canvas rows are the plain forward's."""
    model = random_dream(layers=1, kv_heads=kv_heads)
    x = torch.randint(2, 60, (1, 20), generator=torch.Generator().manual_seed(1))
    for p in (1, 9, 19):
        logits = shadow_forward(model, x, p, 1)
        torch.testing.assert_close(logits[:, :20], model.forward(x).logits)
        remasked = x.clone()
        remasked[0, p] = model.mask_id
        torch.testing.assert_close(logits[:, 20], model.forward(remasked).logits[:, p])


def test_custom_attention_shadow_sees_all_but_its_own_position():
    """WINO's shadow semantics under the shift (one layer, as tests/test_wino.py): shadow i does
    not react to the token at block position i; shadow i-1 and shadow i+1 (whose query carries
    the token at i) do."""
    model = random_dream(layers=1)
    x = torch.randint(2, 60, (1, 20), generator=torch.Generator().manual_seed(0))
    s, B = 8, 4
    logits = shadow_forward(model, x, s, B)
    torch.testing.assert_close(logits[:, :20], model.forward(x).logits)
    y = x.clone()
    y[0, s + 2] = 61
    changed = shadow_forward(model, y, s, B)
    torch.testing.assert_close(changed[:, 20 + 2], logits[:, 20 + 2])
    assert not torch.allclose(changed[:, 20 + 1], logits[:, 20 + 1])
    assert not torch.allclose(changed[:, 20 + 3], logits[:, 20 + 3])


def test_custom_attention_misuse_is_refused():
    model = random_dream()
    x = torch.randint(2, 60, (1, 8))
    cache = model.forward(x).kv
    with pytest.raises(ValueError, match="without a cache"):
        model.forward(x[:, :2], start=8, cache=cache, positions=torch.arange(8, 10))
    with pytest.raises(ValueError, match="p-1"):
        model.forward(x[:, :2], positions=torch.tensor([0, 5]), attention_mask=torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        model.forward(x, positions=torch.arange(7))
