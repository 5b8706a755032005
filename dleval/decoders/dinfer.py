"""dInfer's parallel decoders: confidence threshold, credit-fused threshold, or hierarchy (threshold + low_threshold).

Source: Ma et al., "dInfer: An Efficient Inference Framework for Diffusion Language Models"
(arXiv 2510.08666); inclusionAI/dInfer @fce4e32: `python/dinfer/decoding/parallel_strategy.py`
(`ThresholdParallelDecoder`, `CreditThresholdParallelDecoder`, `HierarchyDecoder`) driven by
`generate_uniform.py` (`BlockWiseDiffusionLLM`, `BlockRunner`, `BaseDiffusionIteration`) with
`BlockIteratorFactory(start_block_align=True)` and `early_stop=True`, as `benchmarks/benchmark.py`
builds them; spec decoders.md §7.6. `strategy` picks the decoder:
- "threshold": per forward, commit every mask of the block with p(x0) >= min(threshold,
  max p - 1e-5), so at least the most confident one;
- "credit": the same rule on fused logits z + alpha * log(1 + C), where C (block, V) is an EMA
  "credit" matrix, per block: C <- beta * C (from the block's second forward on), then
  C[i, argmax_i] += p_max,i ** gamma at each masked position i;
- "hierarchy": split the block's masks into runs of adjacent masks; commit each run's most
  confident mask if its p > low_threshold, every mask with p > threshold, and always the block's
  most confident mask ("forcing LLMs to decode tokens separately").

The loop is dInfer's, not Fast-dLLM's: blocks are aligned to absolute multiples of
block_length, so the first block overlaps the prompt's tail and a last, partial block ends at
the canvas end; every forward is over the whole canvas; and a block is checked for masks only
every `unroll` forwards, unroll = max(min(masks // expected_tpf, maximum_unroll), 1). The
forwards after a block completes inside such a group commit nothing but are real NFE (the
reference counts them); `maximum_unroll = 1` removes them, an option the reference has too.
After a block, if it holds an EOS, every position after the block becomes EOS (committed by the
block's last forward) and decoding stops (finish="eos").

Where this differs from the reference, and why:
- Scores follow the reference's dtypes: float32 softmax for threshold/credit (use_float64=False),
  log_softmax in the logits' dtype for hierarchy. Ties break by position (decoders.md §0.3),
  which for hierarchy's `==` to the run maximum means every tied mask of a run is committed, as
  in the reference.
- The argmax skips [MASK] (`_parts.propose`); the reference's `rm_mask` drops such proposals from
  the candidates instead, which on a model that ranks [MASK] first never ends.
- Not implemented: dInfer's KV caches (prefix/dual with `KVCacheFactory`), the vicinity refresh
  (`prefix_look`/`after_look`/`warmup_times`), iteration smoothing (`cont_weight`) and the
  hierarchy-remask variant; the defaults of `benchmarks/benchmark.py` use none of them.
One prompt at a time (BATCHED = False): `HierarchyDecoder` asserts batch size 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False
IDLE_FORWARDS = True  # forwards after a block completes inside an unroll group commit nothing (see above)
STRATEGIES = ("threshold", "credit", "hierarchy")
THRESHOLD_MARGIN = 1e-5  # get_transfer_index_threshold: max confidence - 1e-5


@dataclass(frozen=True)
class Config:
    strategy: Literal["threshold", "credit", "hierarchy"] = "threshold"  # benchmark.py --parallel_decoding threshold
    gen_length: int = 256  # ours: the common LLaDA baseline (decoders.md §9.1); benchmark.py uses 1024
    block_length: int = 32  # README example 3 (LLaDA-8B-Instruct): --block_length 32
    threshold: float = 0.9  # README example 3 / benchmark.py --threshold 0.9
    low_threshold: float = 0.3  # benchmark.py --low_threshold 0.3 (hierarchy only; the class default is 0.4)
    credit_alpha: float = 0.7  # CreditThresholdParallelDecoder default
    boost_gamma: float = 0.2  # CreditThresholdParallelDecoder default
    decay_beta: float = 0.8  # CreditThresholdParallelDecoder default
    maximum_unroll: int = 4  # BlockWiseDiffusionLLM default
    expected_tpf: int = 8  # BlockWiseDiffusionLLM default
    temperature: float = 0.0  # benchmark.py builds every decoder with temperature=0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.gen_length <= 0 or self.block_length <= 0:
            raise ValueError("gen_length and block_length must be positive")
        for name in ("threshold", "low_threshold", "boost_gamma", "decay_beta"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise ValueError(f"{name} must be in [0, 1], not {value}")
        if not self.credit_alpha >= 0:
            raise ValueError(f"credit_alpha must be >= 0, not {self.credit_alpha}")
        if self.maximum_unroll < 1 or self.expected_tpf < 1:
            raise ValueError("maximum_unroll and expected_tpf must be >= 1")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    out = []
    for i, prompt in enumerate(prompts):
        if seeds is not None:
            torch.manual_seed(int(seeds[i]))  # the Gumbel noise draws from the global RNG
        out.append(_decode_one(model, prompt, cfg, on_step))
    return out


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None) -> Generation:
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, N)
    N = x.shape[1]
    commits: list[int] = []
    finish = "length"
    for s in range((P // cfg.block_length) * cfg.block_length, N, cfg.block_length):  # start_block_align=True
        e = min(s + cfg.block_length, N)
        credit: torch.Tensor | None = None  # (1, e-s, V), this block's EMA credit matrix
        while (left := int((x[:, s:e] == model.mask_id).sum())) > 0:
            for _ in range(max(min(left // cfg.expected_tpf, cfg.maximum_unroll), 1)):
                logits = model.forward(x).logits[:, s:e]  # (1, b, V)
                masked = x[:, s:e] == model.mask_id
                if cfg.strategy == "credit":
                    credit = _credit(logits, masked, credit, cfg)
                    logits = logits + cfg.credit_alpha * torch.log(credit + 1)
                x0, chosen = _select(logits, masked, cfg, model.mask_id)
                chosen &= masked
                x[:, s:e] = torch.where(chosen, x0, x[:, s:e])
                commits.append(int(chosen.sum()))
                if on_step is not None:
                    full = torch.zeros_like(x, dtype=torch.bool)
                    full[:, s:e] = chosen
                    _parts.report_step(on_step, len(commits), x, full)
        if bool((x[:, s:e] == model.eos_id).any()):  # BlockRunner early_stop, then generate()'s break
            filled = int((x[:, e:] == model.mask_id).sum())
            x[:, e:] = model.eos_id
            commits[-1] += filled
            finish = "eos"
            break
    return _parts.generations(x, P, [commits], finish)[0]


def _credit(logits: torch.Tensor, masked: torch.Tensor, credit: torch.Tensor | None, cfg: Config) -> torch.Tensor:
    """CreditThresholdParallelDecoder._apply_credit_fusion's matrix update, float32. logits (1, b, V)."""
    if credit is None:
        credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    else:
        credit = credit * cfg.decay_beta
    top1, idx = torch.softmax(logits.to(torch.float32), dim=-1).max(dim=-1)  # (1, b)
    boost = top1.pow(cfg.boost_gamma) * masked.to(torch.float32)
    return credit.scatter_add(2, idx.unsqueeze(-1), boost.unsqueeze(-1))


def _select(logits: torch.Tensor, masked: torch.Tensor, cfg: Config, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, chosen), both (1, b), for one forward's block logits (1, b, V)."""
    x0 = _parts.propose(logits, cfg.temperature, mask_id)
    if cfg.strategy == "hierarchy":
        p = F.log_softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()  # logits' dtype
        floor = torch.finfo(p.dtype).min
        conf = torch.where(masked, p, torch.full_like(p, floor))
        starts = masked & ~torch.cat([torch.zeros_like(masked[:, :1]), masked[:, :-1]], dim=1)
        run = torch.where(masked, torch.cumsum(starts.long(), dim=1) - 1, torch.zeros_like(x0))  # run id per mask
        run_max = torch.full_like(conf, floor).scatter_reduce(1, run, conf, reduce="amax", include_self=True)
        chosen = (conf == run_max.gather(1, run)) & (conf > cfg.low_threshold)
        chosen |= conf > cfg.threshold
        chosen |= _parts.top_k_mask(conf, [1])
        return x0, chosen & masked
    p = torch.softmax(logits.to(torch.float32), dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # use_float64=False
    conf = torch.where(masked, p, torch.full_like(p, _parts.NEG_INF))
    bar = (conf.max(dim=1, keepdim=True).values - THRESHOLD_MARGIN).clamp(-1000, cfg.threshold)
    return x0, conf >= bar
