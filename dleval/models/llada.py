"""The native bidirectional transformer for LLaDA-format checkpoints, with a KV cache.

Architecture and parameter names follow GSAI-ML/LLaDA-8B-Instruct (an OLMo-style "llama" block:
RMSNorm, rotate-half RoPE, SwiGLU MLP, no biases, no causal mask), as in the modeling file that
NVlabs/Fast-dLLM ships (`llada/model/modeling_llada.py` @24cc59e). State-dict keys are the
checkpoint's own (`model.transformer.blocks.0.q_proj.weight`, ...), so LLaDA, dParallel-LLaDA
and d3LLM-LLaDA safetensors load without renaming, and the bundled tiny model is saved in the
same format. Plain PyTorch: no `trust_remote_code`, and a cache the remote code lacks.

Differences from the reference modeling code, none of which change the function computed:
- the cache stores keys after RoPE at their absolute positions (the reference stores them
  before RoPE and re-rotates the whole cache every call);
- a padding mask, when given, masks keys (the Fast-dLLM copy ignores `attention_mask`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dleval.models.base import ForwardOutput, KVCache
from dleval.models.layers import RMSNorm, init_normal


@dataclass(frozen=True)
class LLaDAConfig:
    """The config.json keys of a LLaDA checkpoint that define the network."""

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int = 32
    n_layers: int = 32
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464
    embedding_size: int = 126464
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    weight_tying: bool = False
    include_qkv_bias: bool = False

    def __post_init__(self) -> None:
        """Impossible values fail here, naming the key, instead of deep inside torch."""
        for name in (
            "d_model",
            "n_heads",
            "n_kv_heads",
            "n_layers",
            "mlp_hidden_size",
            "vocab_size",
            "embedding_size",
            "max_sequence_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads}), "
                f"and n_heads a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"the head size d_model / n_heads ({self.head_dim}) must be even for rotary embeddings")
        if self.embedding_size < self.vocab_size:
            raise ValueError(f"embedding_size ({self.embedding_size}) must be >= vocab_size ({self.vocab_size})")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LLaDAConfig:
        unsupported = {
            "alibi": True,
            "block_type": "sequential",
            "attention_layer_norm": True,
            "scale_logits": True,
            "input_emb_norm": True,
            "include_bias": True,
        }
        for key, bad in unsupported.items():
            if raw.get(key) == bad:
                raise ValueError(f"LLaDA config sets {key}={bad!r}, which the native model does not implement")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names and v is not None}
        if "n_kv_heads" not in values and "n_heads" in values:
            values["n_kv_heads"] = values["n_heads"]
        if "embedding_size" not in values and "vocab_size" in values:
            values["embedding_size"] = values["vocab_size"]
        cfg = cls(**values)
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):  # a checkpoint's ids index its embedding
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < cfg.embedding_size:
                raise ValueError(f"{name} must be a token id below embedding_size ({cfg.embedding_size}), not {value!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """A config.json in LLaDA's own format, readable by its remote code too."""
        return {
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "activation_type": "silu",
            "block_type": "llama",
            "layer_norm_type": "rms",
            "rope": True,
            "alibi": False,
            "include_bias": False,
            "attention_dropout": 0.0,
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
            **dataclasses.asdict(self),
        }

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (T, head_dim), in fp32 for absolute `positions` (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd). Rotation computed in fp32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Block(nn.Module):
    """One LLaDA "llama" block; attribute names are the checkpoint's."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.include_qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=cfg.include_qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=cfg.include_qkv_bias)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        start: int,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(h).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past is None:
            keys, values = k, v
        elif start == past[0].shape[2]:
            keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        else:  # dual cache: overwrite the span in place, attend over the whole cache
            past[0][:, :, start : start + T] = k
            past[1][:, :, start : start + T] = v
            keys, values = past
        if cfg.n_kv_heads != cfg.n_heads:
            rep = cfg.n_heads // cfg.n_kv_heads
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        if key_mask is None:
            mask = None
        elif key_mask.dim() == 3:  # per-query mask (B, T, Tk), e.g. WINO's shadow block
            mask = key_mask[:, None, :, : keys.shape[2]]  # (B, 1, T, Tk)
        else:
            mask = key_mask[:, None, None, : keys.shape[2]]  # (B, 1, 1, Tk)
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, T, cfg.d_model))
        h = self.ff_norm(x)
        x = x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, k, v


class _Transformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        parts: dict[str, nn.Module] = {
            "wte": nn.Embedding(cfg.embedding_size, cfg.d_model),
            "blocks": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            "ln_f": RMSNorm(cfg.d_model, cfg.rms_norm_eps),
        }
        if not cfg.weight_tying:
            parts["ff_out"] = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)
        self.transformer = nn.ModuleDict(parts)


class LLaDA(nn.Module):
    """The denoiser. Implements `dleval.models.base.Model`; `model.*` keys match LLaDA's."""

    logit_shift = False
    custom_attention = True  # forward accepts `positions` and a per-query (B, T, Tk) attention_mask

    def __init__(self, cfg: LLaDAConfig, *, eot_id: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Transformer(cfg)
        self.mask_id = cfg.mask_token_id
        self.eos_id = cfg.eos_token_id
        self.eot_id = eot_id
        self.vocab_size = cfg.embedding_size
        self.folder: Path | None = None  # set by dleval.models.load (see Model)
        self.encode: Callable[[str], list[int]] | None = None  # likewise

    @property
    def device(self) -> torch.device:
        return self.model.transformer["wte"].weight.device

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        """Deterministic normal init; residual projections scaled down by depth (GPT-2 style)."""
        init_normal(self, seed, std, self.cfg.n_layers, residual=("attn_out.weight", "ff_out.weight"), norms=("norm.weight", "ln_f.weight"))

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """ids: (B, T) at positions [start, start+T), or at `positions` (T,) when given (RoPE
        only; the cache bookkeeping still uses `start`). See `Model` for the cache modes."""
        T = ids.shape[1]
        if cache is None and start != 0:
            raise ValueError("a forward without a cache must start at position 0")
        if cache is not None and start > cache.length:
            raise ValueError(f"start={start} leaves a gap after a cache of length {cache.length}")
        if cache is not None and start < cache.length and start + T > cache.length:
            raise ValueError("an in-place span must lie inside the cache")
        tr = self.model.transformer
        x = tr["wte"](ids)
        if positions is None:
            positions = torch.arange(start, start + T, device=ids.device)
        elif positions.shape != (T,):
            raise ValueError(f"positions must have shape ({T},), not {tuple(positions.shape)}")
        rope = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        key_mask = None if attention_mask is None else attention_mask.to(device=ids.device, dtype=torch.bool)
        keys, values = [], []
        for i, block in enumerate(tr["blocks"]):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, k, v = block(x, rope, start, past, key_mask)
            keys.append(k)
            values.append(v)
        x = tr["ln_f"](x)
        head = tr["wte"].weight if self.cfg.weight_tying else tr["ff_out"].weight
        logits = F.linear(x, head)  # (B, T, V)
        return ForwardOutput(logits=logits, kv=KVCache(keys, values))


def read_config(folder: Path) -> LLaDAConfig:
    return LLaDAConfig.from_dict(json.loads((folder / "config.json").read_text()))
