"""The values that cross module boundaries: Sample, Generation, Score, Record.

Frozen dataclasses with no dependency beyond the standard library, so that every layer of
dleval (tasks, decoders, scorers, metrics, reports) can import them. `Record` is one line of
`samples.jsonl`; metrics and reports read nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RECORD_FORMAT = 1


@dataclass(frozen=True)
class Sample:
    """One problem as its task defines it: no tokens, no model knowledge.

    `question` is the final user text in the task's wording; `fewshot` holds worded
    (question, answer) exemplars; `gen_prefix` starts the assistant turn (lm-eval's
    `gen_prefix`). `meta` is the task's own payload for its scorer (tests, entry point...).
    """

    id: str
    question: str
    target: str
    fewshot: tuple[tuple[str, str], ...] = ()
    gen_prefix: str = ""
    meta: Any = None


@dataclass(frozen=True)
class Step:
    """What `on_step` sees after each forward of a decoder.

    `canvas` is (B, P+L) token ids after this step's commits; `committed` is a (B, P+L) bool
    mask of the positions committed in this step; `nfe` counts forwards so far (from 1).
    """

    nfe: int
    canvas: torch.Tensor
    committed: torch.Tensor


OnStep = Callable[[Step], None]


@dataclass(frozen=True)
class Generation:
    """A decoder's output for one prompt.

    `tokens` is the generated region (gen_length ids, or fewer when a decoder truncates the
    canvas, e.g. Learn2PD's end-of-text prediction); `committed_per_step` is how many positions
    were committed (mask -> token) by each forward, the distribution behind TPF; commits a
    decoder later revoked are included, so sum(committed_per_step) - revoked is the net count of
    committed positions (metrics.py defines the edit counts). NFE is deliberately absent:
    the run loop reads it from the counting wrapper around the model.
    """

    tokens: tuple[int, ...]
    committed_per_step: tuple[int, ...]
    finish: str = "length"  # "length" | "eos" | "early_exit"
    revoked: int = 0  # committed tokens a decoder turned back into masks (WINO); metrics.py defines it
    rewritten: int = 0  # commits that replaced an earlier, different token at the same position


@dataclass(frozen=True)
class Score:
    """A task scorer's verdict on one completion.

    `correct` is the primary metric (1.0/0.0, or a fraction); `metrics` holds every filter's
    value (e.g. strict-match and flexible-extract) and `answers` what each filter extracted.
    """

    correct: float
    answer: str
    metrics: dict[str, float] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Record:
    """One finished sample: one line of `samples.jsonl`.

    Token counts follow ARCHITECTURE §5: `gen_tokens` are canvas positions committed (net of
    revocations: `committed - revoked`; the edit counts are defined in dleval/metrics.py),
    `answer_tokens` the answer's tokens up to the first EOS or stop string. `seconds` is the
    synced wall time of the decode (shared equally by the rows of a batch).

    Where it ran: `rank` of `world_size` data-parallel processes, on `device` (e.g. "cpu",
    "NVIDIA H100 80GB HBM3"), in `invocation` (one id per dleval command invocation, shared by
    every point of a sweep and every rank of one launch). Latency is only comparable between
    Records of one device and, under load, of one invocation. Records written before these
    fields existed load with the defaults.
    """

    sample_id: str
    config_hash: str
    completion: str
    raw: str
    answer: str
    correct: float
    metrics: dict[str, float]
    nfe: int
    rows_forwarded: int
    gen_tokens: int
    answer_tokens: int
    prompt_tokens: int
    seconds: float
    committed_per_step: tuple[int, ...]
    finish: str
    batch_size: int
    warmup: bool = False
    error: str = ""
    target: str = ""
    rank: int = 0
    world_size: int = 1
    device: str = ""
    invocation: str = ""
    format: int = RECORD_FORMAT
    committed: int = 0  # mask -> token writes, revoked ones included: sum(committed_per_step)
    revoked: int = 0  # token -> mask writes (WINO); gen_tokens = committed - revoked
    rewritten: int = 0  # commits that replaced an earlier, different token at that position

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Record:
        data = json.loads(line)
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["committed_per_step"] = tuple(data.get("committed_per_step", ()))
        if "committed" not in data:  # records written before the edit counts: nothing was revoked
            data["committed"] = sum(data["committed_per_step"])
        return cls(**data)
