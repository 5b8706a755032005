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

Batches (issue 14; the reference decodes one prompt at a time): prompts are left-padded (see
`_parts.make_canvas`) and every row keeps its own pipeline (blocks, forward index, EOS, delayed
cache), so it sees exactly the forwards it would see alone and its NFE (counted per row by
`Counted`) is its batch-1 NFE; a finished row leaves the forward. Rows share a model call only
when their forwards have the same shape: each step the active rows are grouped by the forward
they need, one model call per group. With cache="none" every forward is over the whole canvas,
so all active rows form one group. With cache="delayed" a full forward (no cache yet, a refresh,
a stabilizing block) is one group, and a cached forward x[cache_end:] one group per cache end
(left padding puts every row's blocks at the same offsets, so rows whose caches end at the same
block share one; the others run in their own calls). Each row's cache is the K/V of its own row of the group's output; a group whose rows'
caches are the rows of one batched cache, in order, reuses it without a copy. The scores are
taken per row over the union of the group's candidate spans, positions outside a row's own span
are not candidates, so every row chooses as alone (fp32 CPU: identical tokens, commits and
per-row NFE, tests/test_batched.py). At T > 0 each row's Gumbel noise is drawn over its own span
from its own generator (`_parts.Noise`), so it does not depend on the batch either.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dleval.decoders import _parts, _picks
from dleval.models.base import KVCache, Model
from dleval.types import Generation, OnStep

BATCHED = True
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


@dataclass
class _Row:
    """One prompt's decoding state: its pipeline, forward index, EOS and delayed cache."""

    blocks: list[_Block]
    nfe: int = 0  # forwards so far; during a step, the index of this step's forward (from 1)
    cache: KVCache | None = None  # a (possibly batched) cache whose row `slot` is this prompt's K/V of [0, cache_len)
    slot: int = 0
    cache_len: int = 0
    eos_at: int | None = None
    commits: list[int] = field(default_factory=list)
    gen: list[int] = field(default_factory=list)  # LLaDA models: x[r, P:] on the host, kept by `_commit_thin` (unused by the Dream path)

    def active(self, n_blocks: int) -> bool:
        """The reference's loop condition (unopened blocks are all masks)."""
        return any(b.masks for b in self.blocks[1:]) or len(self.blocks) - 1 < n_blocks


@dataclass(frozen=True)
class _Plan:
    """The forward a row needs this step (its shape is the group key `(cached, lo)`)."""

    cached: bool  # False: full forward over the canvas; True: x[lo:] against the row's cache
    lo: int  # first forwarded position: 0, or the cache length
    keep: int | None = None  # full forward: the new cache is its K/V of [0, keep) (None: the cache stays as it is)
    append: int = 0  # cached forward: the cache grows by its first `append` new positions


_FULL = _Plan(False, 0)  # a full forward that keeps no cache (every forward with cache="none")


@dataclass(frozen=True)
class _Decode:
    """What stays fixed for a whole decode, passed to each group's commit as one value."""

    model: Model
    x: torch.Tensor  # (N, P+L) the canvas, left-padded, written in place
    P: int  # prompt width
    cfg: Config
    noise: _parts.Noise | None  # None at T = 0 without seeds
    rows: list[_Row]
    mask_id: int  # the model's, read once (through `Counted` each read is a __getattr__)
    eos: int


@torch.inference_mode()
def decode(
    model: Model,
    prompts: Sequence[Sequence[int]],
    cfg: Config = Config(),
    *,
    on_step: OnStep | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Generation]:
    x, attention, P = _parts.make_canvas(model, prompts, cfg.gen_length)  # (N, P+L), left-padded
    N, B = x.shape[0], cfg.block_length
    noise = _parts.Noise(seeds, N, x.device) if seeds is not None or cfg.temperature > 0 else None  # T = 0 draws nothing
    n_blocks = cfg.gen_length // B
    padded = [len(p) < P for p in prompts]  # rows that need the key padding mask
    dream = bool(getattr(model, "logit_shift", False))  # d3LLM's Dream util (module docstring)
    filled = torch.zeros_like(x, dtype=torch.bool) if dream else None  # (N, P+L) the masks each row's last EOS fill turned into EOS
    mask_id = model.mask_id
    rows = [
        _Row(
            [_Block(0, P, 0, True, done_at=0), _Block(P, P + B, B, full=1.0 >= cfg.decoded_token_threshold)], gen=[mask_id] * cfg.gen_length
        )
        for _ in range(N)
    ]  # make_canvas appends gen_length masks
    d = _Decode(model, x, P, cfg, noise, rows, mask_id, model.eos_id)
    calls = 0
    while True:
        active = [r for r in range(N) if rows[r].active(n_blocks)]
        if not active:
            break
        groups: dict[tuple[bool, int], list[int]] = {}
        plans: dict[int, _Plan] = {}
        for r in active:
            row = rows[r]
            row.nfe += 1
            _open_blocks(row, cfg, n_blocks)
            plans[r] = _plan(row, cfg, dream)
            groups.setdefault((plans[r].cached, plans[r].lo), []).append(r)
        for (cached, lo), group in groups.items():  # on_step sees every model call (one per group)
            sel = None if len(group) == N else torch.tensor(group, device=x.device)
            mask = None
            if attention is not None and any(padded[r] for r in group):
                mask = attention if sel is None else attention.index_select(0, sel)
            logits = _forward(model, x if sel is None else x.index_select(0, sel), mask, group, rows, plans, cached, lo)
            if dream and cached and logits.shape[1] > 1:  # the Dream util's span-local shift: its first position reads its own output
                logits = torch.cat([logits[:, 1:2], logits[:, 1:]], dim=1)
            step = torch.zeros_like(x, dtype=torch.bool) if on_step is not None else None
            if filled is None:  # LLaDA models: the thin step (issue 14)
                _commit_thin(d, group, sel, logits, lo, step)
            else:
                _commit_dream(d, group, sel, logits, lo, step, filled)
            calls += 1
            _parts.report_step(on_step, calls, x, step)
    finishes = ["eos" if row.eos_at is not None else "length" for row in rows]
    if not dream:  # the host copies: `_commit_thin` skips writing a finished row back
        return [Generation(tuple(row.gen), tuple(row.commits), f) for row, f in zip(rows, finishes)]
    return _parts.generations(x, P, [row.commits for row in rows], finishes)


def _open_blocks(row: _Row, cfg: Config, n_blocks: int) -> None:
    """The D2F scheduler at the top of an iteration: activate blocks, append the next one."""
    blocks = row.blocks
    for prev, blk in zip(blocks, blocks[1:]):
        if not blk.full and prev.progress >= cfg.decoded_token_threshold:
            blk.full = True
    last = blocks[-1]
    if row.eos_at is None and len(blocks) - 1 < n_blocks and (last.progress >= cfg.block_add_threshold or last.masks == 0):
        s = last.end
        # an unopened block is all masks: nothing commits outside open blocks, and the EOS fill closes the canvas
        blocks.append(_Block(s, s + cfg.block_length, cfg.block_length, full=last.progress >= cfg.decoded_token_threshold))


def _plan(row: _Row, cfg: Config, dream: bool) -> _Plan:
    """Which forward the row needs under its cache setting; updates the blocks' cache bookkeeping."""
    if cfg.cache == "none":
        return _FULL
    due: list[_Block] = []
    for blk in row.blocks:
        if blk.end <= row.cache_len:
            continue
        if blk.masks:
            break
        if blk.done_at is None:
            blk.done_at = row.nfe
        delay = row.nfe - blk.done_at
        if delay >= cfg.cache_delay_iter and not blk.cached:
            blk.cached = True
            due.append(blk)
        elif delay < cfg.cache_delay_iter and not dream:  # the Dream util reads on past a stabilizing block
            break
    update = due[-1].end - row.cache_len if due else 0
    # At most one block stabilizes at a time and it starts at cache_len, so the reference's
    # "truncate the rebuilt cache to the newest stabilizing block" is a truncation to cache_len.
    stabilizing = any(b.masks == 0 and b.done_at is not None and not b.cached for b in row.blocks)
    if update:  # append, even when a periodic refresh is due (the reference's order)
        return _Plan(False, 0, keep=update) if row.cache is None else _Plan(True, row.cache_len, append=update)
    if row.cache is not None and (stabilizing or row.nfe % cfg.refresh_interval == 0):
        return _Plan(False, 0, keep=row.cache_len)  # refresh: rebuilt from a full forward
    if row.cache is not None:
        return _Plan(True, row.cache_len)
    return _Plan(False, 0)


def _forward(
    model: Model,
    xg: torch.Tensor,
    mask: torch.Tensor | None,
    group: list[int],
    rows: list[_Row],
    plans: dict[int, _Plan],
    cached: bool,
    lo: int,
) -> torch.Tensor:
    """One model call for a group of rows (xg (R, P+L) their canvas rows); updates their caches.
    Returns the logits (R, P+L-lo, V) of positions [lo, P+L)."""
    if not cached:
        out = _parts.forward(model, xg, group, attention_mask=mask)
        kept: dict[int, KVCache] = {}  # one view per cache length, shared by the rows that keep it
        for j, r in enumerate(group):
            n = plans[r].keep
            if n is not None:
                if n not in kept:
                    kept[n] = out.kv.keep(n)
                rows[r].cache, rows[r].slot, rows[r].cache_len = kept[n], j, n
        return out.logits
    cache = _stack([rows[r] for r in group])
    out = _parts.forward(model, xg[:, lo:], group, start=lo, cache=cache, attention_mask=mask)
    grown: dict[int, KVCache] = {}
    for j, r in enumerate(group):
        n = plans[r].append
        if n:
            if n not in grown:  # one copy per append length, not per row
                grown[n] = cache.append(out.kv, n)
            rows[r].cache, rows[r].slot, rows[r].cache_len = grown[n], j, lo + n
    return out.logits


def _stack(group: list[_Row]) -> KVCache:
    """The group's caches as one batch: the rows' own cache when they are its rows in order (no
    copy; always so at batch 1), else a concatenation of their rows."""
    first = group[0].cache
    assert first is not None
    if not first.keys or (all(row.cache is first for row in group) and [row.slot for row in group] == list(range(first.keys[0].shape[0]))):
        return first  # (a fake model without layers has an empty cache)
    keys = [torch.cat([row.cache.keys[i][row.slot : row.slot + 1] for row in group]) for i in range(len(first.keys))]  # type: ignore[union-attr]
    values = [torch.cat([row.cache.values[i][row.slot : row.slot + 1] for row in group]) for i in range(len(first.values))]  # type: ignore[union-attr]
    return KVCache(keys, values)


def _draws(
    lg: torch.Tensor,
    region: torch.Tensor,
    group: list[int],
    ends: list[int],
    s0: int,
    temperature: float,
    mask_id: int,
    noise: _parts.Noise,
) -> torch.Tensor:
    """x0 (R, n) at T > 0: each row's Gumbel noise over its own span [s0, ends[j]), from its own
    generator (the shape batch 1 draws); positions past a row's span keep the canvas's token."""
    x0 = region.clone()
    for j, r in enumerate(group):
        w = ends[j] - s0
        x0[j : j + 1, :w] = _parts.propose(lg[j : j + 1, :w], temperature, mask_id, noise, [r])
    return x0


def _span(rows: list[_Row], group: list[int], lo: int, P: int) -> tuple[int, list[int], int]:
    """The span [s0, hi) a group's commit looks at (every mask lies at or after the cache end
    `lo` and the prompt), and each row's active end (the end of its last open block)."""
    ends = [max(b.end for b in rows[r].blocks if b.full or b.masks) for r in group]
    return max(lo, P), ends, max(ends)


def _commit_dream(
    d: _Decode,
    group: list[int],
    sel: torch.Tensor | None,
    logits: torch.Tensor,
    lo: int,
    step: torch.Tensor | None,
    filled: torch.Tensor,
) -> None:
    """Dream models (the module docstring's Dream bullets): choose and commit for each row of a
    group (`group`: row indices; `sel`: the same as a tensor, None when the group is every row)
    from its logits (R, P+L-lo, V) of positions [lo, P+L), then the EOS fill and the block counts
    (one host sync for the group); `d.x` is written in place, `step` (N, P+L), when given, marks
    the commits. `filled` (N, P+L): the masks each row's last EOS fill closed (the Dream util's
    candidates still)."""
    x, P, cfg, noise, rows = d.x, d.P, d.cfg, d.noise, d.rows
    R, B, mask_id, eos, dev = len(group), cfg.block_length, d.mask_id, d.eos, x.device
    s0, ends, hi = _span(rows, group, lo, P)
    lg = logits[:, s0 - lo : hi - lo]  # (R, n, V) over [s0, hi)
    region = x[:, s0:hi] if sel is None else x[:, s0:hi].index_select(0, sel)  # (R, n)
    pos = torch.arange(s0, hi, device=dev)
    inside = pos < torch.tensor(ends, device=dev).view(-1, 1)  # (R, n): the row's own span [s0, active end)
    if cfg.temperature == 0:
        x0 = _parts.propose(lg, 0.0, mask_id)  # (R, n)
    else:
        x0 = _draws(lg, region, group, ends, s0, cfg.temperature, mask_id, noise)
    h = _parts.entropy(lg)  # (R, n) float64
    real = (region == mask_id) & inside
    # the masks before the util's EOS fill are candidates; H < tau only, no global lowest-entropy commit
    masked = real | ((filled[:, s0:hi] if sel is None else filled[:, s0:hi].index_select(0, sel)) & inside)
    chosen = masked & (h < cfg.threshold)
    firsts = [next((b for b in rows[r].blocks[1:] if b.full and b.masks), None) for r in group]
    if any(f is not None for f in firsts):  # progress guarantee in the first fully-activated block with masks
        a = torch.tensor([f.start if f else 0 for f in firsts], device=dev).view(-1, 1)
        z = torch.tensor([f.end if f else 0 for f in firsts], device=dev).view(-1, 1)
        in_first = (pos >= a) & (pos < z)  # (R, n)
        need = ~(chosen & in_first).any(dim=1) & (z > a).view(-1)  # (R,)
        j = h.masked_fill(~(masked & in_first), torch.inf).argmin(dim=1)  # (R,) first of equal minima
        every = torch.arange(R, device=dev)
        chosen[every, j] |= need  # with its own x0, even at T > 0 (the LLaDA reference re-takes the plain argmax)
    new = torch.where(chosen, x0, region)
    if sel is None:
        x[:, s0:hi] = new
    else:
        x[:, s0:hi].index_copy_(0, sel, new)
    if step is not None:
        step[group, s0:hi] = chosen & real

    # one host sync: commits, first EOS, each block's masks before and after the EOS fill
    L = cfg.gen_length
    nb = L // B
    gen = (x if sel is None else x.index_select(0, sel))[:, P:]  # (R, L)
    m = gen == mask_id
    is_eos = gen == eos
    e = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full((R,), L, device=dev))  # (R,) first EOS, L: none
    kept = m & (torch.arange(L, device=dev) <= e.view(-1, 1))  # the masks the fill leaves
    synced = torch.cat(
        [(chosen & real).sum(dim=1), e, m.view(R, nb, B).sum(dim=2).flatten(), kept.view(R, nb, B).sum(dim=2).flatten()]
    ).tolist()
    for j, r in enumerate(group):
        row = rows[r]
        before = synced[2 * R + j * nb : 2 * R + (j + 1) * nb]
        after = synced[2 * R + R * nb + j * nb : 2 * R + R * nb + (j + 1) * nb]
        _set_masks(row.blocks, before)
        n_commits = synced[j]
        filled[r] = False
        # else the reference's loop ends before its fill
        if cfg.early_stop and row.active(cfg.gen_length // B) and synced[R + j] < L:
            at = P + synced[R + j]  # the first EOS, absolute
            x[r, at + 1 :] = eos  # d3LLM's early stop: everything after the first EOS becomes EOS
            n_commits += sum(before) - sum(after)  # the masks it filled
            if step is not None:
                step[r, at + 1 :] |= m[j, at + 1 - P :]
            filled[r, at + 1 :] = m[j, at + 1 - P :]
            for blk in row.blocks[1:]:
                if blk.start > at and blk.masks:
                    blk.full = True
                if blk.start > at:  # the Dream util also retires opened blocks after the EOS from the cache
                    blk.cached = True
            while len(row.blocks) - 1 < nb:  # the rest of the canvas, closed: finished and never cached
                s = row.blocks[-1].end
                row.blocks.append(_Block(s, s + B, 0, True, done_at=row.nfe + 1, cached=True))
            row.eos_at = at
            _set_masks(row.blocks, after)
        row.commits.append(n_commits)


def _commit_thin(
    d: _Decode,
    group: list[int],
    sel: torch.Tensor | None,
    logits: torch.Tensor,
    lo: int,
    step: torch.Tensor | None,
) -> None:
    """LLaDA models: choose and commit for each row of a group from its logits
    (R, P+L-lo, V), then the EOS fill and the block counts.

    Kept thin (issue 14): -H and x0 come to the host once (the canvas rows are kept there,
    `_Row.gen`), every decision (threshold, forced lowest entropy, progress guarantee, EOS fill)
    is taken there on lists, and the rows go back in one write (none once all are done). -H is
    first taken in float32 (`_parts.neg_entropy32`); only a row with a decision within its band
    (`_parts.entropy32_band`) of flipping takes the reference's float64 scores."""
    x, P, cfg, noise, rows, mask_id = d.x, d.P, d.cfg, d.noise, d.rows, d.mask_id
    tau = cfg.threshold
    s0, ends, hi = _span(rows, group, lo, P)
    lg = logits[:, s0 - lo : hi - lo]  # (R, n, V) over [s0, hi)
    gens = [rows[r].gen for r in group]  # (R, L) before the commit, the rows' own lists: written in place
    firsts = [next(((b.start - s0, b.end - s0) for b in rows[r].blocks[1:] if b.full and b.masks), None) for r in group]
    cands = [[i for i in range(ends[j] - s0) if gens[j][s0 - P + i] == mask_id] for j in range(len(group))]
    picks: list = [None] * len(group)  # float64 logits: a float32 -H would round the logits themselves (no band covers it)
    if lg.dtype != torch.float64:
        approx = _parts.neg_entropy32(lg).tolist()  # (R, n) -H, each row within `bands` of the float64 scores
        # the band of the row's largest float32 entropy (-min(v): at least every candidate's; NaN first: inf)
        bands = [_parts.entropy32_band(lg.shape[-1], -min(v) if c else 0.0) * _BAND_SCALE for v, c in zip(approx, cands)]
        picks = [_choose(approx[j], cands[j], firsts[j], tau, bands[j]) for j in range(len(group))]
    if None in picks:  # a decision near its boundary: the reference's float64 -H (taken before the argmax writes lg)
        exact = _parts.neg_entropy(lg).tolist()
        picks = [p if p is not None else _choose(exact[j], cands[j], firsts[j], tau, 0.0) for j, p in enumerate(picks)]
    if cfg.temperature == 0:
        x0 = _parts.propose_(lg, 0.0, mask_id).tolist()  # (R, n)
    else:
        region = x[:, s0:hi] if sel is None else x[:, s0:hi].index_select(0, sel)
        x0 = _draws(lg, region, group, ends, s0, cfg.temperature, mask_id, noise).tolist()
    marks = [[False] * (x.shape[1] - P) for _ in group] if step is not None else None
    for j, (chosen, forced) in enumerate(picks):  # type: ignore[misc]
        gen = gens[j]
        for i in chosen:
            gen[s0 - P + i] = x0[j][i]
        if forced is not None:  # the progress guarantee takes the plain argmax, even at T > 0 (the reference re-takes it)
            gen[s0 - P + forced] = x0[j][forced] if cfg.temperature == 0 else int(_parts.propose(lg[j, forced], 0.0, mask_id))
        if marks is not None:
            for i in chosen + ([forced] if forced is not None else []):
                marks[j][s0 - P + i] = True
        _finish_step(rows[group[j]], gen, P, cfg, mask_id, d.eos, None if marks is None else marks[j])
    if step is None and not any(rows[r].active(cfg.gen_length // cfg.block_length) for r in group):
        return  # every row is done: its tokens are its host list, and no one looks at the canvas
    flat = array("q", [t for gen in gens for t in gen])  # host ints: no per-element conversion, as torch.tensor(list) makes
    new = torch.frombuffer(flat, dtype=torch.long).view(len(group), -1)  # (R, L) the group's one write
    if sel is None:
        x[:, P:].copy_(new)
    else:
        x[:, P:].index_copy_(0, sel, new)
    if step is not None:
        step[group, P:] = torch.tensor(marks, device=x.device)


_BAND_SCALE = 1.0  # tests set it to inf: every decision on the float64 scores


def _choose(
    v: list[float], cands: list[int], first: tuple[int, int] | None, tau: float, band: float
) -> tuple[list[int], int | None] | None:
    """One row's commits from its -H `v` over the span (positions relative to it): every
    candidate (mask) with H <= tau, the lowest-entropy candidate always (first of equal minima),
    and, when the first fully-activated block with masks `first` [a, z) got nothing, its
    lowest-entropy mask (returned apart: it takes the plain argmax). None when `v` is approximate
    (`band` > 0) and some decision lies within `band` of flipping (or a score is NaN): every
    answer given is then the exact scores' (a comparison with tau is off by less than the error;
    an argmax whose runner-up trails by more than twice the error cannot change)."""
    if not cands:
        return [], None
    # `threshold_mask`'s rule, on the host
    chosen = _picks.pick_threshold_within(v, cands, -tau, band) if band else _picks.pick_threshold(v, cands, -tau)
    if chosen is None:
        return None
    if first is None:
        return chosen, None
    a, z = first
    inside = [i for i in cands if a <= i < z]
    if not inside or any(a <= i < z for i in chosen):
        return chosen, None
    q = max(inside, key=lambda i: (v[i] != v[i], v[i]))  # torch's argmax: first of equal maxima, NaN above all
    if band and _picks.near_best(v, inside, q, band):
        return None
    return chosen, q


def _finish_step(row: _Row, gen: list[int], P: int, cfg: Config, mask_id: int, eos: int, marks: list[bool] | None) -> None:
    """From the row's generation region after its commit (host list, written in place): block
    counts, commits, and d3LLM's early stop (everything after the first EOS becomes EOS; `marks`,
    when given, marks the masks it fills)."""
    B, L = cfg.block_length, cfg.gen_length
    before = [gen[i : i + B].count(mask_id) for i in range(0, L, B)]  # masks per block after the commit
    n_commits = sum(blk.masks for blk in row.blocks[1:]) + B * (L // B - (len(row.blocks) - 1)) - sum(before)
    _set_masks(row.blocks, before)
    e = gen.index(eos) if eos in gen else L
    # else the reference's loop ends before its fill
    if cfg.early_stop and row.active(L // B) and e < L:
        at = P + e  # the first EOS, absolute
        after = [blk.count(mask_id) for blk in (gen[i : min(i + B, e + 1)] for i in range(0, L, B))]  # the fill leaves these
        n_commits += sum(before) - sum(after)  # the masks it filled
        if marks is not None:
            for i in range(e + 1, L):
                marks[i] = marks[i] or gen[i] == mask_id
        gen[e + 1 :] = [eos] * (L - e - 1)
        for blk in row.blocks[1:]:
            if blk.start > at and blk.masks:
                blk.full = True
        while len(row.blocks) - 1 < L // B:  # the rest of the canvas, closed: finished and never cached
            s = row.blocks[-1].end
            row.blocks.append(_Block(s, s + B, 0, True, done_at=row.nfe + 1, cached=True))
        row.eos_at = at
        _set_masks(row.blocks, after)
    row.commits.append(n_commits)


def _set_masks(blocks: list[_Block], counts: list[int]) -> None:
    """Every open block's mask count from the row's per-block counts (open blocks are contiguous from P)."""
    for blk, n in zip(blocks[1:], counts):
        blk.masks = n
