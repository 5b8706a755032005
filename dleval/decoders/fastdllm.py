"""Fast-dLLM v1: confidence-threshold parallel decoding with a prefix or dual KV cache.

Source: Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache
and Parallel Decoding" (arXiv 2505.22618); NVlabs/Fast-dLLM `llada/generate.py` @24cc59e
(`generate`, `generate_with_prefix_cache`, `generate_with_dual_cache`, `get_transfer_index`);
spec decoders.md §2. Sequential blocks; each block is decoded until it has no mask. A forward
commits the most confident masked position of the block plus every other one with conf >= tau
(the top-1 even below tau), or, with no threshold, LLaDA's fixed per-step quota. The cache is
rebuilt by a full forward at each block start, which is also the block's first decoding step and
one NFE (§2.7: the paper says "after completing a block"; the code does it at the start, and we
match the code). `prefix` keeps the K/V of [0, block_start) and forwards x[block_start:];
`dual` keeps every position and forwards only the block, writing its K/V in place.

Deviations, all from the harness conventions (§0.3) or its contract:
- ties break by (confidence, then position) instead of `torch.topk`'s unspecified order;
- **[quirk, kept]** with a cache, the reference always makes at least one cached forward per
  block, so when the block-start forward already completes the block (typical for EOS-padding
  blocks at tau = 0.9) it spends one more forward that commits nothing, and counts it. So do we,
  by default (an entry 0 in committed_per_step): NFE is what the method spends. `skip_idle_forward=True`
  (ours) leaves that forward out: the same tokens, NFE the reference's minus one per such block.
  With no threshold and steps = number of blocks the reference fails on that forward (its quota
  has no second entry); we make it and count it;
- [MASK] is never proposed (`_parts.propose`): the same tokens for a trained model, and loops
  that cannot spin forever on a random one that ranks [MASK] first;
- `refresh_every` is ours: a full refresh forward every N forwards within a block (1 = every
  forward, which reduces `dual` and `prefix` exactly to `none`).
The reference builds a canvas of batch 1; here prompts are batched, each row advancing on its
own and leaving the forward once done, so every row gets its batch-1 tokens and NFE
(`_blocks.block_loop`).

**Dream models** (`model.logit_shift`): Fast-dLLM's `dream/` folder decodes differently, and we
follow it (NVlabs/Fast-dLLM `dream/model/generation_utils_block.py` and `generation_utils.py`,
`alg="confidence_threshold"`, @24cc59e):
- with a cache, the block-start full forward commits exactly one token, the block's first
  position (its argmax, unconditionally), and only the cached forwards apply the threshold rule;
- without a cache there are no blocks: `dream/eval_gsm8k.sh` runs `generation_utils.py` with
  diffusion_steps = gen_length / block_length, so each full-canvas forward may commit up to
  gen_length / steps (= block_length) of the most confident masked positions of the whole
  canvas, the top-1 always and the others at conf >= tau; the shortfall carries over to the next
  forward, and past the last step the loop goes on one forward at a time until no mask is left.
  (Only with `threshold` set; with `threshold=None` the LLaDA blocks and quota are used.)
- confidences are taken in the logits' dtype, as that code (the LLaDA path uses float64), and
  at T = 0 the token is the first maximum of those probabilities, not of the logits (in bf16 the
  softmax ties tokens whose logits differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from dleval.decoders import _blocks, _parts, _picks
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = True
DREAM_PAPER_MODEL = "Dream-org/Dream-v0-Base-7B"  # Fast-dLLM's Dream tables (dream/eval_gsm8k.sh @24cc59e)


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # llada/eval_gsm8k.sh: length=256
    block_length: int = 32  # eval_gsm8k.sh: block_length=32; paper §4.1 default cache block size 32
    threshold: float | None = 0.9  # eval_gsm8k.sh threshold=0.9; paper §4.1; None = LLaDA's fixed quota
    steps: int | None = None  # used only when threshold is None; None = gen_length (one token per forward)
    cache: Literal["none", "prefix", "dual"] = "prefix"  # paper §4.1 default PrefixCache (decoders.md §2.5)
    refresh_every: int | None = None  # ours: extra full forward every N forwards in a block; None = block start only
    skip_idle_forward: bool = False  # ours: skip the reference's idle cached forward (see block_loop): same tokens, fewer NFE
    temperature: float = 0.0  # eval_llada.py passes temperature=0
    remasking: str = "low_confidence"  # generate.py: "low_confidence" | "random"

    def __post_init__(self) -> None:
        blocks = _parts.check_blocks(self.gen_length, self.block_length)
        if self.threshold is None and (self.total_steps <= 0 or self.total_steps % blocks):
            raise ValueError(f"steps ({self.total_steps}) must be a positive multiple of the number of blocks ({blocks})")
        _parts.check_cache(self.cache, self.refresh_every)
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking must be 'low_confidence' or 'random', not {self.remasking!r}")
        if self.threshold is not None:
            _parts.check_number("threshold", self.threshold, 0.0, 1.0, why="a confidence: a probability, None for the fixed quota")
        _parts.check_number("temperature", self.temperature, why="Gumbel noise scale; 0 = greedy")

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    # Noise only where it is drawn (a per-decode cost); with seeds always (it checks their count)
    noise = (
        _parts.Noise(seeds, len(prompts), model.device) if cfg.temperature > 0 or cfg.remasking == "random" or seeds is not None else None
    )
    per_block = cfg.total_steps // (cfg.gen_length // cfg.block_length)
    k = _parts.quota_list(cfg.block_length, per_block)  # blocks start fully masked: the same quota for each

    dream = bool(getattr(model, "logit_shift", False)) and cfg.threshold is not None
    if dream and cfg.cache == "none":
        return [_dream_no_cache(model, prompt, cfg, on_step, noise, row) for row, prompt in enumerate(prompts)]

    mask_id = model.mask_id

    def select(logits: torch.Tensor, index: list[int], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if dream:  # Fast-dLLM's Dream `sample_tokens` (see _dream_propose, _dream_confidence)
            x0 = _dream_propose(logits, cfg, mask_id, noise, rows)
            return x0, _dream_confidence(logits, x0) if cfg.remasking == "low_confidence" else noise.uniform(x0.shape[1:], rows)
        if cfg.remasking == "low_confidence":  # the softmax first: the argmax then writes the logits
            p = torch.softmax(logits, dim=-1, dtype=torch.float64)
            x0 = _parts.propose_(logits, cfg.temperature, mask_id, noise, rows)  # (R, C)
            return x0, p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        x0 = _parts.propose_(logits, cfg.temperature, mask_id, noise, rows)
        return x0, noise.uniform(x0.shape[1:], rows)

    def rule(conf: list[float], cands: list[int], index: int, dtype: torch.dtype) -> list[int]:
        if cfg.threshold is None:  # LLaDA's quota
            return _picks.pick_top_k(conf, cands, k[index])
        if dream and index == 0:  # Fast-dLLM dream/: a block-start forward commits the block's first position only
            return [0] if cands[0] == 0 else []
        return _picks.pick_threshold(conf, cands, _picks.as_dtype(cfg.threshold, dtype))

    # noise, Dream's block start: full blocks
    return _blocks.blocks(
        model, prompts, cfg, select, rule, on_step, compact=cfg.temperature == 0 and cfg.remasking == "low_confidence" and not dream
    )


def _dream_propose(logits: torch.Tensor, cfg: Config, mask_id: int, noise: _parts.Noise | None, rows: Sequence[int]) -> torch.Tensor:
    """x0 as Fast-dLLM's Dream `sample_tokens` takes it at T = 0: the first maximum of softmax(logits)
    in the logits' dtype, which in bf16 ties tokens whose logits differ (the logits' argmax would
    not); [MASK] skipped as in `_parts.propose`. At T > 0, the harness's Gumbel draw."""
    if cfg.temperature > 0:
        return _parts.propose(logits, cfg.temperature, mask_id, noise, rows)
    p = torch.softmax(logits, dim=-1)
    p[..., mask_id] = -1.0
    return p.argmax(dim=-1)


def _dream_confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[tokens] in the logits' dtype, as Fast-dLLM's Dream `sample_tokens` (the
    LLaDA loops take it in float64): masked positions of a Dream canvas can differ in confidence
    by less than float32 resolves, and the ranking must be the reference's."""
    return torch.gather(torch.softmax(logits, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def _dream_no_cache(
    model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None, noise: _parts.Noise | None, row: int
) -> Generation:
    """Fast-dLLM's Dream loop without a cache (`generation_utils.py`, alg confidence_threshold)."""
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, P+L)
    steps = cfg.gen_length // cfg.block_length  # dream/eval_gsm8k.sh: diffusion_steps = length / block_length
    per_step = cfg.gen_length // steps
    carried = 0
    commits: list[int] = []
    i = 0
    while i < steps:
        masked = x == model.mask_id
        logits = _parts.forward(model, x, [row]).logits  # (1, T, V)
        x0 = _dream_propose(logits, cfg, model.mask_id, noise, [row])
        conf = _dream_confidence(logits, x0)
        conf = torch.where(masked, conf, torch.full_like(conf, _parts.NEG_INF))
        want = per_step + carried
        carried = 0
        order = _parts.rank(conf)[0, :want]  # the `want` most confident masked positions, ties by position
        accept = conf[0, order] >= cfg.threshold
        accept[0] = True  # the top-1 always
        carried = int((~accept).sum())
        if carried and i == steps - 1:  # past the last step: one more forward, no new quota
            per_step = 0
            steps += 1
        chosen = torch.zeros_like(masked)
        chosen[0, order[accept]] = True
        x = torch.where(chosen, x0, x)
        commits.append(int(chosen.sum()))
        _parts.report_step(on_step, len(commits), x, chosen)
        i += 1
    return _parts.generations(x, P, [commits])[0]
