"""Shared fixtures: a small random LLaDA-architecture model, the bundled tiny model, fakes.

Run the default suite with `pytest` (slow and GPU tests are excluded by pyproject's addopts).
"""

from __future__ import annotations

import os

import pytest
import torch

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


@pytest.fixture
def tiny_random() -> LLaDA:
    return random_llada()


@pytest.fixture(scope="session")
def bundled():
    """The bundled tiny model and tokenizer (dleval.models.load('tiny'))."""
    from dleval import models

    return models.load("tiny", device="cpu")
