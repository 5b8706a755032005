"""The native bidirectional transformer for Dream-format checkpoints, with a KV cache.

Architecture and parameter names follow Dream-org/Dream-v0-Instruct-7B (`modeling_dream.py`,
a Qwen2 block: RMSNorm, rotate-half RoPE with θ from config.json, SwiGLU MLP, biases on the
q/k/v projections only, grouped-query attention, no causal mask), as in the copy NVlabs/Fast-dLLM
ships (`dream/model/modeling_dream.py` @24cc59e). State-dict keys are the checkpoint's own
(`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`, ...), so Dream, DiffuCoder,
Dream-Coder, dParallel-Dream and d3LLM-Dream safetensors load without renaming. Plain PyTorch:
the remote code no longer builds under transformers 5.x (its RoPE setup raises KeyError).

**Logit shift.** Dream was adapted from an autoregressive model: its logit at position i-1
predicts token i. `Dream.forward` undoes this, so logits[:, i] predicts token i as for every
other model. Position 0 keeps its own logit, as in Dream's `diffusion_generate`
(`torch.cat([logits[:, :1], logits[:, :-1]])`). A span forwarded after a cache takes its first
logit from the position before it: the cache carries one extra entry after the per-layer keys
and values, the final normed hidden states (B, 1, T, hidden), and the model applies `lm_head`
to the one at start-1. That entry is kept, appended and overwritten by the same `KVCache`
operations as the keys, so the decoders' cache code needs no Dream case. (The reference cached
generators take the first logit of a cached span from the span's own position instead; they
commit that position from the preceding full forward, so it is never read, and both rules give
the same tokens.)

**Custom attention** (`custom_attention`, for WINO's shadow block): `forward(ids, positions=P,
attention_mask=M)` with P (T,) RoPE positions and M (B, T, T) per-query, without a cache. The
contract is the one every model keeps: logits[:, i] predict the token at P[i], computed by a
query that sees the keys M[:, i] allows. Dream predicts the token at p from its output at p-1, so
row i reads row i-1 when that row is at P[i]-1 and sees the same keys (the plain canvas: a full
mask gives the plain forward); any other row (P[i] > 0) gets a query-only predictor appended to
the sequence: the token at P[i]-1 (the first row there), at that position, seeing what M[:, i]
allows, with itself in place of the row it copies, and seen by no one. So WINO's shadow i (a
[MASK] at block position i that does not see the real token there) is verified by a query at i-1
that does not see it either but sees the shadow [MASK] at i: Dream's prediction of a remasked
position. WINO's reference (Feng-Hong/WINO-DLLM) has no Dream path; this is our adaptation.

**Left padding** as Dream's `diffusion_generate`: position ids are the cumulative count of
real tokens minus one (pads get 1), and padded keys are masked. Dream also masks padded
*queries* (a pairwise mask, NaN rows under SDPA); here they attend to the real keys, which
changes only the pad rows' own outputs, never read.

Differences from the reference modeling code, none of which change the function computed:
the cache stores keys after RoPE at their absolute positions, and `lm_head` runs in the
model's dtype as in the reference.
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
class DreamConfig:
    """The config.json keys of a Dream checkpoint that define the network (defaults: Dream-v0-Instruct-7B)."""

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    max_position_embeddings: int = 131072
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    mask_token_id: int = 151666
    bos_token_id: int = 151643
    eos_token_id: int = 151643
    pad_token_id: int = 151643
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DreamConfig:
        if raw.get("rope_scaling"):
            raise ValueError(f"Dream config sets rope_scaling={raw['rope_scaling']!r}, which the native model does not implement")
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"Dream config sets hidden_act={raw['hidden_act']!r}; the native model implements silu")
        if raw.get("use_sliding_window"):
            raise ValueError("Dream config sets use_sliding_window=true, which the native model does not implement")
        if raw.get("mask_token_id") is None:
            raise ValueError("Dream config has no mask_token_id")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names and v is not None}
        if "num_key_value_heads" not in values and "num_attention_heads" in values:
            values["num_key_value_heads"] = values["num_attention_heads"]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A config.json in Dream's own format, readable by its remote code too."""
        return {
            "architectures": ["DreamModel"],
            "model_type": "Dream",
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "max_window_layers": self.num_hidden_layers,
            "rope_scaling": None,
            "sliding_window": None,
            "use_sliding_window": False,
            "use_cache": False,
            **dataclasses.asdict(self),
        }

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def is_dream(raw: dict[str, Any]) -> bool:
    """Whether a config.json describes a Dream-architecture checkpoint."""
    return str(raw.get("model_type", "")).lower() == "dream" or "DreamModel" in raw.get("architectures", [])


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, 1, T, head_dim) for positions (B, T): computed in fp32, cast to `dtype` (DreamRotaryEmbedding)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd), in x's dtype as the reference's apply_rotary_pos_emb."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        kv = cfg.num_key_value_heads * cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, kv, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, kv, bias=True)
        self.o_proj = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """One Dream decoder layer; attribute names are the checkpoint's."""

    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        start: int,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, attn = self.cfg, self.self_attn
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = attn.k_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past is None:
            keys, values = k, v
        elif start == past[0].shape[2]:
            keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        else:  # dual cache: overwrite the span in place, attend over the whole cache
            past[0][:, :, start : start + T] = k
            past[1][:, :, start : start + T] = v
            keys, values = past
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        if rep > 1:
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        if key_mask is None:
            mask = None
        elif key_mask.dim() == 3:  # per-query mask (B, T, Tk): custom attention (Dream.forward)
            mask = key_mask[:, None, :, : keys.shape[2]]  # (B, 1, T, Tk)
        else:
            mask = key_mask[:, None, None, : keys.shape[2]]  # (B, 1, 1, Tk)
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + attn.o_proj(att.transpose(1, 2).reshape(B, T, -1))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class _Base(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def position_ids(attention_mask: torch.Tensor | None, start: int, T: int, B: int, device: torch.device) -> torch.Tensor:
    """(B, T) positions of [start, start+T): Dream's cumsum(mask) - 1 with pads at 1, or plain indices."""
    if attention_mask is None or bool(attention_mask.all()):
        return torch.arange(start, start + T, device=device).expand(B, T)
    m = attention_mask.to(device=device, dtype=torch.long)
    tok_idx = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
    return tok_idx[:, start : start + T]


class Dream(nn.Module):
    """The denoiser. Implements `dleval.models.base.Model` with the logit shift undone."""

    logit_shift = True
    custom_attention = True  # forward accepts `positions` and a per-query (B, T, Tk) attention_mask (without a cache)

    def __init__(self, cfg: DreamConfig, *, eot_id: int | None = None, bos_id: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Base(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mask_id = cfg.mask_token_id
        self.eos_id = cfg.eos_token_id
        self.eot_id = eot_id
        self.bos_id = cfg.bos_token_id if bos_id is None else bos_id
        self.vocab_size = cfg.vocab_size
        self.folder: Path | None = None  # set by dleval.models.load (see Model)
        self.encode: Callable[[str], list[int]] | None = None  # likewise

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def _head(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        """Deterministic normal init; residual projections scaled down by depth (GPT-2 style)."""
        init_normal(self, seed, std, self.cfg.num_hidden_layers, residual=("o_proj.weight", "down_proj.weight"), norms=("norm.weight",))

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """ids: (B, T) at positions [start, start+T). See `Model` for the cache modes; the returned
        kv holds one entry per layer plus the final hidden states (module docstring). `positions`
        (T,) or a (B, T, T) attention mask: custom attention, without a cache (module docstring)."""
        B, T = ids.shape
        n = self.cfg.num_hidden_layers
        if positions is not None or (attention_mask is not None and attention_mask.dim() == 3):
            if cache is not None or start != 0:
                raise ValueError("custom attention (positions, a per-query mask) runs without a cache on a Dream model")
            return self._custom_forward(ids, attention_mask, positions)
        if cache is None and start != 0:
            raise ValueError("a forward without a cache must start at position 0")
        if cache is not None and len(cache.keys) != n + 1:
            raise ValueError("this cache was not built by a Dream model (it lacks the hidden-state entry)")
        if cache is not None and start > cache.length:
            raise ValueError(f"start={start} leaves a gap after a cache of length {cache.length}")
        if cache is not None and start < cache.length and start + T > cache.length:
            raise ValueError("an in-place span must lie inside the cache")
        x = self.model.embed_tokens(ids)
        pos = position_ids(attention_mask, start, T, B, ids.device)
        rope = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        key_mask = None if attention_mask is None else attention_mask.to(device=ids.device, dtype=torch.bool)
        keys, values = [], []
        for i, layer in enumerate(self.model.layers):
            past = None if cache is None else (cache.keys[i], cache.values[i])
            x, k, v = layer(x, rope, start, past, key_mask)
            keys.append(k)
            values.append(v)
        h = self.model.norm(x)  # (B, T, hidden)
        head = self._head()
        raw = F.linear(h, head)  # (B, T, V); raw[:, j] predicts token start+j+1
        if start == 0:
            first = raw[:, :1]  # Dream keeps position 0's own logit
        else:
            first = F.linear(cache.keys[n][:, 0, start - 1 : start], head)  # (B, 1, V) from the cached hidden state
        if cache is not None and start < cache.length:  # dual cache: the span's hidden states overwrite in place
            cache.keys[n][:, 0, start : start + T] = h
        logits = torch.cat([first, raw[:, :-1]], dim=1)
        hidden = h[:, None]  # (B, 1, T, hidden): the extra cache entry
        return ForwardOutput(logits=logits, kv=KVCache([*keys, hidden], [*values, hidden]))

    def _custom_forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor | None) -> ForwardOutput:
        """Row i's logits predict the token at positions[i] as Dream does, from the output at the
        position before it, by a query that sees what mask row i allows (module docstring)."""
        B, T = ids.shape
        dev = ids.device
        pos = torch.arange(T, device=dev) if positions is None else positions.to(dev)
        if pos.shape != (T,):
            raise ValueError(f"positions must have shape ({T},), not {tuple(pos.shape)}")
        if attention_mask is None:
            mask = torch.ones(B, T, T, dtype=torch.bool, device=dev)
        elif attention_mask.dim() == 2:  # a key mask (B, T): the same for every query
            mask = attention_mask.to(device=dev, dtype=torch.bool)[:, None, :].expand(B, T, T)
        else:
            mask = attention_mask.to(device=dev, dtype=torch.bool)
        # Row i reads the output of row i-1 when that row is its predictor: one position before it,
        # seeing the same keys, itself included. Every other row (positions[i] > 0) gets a query-only
        # predictor appended: the token at positions[i]-1 at that position, with row i's mask, seeing
        # itself in place of the row it copies.
        twin = torch.zeros(T, dtype=torch.bool, device=dev)
        if T > 1:
            same_view = (mask[:, 1:] == mask[:, :-1]).all(dim=-1).all(dim=0)  # (T-1,)
            sees_itself = mask[:, torch.arange(T - 1, device=dev), torch.arange(T - 1, device=dev)].all(dim=0)
            twin[1:] = (pos[:-1] == pos[1:] - 1) & same_view & sees_itself
        rows = ((~twin) & (pos > 0)).nonzero().flatten()  # (R,) rows that need a predictor
        src = torch.arange(T, device=dev) - 1  # the row whose output becomes row i's logits (twins: i-1)
        src = torch.where(pos == 0, src + 1, src)  # position 0 keeps its own logit, as in Dream
        R = len(rows)
        if R:
            copies = pos[None, :] == (pos[rows] - 1)[:, None]  # (R, T): rows at the position before
            if not bool(copies.any(dim=1).all()):
                raise ValueError("a Dream model predicts a position from the one before it: positions must hold p-1 for every p > 0")
            copied = copies.int().argmax(dim=1)  # (R,) the first row at positions[i]-1
            r = torch.arange(R, device=dev)
            ids = torch.cat([ids, ids[:, copied]], dim=1)  # (B, T+R)
            pos = torch.cat([pos, pos[rows] - 1])
            full = torch.zeros(B, T + R, T + R, dtype=torch.bool, device=dev)
            full[:, :T, :T] = mask  # the given rows never see a predictor
            full[:, T:, :T] = mask[:, rows]  # a predictor sees what its row sees...
            full[:, T + r, copied] = False  # ...except the row it copies...
            full[:, T + r, T + r] = True  # ...which it replaces
            mask = full
            src[rows] = T + r
        x = self.model.embed_tokens(ids)
        rope = rope_tables(pos[None, :].expand(B, -1), self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        keys, values = [], []
        for layer in self.model.layers:
            x, k, v = layer(x, rope, 0, None, mask)
            keys.append(k[:, :, :T])
            values.append(v[:, :, :T])
        h = self.model.norm(x)  # (B, T+R, hidden)
        logits = F.linear(h[:, src], self._head())  # (B, T, V)
        hidden = h[:, None, :T]
        return ForwardOutput(logits=logits, kv=KVCache([*keys, hidden], [*values, hidden]))


def read_config(folder: Path) -> DreamConfig:
    return DreamConfig.from_dict(json.loads((folder / "config.json").read_text()))
