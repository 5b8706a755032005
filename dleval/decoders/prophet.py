"""Prophet: LLaDA's schedule plus an early commit once the answer window's top-2 logit margin is large.

Source: Li et al., "Diffusion Language Models Know the Answer Before Decoding" (arXiv 2508.19982,
ICLR 2026); pixeli99/Prophet `generate_earlyexit.py` and `eval_llada.py` @460afe4; spec
decoders.md §5. The LLaDA low-confidence sampler (fixed per-step quota, semi-AR blocks), with:

- answer-prefix constraints: `answer_prefix` "200:The|201:answer|202:is" writes the tokens of
  " The" from generation offset 200 on, and so on (each word tokenized with a leading space and
  no special tokens, as `eval_llada.py` does); those positions are never masked;
- the exit test, at every forward before its commit: the mean top-1 minus top-2 raw-logit gap
  over the `answer_length` positions that start two after the last constraint token (so one
  position is skipped) is compared with 7.5 / 5.0 / 2.5 while nfe/steps < 0.33 / < 0.67 / after;
  when it passes, every remaining mask on the canvas takes its argmax and decoding stops
  (finish="early_exit"; NFE = that forward's index).

Tokenization: decoders see token ids, so the words of `answer_prefix` are encoded with the
model's `encode(text) -> ids`, which `dleval.models.load` attaches from the checkpoint's tokenizer.
Like the reference, constraint tokens beyond the canvas are dropped, and the test only runs when
its window lies inside the canvas: with the paper's prefix at offset 200 and a shorter
gen_length, Prophet is plain LLaDA (such offsets need no tokenizer). Tasks can set their own prefix
(`answer_prefix` in a task's [generation] hints; synth_gsm forces " ####"). No prefix, no test:
`answer_prefix=""` is exactly `llada`.

The window starting two after the last constraint token skips the position right after it, which
is where a one-token answer goes: on synth_gsm (" ####" at offset 26, the digit at 27, EOS after)
the reference's window would lie on EOS padding only and exit at the first forward whatever the
model knows. `answer_start` (ours) sets the window's first offset; the task hints it (with
`answer_length`) so that the test reads the answer itself.

Also as the reference: a block holding constraint positions has fewer masks than steps, so some
of its forwards have a quota of 0 and commit nothing (they still count). The confidence softmax
and the top-1 minus top-2 gaps are taken in the logits' dtype, as the reference does (bf16 on a
bf16 model), and the gaps averaged in float64 (Python floats); `score_dtype="float64"` (ours)
takes both in float64. Deviation, per the harness conventions (§0.3): ties break by position.
No CFG (the eval runs cfg 0).
The reference decodes one prompt at a time; here prompts are left-padded into one batch that
follows the common schedule, and a row that exits leaves the forward, so every row gets its
batch-1 tokens and NFE.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = True  # rows share the fixed schedule; a row that exits leaves the forward (NFE per row)
PHASES = (0.33, 0.67)  # generate_earlyexit.py should_early_exit: progress breakpoints


@dataclass(frozen=True)
class Config:
    gen_length: int = 256  # eval.sh gen_length=256
    block_length: int = 32  # eval.sh block_length=32
    steps: int | None = None  # None = gen_length; eval.sh steps=256
    temperature: float = 0.0  # eval_llada.py always passes temperature=0
    answer_prefix: str = "200:The|201:answer|202:is"  # eval.sh constraints_text
    answer_length: int = 5  # eval.sh answer_length=5
    answer_start: int | None = None  # ours: the window's first generation offset; None = last constraint token + 2 (eval_llada.py)
    early_threshold: float = 7.5  # eval_llada.py early_threshold: gap needed while progress < 0.33
    mid_threshold: float = 5.0  # mid_threshold: while progress < 0.67
    late_threshold: float = 2.5  # late_threshold: afterwards
    score_dtype: str = "logits"  # generate_earlyexit.py: softmax and gaps in the logits' dtype; "float64" is ours

    def __post_init__(self) -> None:
        blocks = _parts.check_blocks(self.gen_length, self.block_length)
        if self.total_steps <= 0 or self.total_steps % blocks:
            raise ValueError(f"steps ({self.total_steps}) must be a positive multiple of the number of blocks ({blocks})")
        if self.answer_length < 1:
            raise ValueError("answer_length must be >= 1")
        _parts.check_number("temperature", self.temperature, why="Gumbel noise scale; 0 = greedy")
        for name in ("early_threshold", "mid_threshold", "late_threshold"):  # inf: never exit in that phase
            _parts.check_number(name, getattr(self, name), finite=False, why="a top-1 minus top-2 raw-logit gap")
        if self.answer_start is not None and self.answer_start < 0:
            raise ValueError("answer_start must be a generation offset >= 0 (or None: two after the last constraint token)")
        _parts.check_score_dtype(self.score_dtype)
        self.prefix_words()  # validates the syntax

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    def prefix_words(self) -> list[tuple[int, str]]:
        """answer_prefix as (generation offset, word) pairs."""
        out = []
        for part in filter(None, (p.strip() for p in self.answer_prefix.split("|"))):
            pos, sep, word = part.partition(":")
            if not sep or not pos.strip().isdigit() or not word.strip():
                raise ValueError(f"answer_prefix part {part!r} is not 'offset:word' (e.g. '200:The|201:answer|202:is')")
            out.append((int(pos), word.strip()))
        return out

    def threshold_at(self, progress: float) -> float:
        """The gap the exit test needs at this fraction of `steps` done."""
        if progress < PHASES[0]:
            return self.early_threshold
        return self.mid_threshold if progress < PHASES[1] else self.late_threshold


def constraints(model: Model, cfg: Config) -> tuple[dict[int, int], list[int]]:
    """({generation offset: token id} inside the canvas, the exit test's window of offsets)."""
    forced: dict[int, int] = {}
    last = -1
    for pos, word in cfg.prefix_words():
        if pos >= cfg.gen_length:  # all its tokens would fall outside: no tokenizer needed
            last = max(last, pos)
            continue
        encode = getattr(model, "encode", None)
        if encode is None:
            raise ValueError("Prophet's answer_prefix needs the model's tokenizer (a model from dleval.models.load), or answer_prefix=''")
        for i, tid in enumerate(encode(" " + word)):
            if pos + i < cfg.gen_length:
                forced[pos + i] = int(tid)
            last = max(last, pos + i)
    if last < 0:  # no prefix, no test (also with answer_start: the method needs its constraint)
        return forced, []
    start = last + 2 if cfg.answer_start is None else cfg.answer_start  # eval_llada.py: max(constraints) + 2
    return forced, list(range(start, min(cfg.gen_length, start + cfg.answer_length)))


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
    N, mask_id = x.shape[0], model.mask_id
    noise = _parts.Noise(seeds, N, model.device)
    forced, window = constraints(model, cfg)
    for offset, tid in forced.items():
        x[:, P + offset] = tid
    padded = [len(p) < P for p in prompts]
    L, B, steps = cfg.gen_length, cfg.block_length, cfg.total_steps
    per_block = steps // (L // B)
    # Commits per forward, per row: (rows, a list of ints or an (R,) tensor on the device)
    entries: list[tuple[list[int], list[int] | torch.Tensor]] = []
    finish = ["length"] * N
    live = list(range(N))  # rows that have not exited
    dtype = _parts.SCORE_DTYPES[cfg.score_dtype]
    w0, w1 = (window[0], window[-1] + 1) if window else (0, 0)  # the window is a run of offsets
    nfe = 0
    for s in range(P, P + L, B):
        a, z = s - P, s - P + B  # the block in generation-region coordinates
        k = _parts.quota((x[:, s : s + B] == mask_id).sum(dim=1), per_block).tolist()  # (N, per_block)
        for i in range(per_block):
            if not live:
                break
            nfe += 1
            sel = None if len(live) == N else torch.tensor(live, device=x.device)
            xr = x if sel is None else x.index_select(0, sel)  # (R, P+L)
            mask = None
            if attention is not None and any(padded[r] for r in live):
                mask = attention if sel is None else attention.index_select(0, sel)
            out = _parts.forward(model, xr, live, attention_mask=mask).logits  # (R, P+L, V)
            exits = [False] * len(live)
            if window:  # the exit test: the step's one host sync
                exits = [_mean(row) >= cfg.threshold_at(nfe / steps) for row in _gaps(out[:, P + w0 : P + w1], dtype)]
            if any(exits):
                ks = [k[r][i] for r in live]
                chosen = _exit_step(x, xr, sel, out[:, P:], live, exits, ks, a, z, mask_id, cfg, noise, dtype)  # (R, L)
                entries.append((live, chosen.sum(dim=1)))
                for j, r in enumerate(live):
                    if exits[j]:
                        finish[r] = "early_exit"
                _report(on_step, nfe, x, live, P, chosen)
                live = [r for j, r in enumerate(live) if not exits[j]]
                continue
            blk = xr[:, s : s + B]  # (R, B) view, written in place
            lb = out[:, s : s + B]  # (R, B, V)
            ks = [k[r][i] for r in live]
            chosen = None
            if all(n == 0 for n in ks):  # a quota of 0 (a block with constraint positions): nothing to commit
                entries.append((live, [0] * len(live)))
            elif cfg.temperature == 0 and all(n == 1 for n in ks):
                # T = 0, one commit per row: the score is max p bit for bit (softmax is monotone, see
                # llada) and the argmax is taken at the chosen position only.
                score = torch.softmax(lb, dim=-1, dtype=dtype).amax(dim=-1)  # (R, B)
                best = score.masked_fill_(blk != mask_id, _parts.NEG_INF).argmax(dim=1, keepdim=True)  # (R, 1)
                blk.scatter_(1, best, lb.gather(1, best.unsqueeze(-1).expand(-1, -1, lb.shape[-1])).argmax(dim=-1))
                entries.append((live, [1] * len(live)))
                if on_step is not None:
                    chosen = torch.zeros_like(blk, dtype=torch.bool).scatter_(1, best, True)
            else:
                if cfg.temperature == 0:  # no noise: the block's argmax is all the step uses
                    x0 = lb.argmax(dim=-1)  # (R, B)
                else:  # the noise is drawn over the whole region, as always
                    x0 = _parts.gumbel_argmax(out[:, P:], cfg.temperature, noise, live)[:, a:z]
                score = _parts.confidence(lb, x0, dtype)  # (R, B)
                if all(n == 1 for n in ks):  # one commit per row: the best-scored mask (see llada)
                    best = score.masked_fill_(blk != mask_id, _parts.NEG_INF).argmax(dim=1, keepdim=True)
                    blk.scatter_(1, best, x0.gather(1, best))
                    entries.append((live, [1] * len(live)))
                    if on_step is not None:
                        chosen = torch.zeros_like(blk, dtype=torch.bool).scatter_(1, best, True)
                else:
                    masked = blk == mask_id
                    chosen = _parts.top_k_mask(score.masked_fill_(~masked, _parts.NEG_INF), ks) & masked
                    torch.where(chosen, x0, blk, out=blk)
                    entries.append((live, chosen.sum(dim=1)))
            if sel is not None and not all(n == 0 for n in ks):
                x[sel, s : s + B] = blk
            _report(on_step, nfe, x, live, s, chosen)
    on_device = [c for _, c in entries if isinstance(c, torch.Tensor)]
    synced = iter(torch.cat(on_device).tolist() if on_device else [])  # one sync for all of them
    commits: list[list[int]] = [[] for _ in range(N)]
    for rows, c in entries:
        for r, n in zip(rows, c if isinstance(c, list) else [next(synced) for _ in rows]):
            commits[r].append(n)
    return _parts.generations(x, P, commits, finish)


def _gaps(window: torch.Tensor, dtype: torch.dtype | None) -> list[list[float]]:
    """The top-1 minus top-2 gaps of the window's raw logits (R, A, V) -> (R, A), taken in `dtype`
    (None: the logits' dtype) as the reference does, on the host: the two top values come back
    (the step's sync) and are subtracted there. In float32 the difference is taken in float64 and
    rounded to float32, which is the float32 subtraction bit for bit (two float32 values whose
    exponents differ by at most 28 have an exact float64 difference; further apart, the smaller
    is far below half an ulp of the larger, and both roundings give the larger). Other dtypes
    subtract on the device."""
    top = torch.topk(window if dtype is None else window.to(dtype), 2, dim=-1).values  # (R, A, 2)
    if top.dtype == torch.float64:
        return [[a - b for a, b in row] for row in top.tolist()]
    if top.dtype == torch.float32:
        return [[_F32.unpack(_F32.pack(a - b))[0] for a, b in row] for row in top.tolist()]
    return (top[..., 0] - top[..., 1]).tolist()


_F32 = struct.Struct("f")  # a Python float rounded to float32 (to nearest, as IEEE arithmetic)


def _exit_step(x, xr, sel, logits, live, exits, ks, a, z, mask_id, cfg, noise, dtype) -> torch.Tensor:
    """A step in which some row exits: every remaining mask of an exiting row takes its argmax,
    the other rows commit as usual (the step as the reference takes it, over the whole
    generation region). Writes x; returns the commits (R, L) over the generation region."""
    P = x.shape[1] - cfg.gen_length
    x0 = _parts.gumbel_argmax(logits, cfg.temperature, noise, live)  # (R, L)
    gen = xr[:, P:]
    masked = gen == mask_id
    score = _parts.confidence(logits[:, a:z], x0[:, a:z], dtype)  # (R, B)
    score = torch.where(masked[:, a:z], score, torch.full_like(score, _parts.NEG_INF))
    chosen = torch.zeros_like(masked)
    chosen[:, a:z] = _parts.top_k_mask(score, ks) & masked[:, a:z]
    chosen = torch.where(torch.tensor(exits, device=x.device).view(-1, 1), masked, chosen)
    new = torch.where(chosen, x0, gen)
    if sel is None:
        x[:, P:] = new
    else:
        x[sel, P:] = new
    return chosen


def _report(on_step: OnStep | None, nfe: int, x: torch.Tensor, live: list[int], start: int, chosen: torch.Tensor | None) -> None:
    """on_step with the step's commits (R, n) at canvas columns [start, start + n) of the live
    rows; nothing is built when no one listens."""
    if on_step is None:
        return
    full = torch.zeros_like(x, dtype=torch.bool)
    if chosen is not None:
        full[torch.tensor(live, device=x.device), start : start + chosen.shape[1]] = chosen
    _parts.report_step(on_step, nfe, x, full)


def _mean(values: list[float]) -> float:
    """The reference's average of the window's gaps: Python floats, summed in order."""
    return sum(values) / len(values)


def check(model: Model, cfg: Config) -> None:
    """Fail before a run, not per sample, when the prefix cannot be tokenized."""
    constraints(model, cfg)
