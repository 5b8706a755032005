"""Shared fixtures: a small random LLaDA-architecture model, the bundled tiny model, fakes.

Run the default suite with `pytest` (slow and GPU tests are excluded by pyproject's addopts).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dleval.models.dream import Dream, DreamConfig
from dleval.models.llada import LLaDA, LLaDAConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models; more threads only contend with the executor's subprocesses


def random_llada(seed: int = 0, vocab: int = 64, layers: int = 2, kv_heads: int = 4) -> LLaDA:
    cfg = LLaDAConfig(
        d_model=32, n_heads=4, n_kv_heads=kv_heads, n_layers=layers, mlp_hidden_size=64, vocab_size=vocab, embedding_size=vocab,
        max_sequence_length=256, rope_theta=10000.0, mask_token_id=1, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = LLaDA(cfg, eot_id=2)
    model.init_weights(seed, std=0.3)  # large init: peaked, varied logits so decoders make real choices
    return model.eval()


def random_dream(seed: int = 0, vocab: int = 64, layers: int = 2, kv_heads: int = 2) -> Dream:
    """The Dream architecture (logit-shifted, q/k/v biases, GQA) at random_llada's size and token ids."""
    cfg = DreamConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv_heads,
        vocab_size=vocab, max_position_embeddings=256, rope_theta=10000.0, mask_token_id=1, bos_token_id=3, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    model = Dream(cfg, eot_id=2)
    model.init_weights(seed, std=0.3)
    with torch.no_grad():  # init_weights zeroes biases; random ones exercise the q/k/v bias path
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        model.lm_head.weight[cfg.mask_token_id] = (
            0  # logit 0 for [MASK], below the best of 63 random ones: never proposed, as in a trained model
        )
    return model.eval()


def with_and_without_band(monkeypatch, module, run: Callable, attr: str = "BAND_SCALE") -> tuple:
    """(run() as is, run() with the module's float32 band scaled to infinity): the second takes
    every decision on the reference's float64 scores, so a float32-first path must equal it."""
    fast = run()
    with monkeypatch.context() as m:
        m.setattr(module, attr, math.inf)
        slow = run()
    return fast, slow


def write_random_filter(folder: Path, block_length: int, seed: int = 0, bias: float = 2.0) -> Path:
    """A deterministic random Learn2PD filter for `block_length` in `folder` (the random model has
    no trained one); `bias` shifts the acceptance logits so that some positions pass 0.96."""
    from dleval.decoders import learn2pd

    gen = torch.Generator().manual_seed(seed)
    hidden = 16
    params = {
        "hidden.weight": torch.randn(hidden, block_length, generator=gen),
        "hidden.bias": torch.randn(hidden, generator=gen),
        "out.weight": torch.randn(block_length, hidden, generator=gen),
        "out.bias": torch.full((block_length,), bias),
    }
    path = learn2pd.filter_path(folder, block_length)
    learn2pd.save_filter(path, params, {"recipe": "tests/conftest.py write_random_filter", "seed": seed, "bias": bias})
    return path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> Path:
    """Model-side files decoders may need, for the random model (which has no folder): a Learn2PD filter for block 8."""
    folder = tmp_path_factory.mktemp("model_files")
    write_random_filter(folder, 8)
    return folder


@pytest.fixture
def tiny_random() -> LLaDA:
    return random_llada()


@pytest.fixture(scope="session")
def bundled():
    """The bundled tiny model and tokenizer (dleval.models.load('tiny'))."""
    from dleval import models

    return models.load("tiny", device="cpu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data ($DLEVAL_DATA_DIR, else <repo>/../shared/data); skips when absent."""
    env = os.environ.get("DLEVAL_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {path} (set DLEVAL_DATA_DIR)")
    return path
