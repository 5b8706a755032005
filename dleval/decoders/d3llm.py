"""d3LLM: entropy-threshold multi-block decoding with EOS early stop and an optional delayed KV cache.

Source: Hao AI Lab, "d3LLM" (arXiv 2601.07568, ICML 2026); hao-ai-lab/d3LLM
`d3llm/d3llm_LLaDA/d3llm_llada_generate_util.py` @e5bfcac: `generate_multi_block` (cache="none")
and `generate_multi_block_kv_cache` (cache="delayed"); spec decoders.md §4.1-4.3.

Blocks of `block_length` open one at a time in a pipeline (the D2F scheduler, §7.1): the next
block is appended when the last one is `block_add_threshold` decoded (or complete), and a block is
"fully activated" once its predecessor is `decoded_token_threshold` decoded ("semi-activated"
before). Every forward covers the whole canvas; the candidates are the masked positions of every
open block; the lowest-entropy candidate is always committed, and every other one with
H <= `threshold`. Progress guarantee: when the first fully-activated block with masks got nothing,
its lowest-entropy mask is committed with the plain argmax. With `early_stop`, once an EOS is
committed every position after the first EOS becomes EOS and no further block opens
(finish="eos").

cache="delayed": the cache holds a prefix of finished blocks (the prompt counts as one). A block
enters it only after it has been finished for `cache_delay_iter` iterations, appended from the
K/V of a forward that runs x[cache_end:] against the cache; while a finished block waits
("stabilizing"), forwards are full and the cache is rebuilt from them; otherwise forwards run
x[cache_end:] against the cache. A forward whose index is a multiple of `refresh_interval` is full
and rebuilds the cache, unless a block is due to be appended then: the append wins and that
refresh is skipped. That is the code; the paper speaks of a refresh every R steps. So even
refresh_interval=1 is not cache="none": the append forwards use the cache rebuilt one forward
earlier.

Where this differs from the reference, and why:
- NFE is the Counted wrapper's call count. The reference increments its counter before its EOS
  check, so a run that ends there reports one forward that never ran (decoders.md §0.4); that is
  not copied. The EOS fill is applied right after the forward whose commit produced the EOS (the
  reference does it at the top of the next iteration, on the same canvas), so the filled
  positions count as that forward's commits. As in the reference, there is no fill when that
  forward left no mask: tokens it committed after the EOS stay.
- The reference takes its candidate mask at the top of an iteration, before that iteration's EOS
  fill, so in the forward after an EOS appears every position the fill just turned into EOS (up
  to the end of the canvas: the blocks after the EOS are all marked active) is still a candidate:
  each of them with H <= tau is committed, as is the forced lowest-entropy one, and its argmax
  overwrites the EOS, not just one position. The next iteration's fill restores them, but when
  that forward left no mask the loop ends before any fill, so the reference's output keeps
  non-EOS tokens after its first EOS. Here the mask is taken after the fill, so every forward
  commits at least one real mask and everything after the first EOS is EOS. Hence tokens up to
  and including the first EOS match the reference while later ones can differ, and NFE can too
  (the reference can spend a forward on filled positions alone).
- Ties break by (entropy, position) instead of `torch.topk`'s unspecified order (§0.3), and the
  argmax skips [MASK] (`_parts.propose`: a trained model never ranks it first; a random one
  could, and the until-no-mask loop would never end).

**Dream models** (`model.logit_shift`): d3LLM decodes them with its own util, and we follow it
(`d3llm/d3llm_DREAM/d3llm_dream_generate_util.py` @e5bfcac, `_sample_multi_block` and
`_sample_multi_block_kv_cache`, as `utils/utils_Dream/eval_instruct/lm_eval/models/diffllm.py`
binds them). Its loop is the same pipeline with four differences, all taken over:
- it commits every candidate with H < tau (strict) and, when the first fully-activated block
  with masks got nothing, that block's lowest-entropy mask; there is no global lowest-entropy
  commit, so a forward can commit nothing in the semi-activated blocks;
- a cached forward's logits are unshifted within the span (`cat([logits[:, :1], logits[:, :-1]])`
  on the span alone), so the span's first position gets the network output at that position,
  not the one before it (the span starts at a block boundary and that position may still be a
  mask): here its logits are the next position's row;
- its candidate mask is taken before its EOS fill, as the reference's LLaDA path does (second
  bullet above) but here followed: the positions the last fill closed stay candidates in the next
  forward, one with H < tau is overwritten by its argmax (and the progress guarantee is spent on
  it), and the next fill restores the EOS; such a forward commits no mask. Hence tokens and NFE
  equal the reference's, tokens after the first EOS included;
- its cache bookkeeping does not stop at a stabilizing block, and an EOS fill also marks the
  opened blocks after the EOS as cached (they never enter the cache and never stabilize). Two
  blocks finished by the same forward then stabilize together, and the reference truncates its
  rebuilt cache to the newer one's start, past its cache length, so its next append holds the
  older block's keys twice; that is not reproduced (the cache is kept to its length), and it
  did not occur in the parity runs.
At T > 0 the forced token is the draw (the LLaDA loop re-takes the argmax there); the
reference's draw is a multinomial, here the harness's Gumbel noise (same distribution, other
random stream). Parity measured on a random Dream model (fp32): tokens and
forwards identical on 20 prompts x 12 settings (no cache and delayed cache, tau 0.5 and 2.0,
early stop on and off); the reference's NFE counter is one higher when it ends at its fill (§0.4).

One prompt at a time (BATCHED = False), as the reference: the pipeline state is per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _parts
from dleval.models.base import KVCache, Model
from dleval.types import Generation, OnStep

BATCHED = False
PAPER_MODEL = "d3LLM/d3LLM_LLaDA"
DREAM_PAPER_MODEL = "d3LLM/d3LLM_Dream"  # d3LLM's Dream student (hao-ai-lab/d3LLM README)
CPU_MODEL = "tiny-d3llm"  # the bundled student of `dleval train distill --method d3llm`
CACHES = ("none", "delayed")


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # eval_scripts/llada_*.sh: gen_length=256
    block_length: int = 32  # same scripts: block_length=32
    threshold: float = 0.5  # entropy tau_H: llada_gsm8k_cot.sh threshold=0.5 (0.4 for MBPP and long GSM8K)
    block_add_threshold: float = 0.1  # utils_LLaDA/eval_llada.py default, used by every multi-block script
    decoded_token_threshold: float = 0.95  # same file's default
    early_stop: bool = True  # llada_gsm8k_cot.sh early_stop=True
    cache: str = "none"  # "none": generate_multi_block; "delayed": generate_multi_block_kv_cache
    cache_delay_iter: int = 2  # llada_gsm8k_cot.sh and chat/chat_d3llm_llada.py: cache_delay_iter=2
    refresh_interval: int = 3  # llada_gsm8k_cot.sh refresh_interval=3 (10000 in the MATH script: never)
    temperature: float = 0.0  # every eval script runs T = 0

    def __post_init__(self) -> None:
        _parts.check_blocks(self.gen_length, self.block_length)
        for name in ("block_add_threshold", "decoded_token_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (a fraction of a block decoded)")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}, not {self.cache!r}")
        if self.cache_delay_iter < 0 or self.refresh_interval < 1:
            raise ValueError("cache_delay_iter must be >= 0 and refresh_interval >= 1")
        _parts.check_number("threshold", self.threshold, why="an entropy bound tau_H in nats")
        _parts.check_number("temperature", self.temperature, why="Gumbel noise scale; 0 = greedy")


@dataclass
class _Block:
    """One block's pipeline state (the reference's `block_states` entry)."""

    start: int
    end: int
    masks: int
    full: bool  # fully activated (the reference calls it `is_complete`)
    done_at: int | None = None  # forward index at which the cache bookkeeping first saw it finished
    cached: bool = False

    @property
    def progress(self) -> float:
        total = self.end - self.start
        return 1.0 - self.masks / total if total else 1.0


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    noise = _parts.Noise(seeds, len(prompts), model.device)
    return [_decode_one(model, prompt, cfg, on_step, noise, row) for row, prompt in enumerate(prompts)]


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None, noise: _parts.Noise, row: int) -> Generation:
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, P+L); one row, no padding
    B, mask_id = cfg.block_length, model.mask_id
    dream = bool(getattr(model, "logit_shift", False))  # d3LLM's Dream util (module docstring)
    n_blocks = cfg.gen_length // B
    blocks = [_Block(0, P, 0, True, done_at=0), _Block(P, P + B, B, full=1.0 >= cfg.decoded_token_threshold)]
    cache: KVCache | None = None
    cache_len = 0
    eos_at: int | None = None
    filled = torch.zeros_like(x, dtype=torch.bool)  # (1, T) the masks the last EOS fill turned into EOS
    commits: list[int] = []
    nfe = 0
    while any(b.masks for b in blocks[1:]) or len(blocks) - 1 < n_blocks:  # unopened blocks are all masks
        nfe += 1  # index of this forward, from 1
        for prev, blk in zip(blocks, blocks[1:]):
            if not blk.full and prev.progress >= cfg.decoded_token_threshold:
                blk.full = True
        last = blocks[-1]
        if eos_at is None and len(blocks) - 1 < n_blocks and (last.progress >= cfg.block_add_threshold or last.masks == 0):
            s = last.end
            blocks.append(_Block(s, s + B, int((x[0, s : s + B] == mask_id).sum()), full=last.progress >= cfg.decoded_token_threshold))
        active_end = max(b.end for b in blocks if b.full or b.masks)

        if cfg.cache == "delayed":
            logits, lo, cache, cache_len = _cached_forward(model, x, blocks, cache, cache_len, nfe, cfg, row)
            if dream and lo > 0 and logits.shape[1] > 1:  # the Dream util's span-local shift: its first position reads its own output
                logits = torch.cat([logits[:, 1:2], logits[:, 1:]], dim=1)
        else:
            logits, lo = _parts.forward(model, x, [row]).logits, 0  # (1, P+L, V)

        s0 = max(lo, P)  # every mask lies at or after the cache end
        lg = logits[:, s0 - lo : active_end - lo]  # (1, n, V) over [s0, active_end)
        x0 = _parts.propose(lg, cfg.temperature, mask_id, noise, [row])  # (1, n)
        h = _parts.entropy(lg)  # (1, n) float64
        real = x[:, s0:active_end] == mask_id
        masked = real | filled[:, s0:active_end] if dream else real  # the Dream util's candidates: the masks before its EOS fill
        if dream:  # the Dream util: H < tau only, no global lowest-entropy commit
            chosen = masked & (h < cfg.threshold)
        else:
            chosen = _parts.threshold_mask(-h, masked, h <= cfg.threshold)  # global lowest H, plus H <= tau
        first = next((b for b in blocks[1:] if b.full and b.masks), None)
        if first is not None and not bool(chosen[0, first.start - s0 : first.end - s0].any()):
            a, z = first.start - s0, first.end - s0
            j = a + int(h[0, a:z].masked_fill(~masked[0, a:z], torch.inf).argmin())  # first of equal minima
            chosen[0, j] = True
            if not dream:  # the LLaDA reference re-takes the plain argmax here, even at T > 0 (the Dream util keeps its draw)
                x0[0, j] = _parts.propose(lg[0, j], 0.0, mask_id)
        x[:, s0:active_end] = torch.where(chosen, x0, x[:, s0:active_end])
        committed = torch.zeros_like(x, dtype=torch.bool)
        committed[:, s0:active_end] = chosen & real
        _recount(blocks, x, mask_id)

        filled = torch.zeros_like(x, dtype=torch.bool)
        more = any(b.masks for b in blocks[1:]) or len(blocks) - 1 < n_blocks  # else the reference's loop ends before its fill
        if cfg.early_stop and more and (e := _parts.first_token(x, model.eos_id, P)) is not None:
            filled = _parts.fill_after(x, e, model.eos_id, mask_id)
            committed |= filled
            for blk in blocks[1:]:
                if blk.start > e and blk.masks:
                    blk.full = True
                if dream and blk.start > e:  # the Dream util also retires opened blocks after the EOS from the cache
                    blk.cached = True
            while len(blocks) - 1 < n_blocks:  # the rest of the canvas, closed: finished and never cached
                s = blocks[-1].end
                blocks.append(_Block(s, s + B, 0, True, done_at=nfe + 1, cached=True))
            eos_at = e
            _recount(blocks, x, mask_id)
        commits.append(int(committed.sum()))
        _parts.report_step(on_step, nfe, x, committed)
    return _parts.generations(x, P, [commits], "eos" if eos_at is not None else "length")[0]


def _recount(blocks: list[_Block], x: torch.Tensor, mask_id: int) -> None:
    """Every open block's mask count, in one host sync (open blocks are contiguous, of equal length)."""
    lo, hi, n = blocks[1].start, blocks[-1].end, len(blocks) - 1
    for blk, m in zip(blocks[1:], (x[0, lo:hi] == mask_id).view(n, -1).sum(dim=1).tolist()):
        blk.masks = m


def _cached_forward(
    model: Model, x: torch.Tensor, blocks: list[_Block], cache: KVCache | None, cache_len: int, nfe: int, cfg: Config, row: int
) -> tuple[torch.Tensor, int, KVCache | None, int]:
    """One forward under the delayed cache. Returns (logits of positions [lo, T), lo, cache, cache_len)."""
    dream = bool(getattr(model, "logit_shift", False))
    due: list[_Block] = []
    for blk in blocks:
        if blk.end <= cache_len:
            continue
        if blk.masks:
            break
        if blk.done_at is None:
            blk.done_at = nfe
        delay = nfe - blk.done_at
        if delay >= cfg.cache_delay_iter and not blk.cached:
            blk.cached = True
            due.append(blk)
        elif delay < cfg.cache_delay_iter and not dream:  # the Dream util reads on past a stabilizing block
            break
    update = due[-1].end - cache_len if due else 0
    # At most one block stabilizes at a time and it starts at cache_len, so the reference's
    # "truncate the rebuilt cache to the newest stabilizing block" is a truncation to cache_len.
    stabilizing = any(b.masks == 0 and b.done_at is not None and not b.cached for b in blocks)
    if update:  # append, even when a periodic refresh is due (the reference's order)
        if cache is None:
            out = _parts.forward(model, x, [row])
            return out.logits, 0, out.kv.keep(update), update
        out = _parts.forward(model, x[:, cache_len:], [row], start=cache_len, cache=cache)
        return out.logits, cache_len, cache.append(out.kv, update), cache_len + update
    if cache is not None and (stabilizing or nfe % cfg.refresh_interval == 0):
        out = _parts.forward(model, x, [row])
        return out.logits, 0, out.kv.keep(cache_len), cache_len
    if cache is not None:
        return _parts.forward(model, x[:, cache_len:], [row], start=cache_len, cache=cache).logits, cache_len, cache, cache_len
    return _parts.forward(model, x, [row]).logits, 0, None, 0
