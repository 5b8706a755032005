"""synth_gsm: a synthetic multi-step arithmetic task in GSM8K answer form, generated from a seed.

The tiny model's benchmark. A dial starts at a digit and turns by a list of signed steps; the
answer writes every intermediate reading, each computed from the previous one, and ends with
`#### N`, so the GSM8K scorer applies unchanged:

    Q: The wheel shows 5. Turns: +1, +1, +1, +1, +1, +1, -1, -1, -1, +1, +1, -1. Where does it stop?
    A: 5 +1=6 +1=7 +1=8 +1=9 +1=0 +1=1 -1=0 -1=9 -1=8 +1=9 +1=0 -1=9. #### 9

Why this shape. Each reading depends on the one before it (mod 10), so a model that writes one
token per forward can compute every step locally, while committing several tokens per forward
forces it to guess readings whose predecessors are still masked: the task has the
accuracy-parallelism trade-off that parallel decoders exist to manage. The copied steps, the
separators, `####` and the EOS padding are easy tokens that a good adaptive decoder commits in
parallel. Prompt and answer list the steps with the same stride, so the lookup of step i sits
at a fixed relative offset, which a one-million-parameter model learns in minutes.

What was tried (the 0.94 M-parameter tiny model, one CPU thread). Turns are +-1 by default: with
+-1..9 (a 10 x 18 addition table) the model stayed at chance on the readings after 1500 steps,
+-1..2 was still below 50% per reading at 1250, and ten turns of (+1, -1, flip) (flip: x -> (10 -
x) mod 10) reached 98% per reading with the other readings visible but only 15% of problems at
one token per forward after 1500 steps. With +-1 the trade-off depends on how long the model
trains, because any reading is also the start plus a count of the turns before it, which a
transformer can learn to read straight from the prompt: with eight turns, 2000 steps gave 94% at
one token per forward and still 87% at four; with twelve turns, 1500 steps gave 100% and 99%
(100 problems), while 1000 steps give 95% and 63% (the bundled model). Twelve turns give 10 *
2^12 = 40960 combinations; the 1/8 reserved by `heldout` are never trained on. Other move sets
are a `-T turns=...` away.

Problems are keyed by (split, index): training draws from the "train" stream, evaluation from
"test"; the streams never share a seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dleval.types import Sample, Score

if TYPE_CHECKING:
    from dleval.tasks import TaskSpec

OBJECTS = ("dial", "lock", "wheel", "clock", "meter", "gauge")


@dataclass(frozen=True)
class Config:
    """Parameters of the generator (all overridable with -T)."""

    steps: int = 12  # chained operations per problem
    turns: tuple[str, ...] = ("+1", "-1")  # "+k"/"-k" add k mod 10; "flip" maps x to (10 - x) mod 10
    size: int = 500  # problems in the evaluation split
    seed: int = 0  # offsets the problem stream; 0 is the published benchmark


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the full worked answer ending in "#### N"
    value: int


def split_seed(split: str, index: int, seed: int = 0) -> int:
    """A seed unique to (split, index, seed); train and test never collide."""
    salt = {"train": 0x5EED0000, "test": 0x7E570000, "valid": 0x7A11D000, "distill": 0xD1570000}[split]
    return (salt + seed) * 1_000_003 + index


HELDOUT_SPLITS = ("test", "valid")


def apply_turn(value: int, turn: str) -> int:
    return (10 - value) % 10 if turn == "flip" else (value + int(turn)) % 10


def heldout(start: int, ops: list[str]) -> bool:
    """True for the ~1/8 of (start, turns) combinations reserved for evaluation.

    Training streams skip them and evaluation streams draw only them, so no evaluated problem
    is ever seen in training, whatever the stream sizes.
    """
    digest = hashlib.sha256(f"{start}:{','.join(map(str, ops))}".encode()).digest()
    return digest[0] < 32


def make_problem(rng: random.Random, steps: int = 8, turns: tuple[str, ...] = Config.turns, evaluation: bool = False) -> Problem:
    while True:
        start = rng.randrange(10)
        ops = [rng.choice(turns) for _ in range(steps)]
        if heldout(start, ops) == evaluation:
            break
    obj = rng.choice(OBJECTS)
    question = f"The {obj} shows {start}. Turns: {', '.join(ops)}. Where does it stop?"
    value, parts = start, []
    for op in ops:
        value = apply_turn(value, op)
        parts.append(f"{op}={value}")
    answer = f"{start} " + " ".join(parts) + f". #### {value}"
    return Problem(question=question, answer=answer, value=value)


def problem(split: str, index: int, cfg: Config = Config()) -> Problem:
    rng = random.Random(split_seed(split, index, cfg.seed))
    return make_problem(rng, cfg.steps, cfg.turns, evaluation=split in HELDOUT_SPLITS)


def samples(spec: TaskSpec, data_dir: Path | None = None) -> list[Sample]:
    """`size` problems of the spec's split, worded by the spec's template."""
    cfg: Config = spec.params
    split = spec.data.split
    if split not in ("test", "valid"):
        raise ValueError(f"synth_gsm evaluates on 'test' or 'valid', not '{split}' (training uses its own stream)")
    out = []
    for i in range(cfg.size):
        p = problem(split, i, cfg)
        question = spec.prompt.template.format(question=p.question)
        out.append(Sample(id=f"{split}/{i}", question=question, target=p.answer))
    return out


def score(spec: TaskSpec, sample: Sample, completion: str) -> Score:
    from dleval.tasks import gsm8k_score

    return gsm8k_score(spec, sample.target, completion)


def reference(spec: TaskSpec, sample: Sample) -> str:
    return sample.target
