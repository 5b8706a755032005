"""The block-cache loop of the threshold decoders (fastdllm, dparallel, eb): Fast-dLLM's three
loops (decoders.md §2.2-2.4; NVlabs/Fast-dLLM `llada/generate.py` @24cc59e) as one function,
since dParallel and EB reuse them with another selection rule. Each forward a decoder's `select`
scores the block on the device and its `rule` decides each row's commits on the host
(`_picks.pick_*`).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence

import torch

from dleval.decoders import _parts
from dleval.models.base import KVCache, Model
from dleval.types import Generation, OnStep

# select(logits (R, C, V) of the columns of each row's current block that `block_loop` shows it,
# each row's forward index within its block, the prompts the R rows are) -> (x0 (R, C) proposed
# tokens, never [MASK]; scores (R, C) the rule's numbers) or (x0, scores, exact): then `scores`
# are cheaper approximations of the reference's and `exact()` computes the reference's (R, C),
# called only when a rule cannot decide from the approximations. R counts the rows forwarded,
# not every prompt. `select` owns the logits (a view of this forward's output or a copy) and may
# write them.
Select = Callable[[torch.Tensor, list[int], list[int]], tuple]
# rule(one row's scores over the C columns (host floats: the tensor's values exactly), the
# columns that are still masked in that row (ascending; never empty), the row's forward index,
# the scores' dtype) -> the columns to commit: a non-empty subset of the candidates; or None
# when the scores are approximations (select's third value) too close to a decision to take it:
# the rule is asked again with the exact scores, where it must decide.
Rule = Callable[[list[float], list[int], int, torch.dtype], list[int] | None]


def block_loop(
    model: Model,
    prompts: Sequence[Sequence[int]],
    gen_length: int,
    block_length: int,
    select: Select,
    rule: Rule,
    *,
    cache: str = "none",
    refresh_every: int | None = None,
    skip_idle_forward: bool = False,
    on_step: OnStep | None = None,
    compact: bool = True,
) -> list[Generation]:
    """Decode prompts block by block, each block until it has no mask: one `select` (scores, on
    the device) and one `rule` per row (the decision, on the host) per forward.

    The forwards are Fast-dLLM's (NVlabs/Fast-dLLM `llada/generate.py` @24cc59e):
    - "none": every forward is over the full canvas (`generate`, §2.2);
    - "prefix": the block's first forward is over the full canvas and keeps the K/V of
      [0, block_start); later forwards run x[block_start:] against that prefix (§2.3);
    - "dual": the first forward keeps the K/V of the whole canvas; later forwards run only the
      block, overwriting its K/V in place, against the rest of the cache (§2.4).
    A full forward also decodes (it is the block's first step) and is one NFE like any other.
    `refresh_every=N` repeats that full forward every N forwards within a block as well (N=1:
    every forward is full, which equals "none"). As in the reference, whose cached inner loop
    runs at least once, a block that its block-start forward already completed still gets one
    cached forward, which commits nothing (an entry 0 in committed_per_step) and counts as one
    NFE. `skip_idle_forward=True` (ours, a cheaper variant with the same tokens) leaves it out.

    Batches (the reference decodes one prompt at a time): prompts are left-padded so that
    every row's generation region has the same offsets, and each row advances on its own: its
    block ends when its own masks are gone (after its idle forward, if it has one), and a row
    with nothing left to do leaves the forward. So a row sees exactly the forwards it would see
    alone, and its NFE (counted per row by `Counted`) is its batch-1 NFE. With cache="none" rows
    move on to their next block at once (a full forward does not care where a row's block is).
    With a cache, the rows of one forward must share their block start (the cache is
    [0, block_start) for all of them), so a row whose block is done waits, without being
    forwarded, until every row has finished that block; then all start the next block together
    with one full forward. Within a block every forwarded row is then at the same forward index.

    `compact`: `select` sees only the span of the block's columns from the first to the last one
    still masked in some row (a slice: fewer float64 scores over the vocabulary late in a block;
    the same choices, since every score is computed per position). Decoders pass False when
    `select` draws noise, whose shape must not depend on the other rows.

    The step is kept thin (issue 14): which positions are still masked is tracked on the host;
    the step's one read-back is x0 and the scores (`tolist`); the rule decides on those lists
    (the `pick_*` functions: the tensor rules' decisions bit for bit); and the commits are
    written into the canvas on the host (`_HostCanvas`: on the CPU its memory is the tensor's,
    elsewhere one index write per step). This relies on `select` never proposing [MASK].
    """
    _parts.check_cache(cache, refresh_every)
    ids, attention, P = _parts.host_canvas(model, prompts, gen_length)
    canvas = _HostCanvas(ids, len(prompts), model.device)
    x = canvas.x  # (N, P+L), N = len(prompts)
    if attention is not None:
        attention = attention.to(x.device)
    N, dev, B = x.shape[0], x.device, block_length
    padded = [len(p) < P for p in prompts]  # rows that need the key padding mask
    n_blocks = gen_length // B
    idle_rule = cache != "none" and refresh_every != 1 and not skip_idle_forward
    block = [0] * N  # each row's current block
    index = [0] * N  # forwards the row has made in its current block
    idle = [False] * N  # the block is done but its idle cached forward is still due
    open_ = [[True] * B for _ in range(N)]  # host copy: which positions of the row's block are still masked
    commits: list[list[int]] = [[] for _ in range(N)]
    kv: KVCache | None = None
    kv_rows: list[int] = []  # the prompts whose K/V `kv` holds, in its row order
    calls = 0
    while True:
        rows = [r for r in range(N) if block[r] < n_blocks]
        if not rows:
            break
        if cache != "none":  # one shared block start: rows ahead wait for the slowest row
            current = min(block[r] for r in rows)
            rows = [r for r in rows if block[r] == current]
        starts = [P + block[r] * B for r in rows]
        s = starts[0]
        same = all(t == s for t in starts)
        # The step's plan, from the host copy alone (made before the forward: nothing waits on it).
        brows = [r for r in rows if not idle[r]]  # idle rows are forwarded and commit nothing
        a, z = 0, B  # the columns `select` sees: with compact, the span of the rows' open columns
        if compact and brows:
            a = min(o.index(True) for o in (open_[r] for r in brows))
            z = B - min(o[::-1].index(True) for o in (open_[r] for r in brows))
        sel = None if len(rows) == N else torch.tensor(rows, device=dev)
        xr = x if sel is None else x.index_select(0, sel)  # (R, P+L)
        mask = None
        if attention is not None and any(padded[r] for r in rows):
            mask = attention if sel is None else attention.index_select(0, sel)
        i0 = index[rows[0]]  # with a cache, every row of the forward is at the same index
        full = cache == "none" or i0 == 0 or (refresh_every is not None and i0 % refresh_every == 0)
        if full:
            out = _parts.forward(model, xr, rows, attention_mask=mask)
            if same:
                logits = out.logits[:, s : s + B]  # (R, B, V)
            else:  # cache="none": each row's own block
                at = torch.tensor(starts, device=dev).view(-1, 1) + torch.arange(B, device=dev)  # (R, B)
                logits = out.logits.gather(1, at.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1]))
            if cache != "none":
                kv, kv_rows = (out.kv.keep(s) if cache == "prefix" else out.kv), list(rows)
        else:
            assert kv is not None
            if kv_rows != rows:  # rows that finished the block left: drop their K/V
                keep = torch.tensor([kv_rows.index(r) for r in rows], device=dev)
                kv = KVCache([k.index_select(0, keep) for k in kv.keys], [v.index_select(0, keep) for v in kv.values])
                kv_rows = list(rows)
            if cache == "prefix":  # block + masked suffix in, block out
                logits = _parts.forward(model, xr[:, s:], rows, start=s, cache=kv, attention_mask=mask).logits[:, :B]
            else:  # in-place span write into kv
                logits = _parts.forward(model, xr[:, s : s + B], rows, start=s, cache=kv, attention_mask=mask).logits
        calls += 1
        for r in rows:
            if idle[r]:
                commits[r].append(0)
                idle[r], block[r], index[r], open_[r] = False, block[r] + 1, 0, [True] * B
        step: list[tuple[int, int]] = []  # (prompt, absolute position) of this step's commits, for on_step
        if brows:
            if len(brows) < len(rows):
                logits = logits.index_select(0, torch.tensor([j for j, r in enumerate(rows) if r in brows], device=dev))
            x0, scores, *exact = select(logits[:, a:z], [index[r] for r in brows], brows)  # (R', z - a) each
            tokens, values = x0.tolist(), scores.tolist()  # the step's one read-back
            cands = [[q for q in range(z - a) if open_[r][a + q]] for r in brows]
            picks = [rule(values[j], cands[j], index[r], scores.dtype) for j, r in enumerate(brows)]
            if None in picks:  # approximate scores too close to a decision: the reference's, once for the step
                if not exact:
                    raise AssertionError("a rule may answer None only for approximate scores")
                ref = exact[0]()
                values = ref.tolist()
                picks = [
                    p if p is not None else rule(values[j], cands[j], index[r], ref.dtype) for j, (p, r) in enumerate(zip(picks, brows))
                ]
            for j, r in enumerate(brows):
                o, base, picked = open_[r], P + block[r] * B + a, picks[j]
                if not picked:
                    raise AssertionError("a selection rule must commit at least one masked position")
                for q in picked:
                    o[a + q] = False
                    canvas.write(r, base + q, tokens[j][q])
                    if on_step is not None:
                        step.append((r, base + q))
                commits[r].append(len(picked))
                index[r] += 1
                if not any(o):  # blocks start fully masked, so the next one has masks
                    if index[r] == 1 and idle_rule:
                        idle[r] = True  # the reference's idle forward comes next, in this block
                    else:
                        block[r] += 1
                        index[r] = 0
                        open_[r] = [True] * B
            canvas.push()
        if on_step is not None:
            committed = torch.zeros_like(x, dtype=torch.bool)
            for r, t in step:
                committed[r, t] = True
            _parts.report_step(on_step, calls, x, committed)
    return _parts.generations(x, P, commits)


class _HostCanvas:
    """The canvas x (N, T) written from the host: `ids`, `host_canvas`'s flat int64 array. On the
    CPU `x` wraps `ids`, so a write is a store into it (no tensor op); elsewhere `x` is a device
    copy, the step's writes are collected and `push()` makes them one index write."""

    def __init__(self, ids: array, rows: int, device: torch.device, shared: bool | None = None) -> None:
        self.ids, self.T = ids, len(ids) // rows
        self.shared = device.type == "cpu" if shared is None else shared  # False on a CPU: the device path (tests)
        x = torch.frombuffer(ids, dtype=torch.long).view(rows, self.T)
        if self.shared:
            self.x = x
        else:
            self.x = x.to(device, copy=True)
            self.pending: list[tuple[int, int, int]] = []

    def write(self, row: int, position: int, token: int) -> None:
        if self.shared:
            self.ids[row * self.T + position] = token
        else:
            self.pending.append((row, position, token))

    def push(self) -> None:
        if not self.shared and self.pending:
            r, t, v = zip(*self.pending)
            dev = self.x.device
            self.x[torch.tensor(r, device=dev), torch.tensor(t, device=dev)] = torch.tensor(v, device=dev)
            self.pending = []


def blocks(
    model: Model, prompts: Sequence[Sequence[int]], cfg, select: Select, rule: Rule, on_step: OnStep | None, compact: bool
) -> list[Generation]:
    """`block_loop` with the block and cache fields of a threshold decoder's Config (fastdllm,
    dparallel, eb: gen_length, block_length, cache, refresh_every, skip_idle_forward)."""
    return block_loop(
        model,
        prompts,
        cfg.gen_length,
        cfg.block_length,
        select,
        rule,
        cache=cfg.cache,
        refresh_every=cfg.refresh_every,
        skip_idle_forward=cfg.skip_idle_forward,
        on_step=on_step,
        compact=compact,
    )


class EntropySelect:
    """The `select` of the entropy rules (dparallel and eb on LLaDA models): x0 (the argmax over
    every token but [MASK], `_parts.propose_`) and -H first in float32 (`_parts.neg_entropy32`),
    within `band(v)` of the reference's float64 `neg_entropy`, which the step's `exact()` takes
    for a rule that cannot decide. propose_ writes -inf into the [MASK] column: the column is kept
    for `exact`. float64 logits take the float64 -H at once (a float32 cast would round the logits
    themselves, which the band does not cover)."""

    def __init__(self, mask_id: int, temperature: float, noise: _parts.Noise | None) -> None:
        self.mask_id, self.temperature, self.noise = mask_id, temperature, noise
        self.vocab = 0  # the logits' width, for the band

    def __call__(self, logits: torch.Tensor, index: list[int], rows: list[int]) -> tuple:
        if logits.dtype == torch.float64:
            v = _parts.neg_entropy(logits)  # before propose_ writes the [MASK] column
            return _parts.propose_(logits, self.temperature, self.mask_id, self.noise, rows), v
        self.vocab = logits.shape[-1]
        approx, column = _parts.neg_entropy32(logits), logits[..., self.mask_id].clone()  # (R, C) each

        def exact() -> torch.Tensor:
            logits[..., self.mask_id] = column
            return _parts.neg_entropy(logits)

        return _parts.propose_(logits, self.temperature, self.mask_id, self.noise, rows), approx, exact

    def band(self, v: list[float]) -> float:
        """The band of a row's float32 -H `v`: that of its largest entropy (-min(v)), at least
        every position's; a NaN first gives inf."""
        return _parts.entropy32_band(self.vocab, -min(v))
