"""WINO, Wide-In Narrow-Out: draft every confident mask, verify through a shadow block, revoke what fails.

Source: Hong et al., "Wide-In, Narrow-Out: Revokable Decoding for Efficient and Effective DLLMs"
(arXiv 2507.18578, ICLR 2026); Feng-Hong/WINO-DLLM `LLaDA/decoding.py` @9549a1d
(`decoding_wino`), defaults from `LLaDA/configs/gsm8k.yaml`.

The canvas is [prompt | generation | shadow], the shadow a copy of the current block made of
[MASK] tokens at the block's RoPE positions. One forward per step (one NFE) with an attention
mask such that no real position sees the shadow, and shadow position i sees the whole canvas
except block position i, plus the other shadow positions: its prediction at i is a
leave-one-out verification of the token committed at i. Per step, within the current block:
- wide in: commit every mask whose confidence > `threshold` (tau1), at most
  max_accept = min(max(int(0.7 * masks), 5), 20) (the most confident ones), at least the
  single most confident mask;
- narrow out: only when this step committed more than one token, revoke (back to [MASK]) every
  previously committed block token whose shadow confidence < `threshold_back` (tau2); when that
  is at least as many as the previous step committed (30 before the first step), revoke only the
  (previous count - 1) least confident ones.
A block repeats until it has no mask; no EOS stop, so the forward count varies per prompt.

Revoked tokens are commits undone: `committed_per_step` counts every mask -> token write,
`Generation.revoked` the token -> mask writes and `Generation.rewritten` the commits that put a
different token where a revoked one stood (definitions in dleval/metrics.py).

Where this differs from the reference, and why:
- The method's summary ("re-mask committed tokens whose verified confidence falls below tau2";
  the paper itself was not read for this port) omits two rules of the code, which is followed:
  revocations are capped by the previous step's accept count, and happen only on steps that
  accepted more than one token.
- The draft argmax skips [MASK] (`_parts.propose`): a trained model never ranks it first, a
  random one could, and the reference would then "commit" a mask and leave it in the output.
- Confidences are float64 as in the reference; ties break by position instead of
  `torch.topk`'s unspecified order (decoders.md §0.3).
Needs a model with `custom_attention` (RoPE positions and a per-query attention mask; the native
LLaDA and Dream have it). The reference has no Dream path: on a Dream model the decoder is
unchanged and the model keeps the shadow's meaning under its logit shift, verifying block position
i from a query at i-1 that does not see the token at i (dleval/models/dream.py, "Custom
attention"); not compared with any reference. One prompt at a time (BATCHED = False), as the
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
FIRST_LAST_ACCEPT = 30  # decoding_wino: `last_accept = 30` before a block's first step
ACCEPT_FRACTION, ACCEPT_MIN, ACCEPT_MAX = 0.7, 5, 20  # decoding_wino: min(max(int(masks * 0.7), 5), 20)


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # LLaDA/configs/gsm8k.yaml generation_args.gen_length
    block_length: int = 128  # LLaDA/configs/gsm8k.yaml generation_args.block_length
    threshold: float = 0.6  # tau1, gsm8k.yaml method_args.wino.threshold (0.7 for math500)
    threshold_back: float = 0.9  # tau2, gsm8k.yaml method_args.wino.threshold_back
    temperature: float = 0.0  # gsm8k.yaml generation_args.temperature

    def __post_init__(self) -> None:
        _parts.check_blocks(self.gen_length, self.block_length)
        for name in ("threshold", "threshold_back"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise ValueError(f"{name} must be a probability in [0, 1], not {value}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")


def check(model: Model, cfg: Config) -> None:
    if not getattr(model, "custom_attention", False):
        raise ValueError(
            "wino needs a model with custom_attention (RoPE positions and a per-query attention mask), such as the native LLaDA or Dream"
        )


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    check(model, cfg)
    return _parts.one_at_a_time(model, prompts, seeds, lambda prompt, i: _decode_one(model, prompt, cfg, on_step, i))


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None, row: int) -> Generation:
    canvas, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)
    B, N, mask_id = cfg.block_length, P + cfg.gen_length, model.mask_id
    x = torch.cat([canvas, torch.full((1, B), mask_id, dtype=torch.long, device=canvas.device)], dim=1)  # (1, N+B)
    edits = _parts.Edits(x[:, P:N], mask_id)
    commits: list[int] = []
    eye = torch.eye(B, dtype=torch.bool, device=x.device)
    for s in range(P, N, B):
        e = s + B
        positions = torch.cat([torch.arange(N, device=x.device), torch.arange(s, e, device=x.device)])  # (N+B,)
        attention = torch.ones(1, N + B, N + B, dtype=torch.bool, device=x.device)
        attention[:, :, N:] = False  # nobody sees the shadow...
        attention[:, N:, N:] = True  # ...but the shadow itself
        attention[:, N:, s:e] = ~eye  # shadow i sees the block except its own position
        blk = x[:, s:e]  # (1, B) view of the block, written in place
        masked = blk == mask_id  # (1, B)
        left = int(masked.sum())  # the block's masks, tracked on the host from here on
        last_accept = FIRST_LAST_ACCEPT
        while left:
            max_accept = min(max(int(left * ACCEPT_FRACTION), ACCEPT_MIN), ACCEPT_MAX)
            logits = _parts.forward(model, x, [row], attention_mask=attention, positions=positions).logits  # (1, N+B, V)
            draft = logits[:, s:e]
            p = torch.softmax(draft, dim=-1, dtype=torch.float64)  # before the argmax writes the [MASK] logit
            x0 = _parts.propose_(draft, cfg.temperature, mask_id)  # (1, B) drafts
            conf = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1).masked_fill_(~masked, _parts.NEG_INF)
            accept = conf > cfg.threshold
            n = int(accept.sum())  # the step's host sync
            if n > max_accept:
                accept, n = _parts.top_k_mask(conf, [max_accept]), max_accept  # all above the threshold: masks
            elif n == 0:
                accept, n = _parts.top_k_mask(conf, [1]), 1  # the best mask (masks score >= 0, the rest -inf)
            revoke, r = None, 0
            if n > 1:  # only then is the shadow's verdict read: its softmax is taken only then
                back = _parts.confidence(logits[:, N:], blk)  # (1, B): shadow's belief in each current token
                back = back.masked_fill_(masked, float("inf"))
                revoke = back < cfg.threshold_back
                r = int(revoke.sum())
                if r >= last_accept:  # at least last_accept committed tokens fail: the last_accept - 1 worst
                    revoke, r = _parts.top_k_mask(-back, [last_accept - 1]) & ~masked, last_accept - 1
            torch.where(accept, x0, blk, out=blk)
            edits.commit(accept, x0, s - P)
            if r:
                blk.masked_fill_(revoke, mask_id)
                edits.revoke(revoke, r)
            masked = blk == mask_id
            left += r - n
            last_accept = n
            commits.append(n)
            if on_step is not None:
                step = torch.zeros_like(canvas, dtype=torch.bool)
                step[:, s:e] = accept if revoke is None else accept & ~revoke
                _parts.report_step(on_step, len(commits), x[:, :N], step)
    return Generation(tuple(x[0, P:N].tolist()), tuple(commits), "length", revoked=edits.revoked, rewritten=edits.rewritten)
