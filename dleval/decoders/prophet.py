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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dleval.decoders import _parts
from dleval.models.base import Model
from dleval.types import Generation, OnStep

BATCHED = False  # the exit is per sequence, and NFE is per sequence
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
def decode(model: Model, prompts: Sequence[Sequence[int]], cfg: Config = Config(), *, on_step: OnStep | None = None) -> list[Generation]:
    return [_decode_one(model, prompt, cfg, on_step) for prompt in prompts]


def _decode_one(model: Model, prompt: Sequence[int], cfg: Config, on_step: OnStep | None) -> Generation:
    x, _, P = _parts.make_canvas(model, [prompt], cfg.gen_length)  # (1, P+L)
    forced, window = constraints(model, cfg)
    for offset, tid in forced.items():
        x[0, P + offset] = tid
    answer = [P + w for w in window]
    B, steps = cfg.block_length, cfg.total_steps
    per_block = steps // (cfg.gen_length // B)
    dtype = _parts.SCORE_DTYPES[cfg.score_dtype]
    commits: list[int] = []
    nfe = 0
    for s in range(P, P + cfg.gen_length, B):
        e = s + B
        k = _parts.quota((x[:, s:e] == model.mask_id).sum(dim=1), per_block)[0].tolist()
        for i in range(per_block):
            nfe += 1
            logits = model.forward(x).logits  # (1, P+L, V)
            x0 = _parts.gumbel_argmax(logits, cfg.temperature)  # (1, P+L)
            masked = x == model.mask_id
            if answer and _mean(_parts.margin(logits[0, answer], dtype)) >= cfg.threshold_at(nfe / steps):
                x = torch.where(masked, x0, x)
                commits.append(int(masked.sum()))
                _parts.report_step(on_step, nfe, x, masked)
                return _parts.generations(x, P, [commits], "early_exit")[0]
            score = _parts.confidence(logits[:, s:e], x0[:, s:e], dtype)  # (1, B)
            score = torch.where(masked[:, s:e], score, torch.full_like(score, _parts.NEG_INF))
            chosen = torch.zeros_like(masked)
            chosen[:, s:e] = _parts.top_k_mask(score, [k[i]]) & masked[:, s:e]
            x = torch.where(chosen, x0, x)
            commits.append(int(chosen.sum()))
            _parts.report_step(on_step, nfe, x, chosen)
    return _parts.generations(x, P, [commits])[0]


def _mean(gaps: torch.Tensor) -> float:
    """The reference's average of the window's gaps: Python floats, summed in order."""
    values = gaps.tolist()
    return sum(values) / len(values)


def check(model: Model, cfg: Config) -> None:
    """Fail before a run, not per sample, when the prefix cannot be tokenized."""
    constraints(model, cfg)
