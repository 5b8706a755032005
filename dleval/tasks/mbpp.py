"""MBPP (Austin et al. 2021, arXiv 2108.07732): basic Python problems checked by asserts.

Specs: `mbpp` (lm-eval: 3-shot [BEGIN]/[DONE], test ids 11-510), `mbpp_instruct` (lm-eval
0.4.9: fenced answer opened by gen_prefix) and `mbpp_sanitized` (the hand-checked subset,
`prompt`/`test_imports` fields, 257 test problems; `-T split=all` takes all 427). Prompts follow
lm-evaluation-harness v0.4.9 tasks/mbpp/{mbpp,mbpp_instruct}.yaml; tasks.md §1.4, §2.2.

Data: `<data dir>/mbpp/mbpp.jsonl` (full, 974) or `mbpp/sanitized-mbpp.json` (427), else
`google-research-datasets/mbpp` (config full / sanitized) on the hub at the pinned revision.
Splits by task id, as the MBPP README defines them: prompt 1-10, test 11-510, validation
511-600, train 601-974; "all" is every record of the file. Sample ids are the task ids.

Scoring: each listed filter's code (scorers.CODE_FILTERS) runs as solution + setup + the asserts
in the sandbox. Unlike lm-eval, the setup runs: `test_setup_code` (it builds the trees of tasks
367 and 927 from the solution's class) or the sanitized split's `test_imports`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dleval import scorers
from dleval.errors import UserError
from dleval.tasks import _data
from dleval.types import Sample, Score

if TYPE_CHECKING:
    from dleval.tasks import TaskSpec

FIELDS = ("task_id", "text|prompt", "code", "test_list")  # what every record must have (sanitized: prompt)

SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974), "all": (1, 10**9)}


@dataclass(frozen=True)
class Config:
    fewshot_ids: tuple[int, ...] = (2, 3, 4)  # lm-eval / the MBPP paper's 3-shot prompt
    # What a perfect completion looks like after the prompt ({code}: the reference solution):
    # what `dleval validate` scores.
    reference: str = "{code}"


@dataclass(frozen=True)
class Problem:
    """Sample.meta: what the scorer needs."""

    task_id: int
    tests: tuple[str, ...]
    setup: str  # test_setup_code, or the sanitized split's test_imports
    code: str  # the reference solution


def _problem(record: dict) -> Problem:
    setup = record.get("test_setup_code") or "\n".join(record.get("test_imports") or ())
    return Problem(int(record["task_id"]), tuple(record["test_list"]), setup, record["code"])


def _text(record: dict) -> str:
    return record.get("text") or record["prompt"]  # the sanitized split calls the statement `prompt`


def _word(spec: TaskSpec, record: dict) -> str:
    return _data.fill(spec.prompt.template, text=_text(record), tests="\n".join(record["test_list"]))


def samples(spec: TaskSpec, data_dir: Path | None = None) -> list[Sample]:
    _data.check_filters(spec, scorers.CODE_FILTERS)
    split = spec.data.split
    if split not in SPLITS:
        raise UserError(f"task '{spec.name}' has no split '{split}'; choose from {', '.join(SPLITS)}")
    records = _data.load(spec, data_dir, spec.data.local, ("prompt", "test", "validation", "train"), FIELDS)
    by_id = {int(r["task_id"]): r for r in records}
    missing = [i for i in spec.params.fewshot_ids[: spec.prompt.shots] if i not in by_id]
    if missing:
        raise UserError(f"task '{spec.name}': few-shot task ids {missing} are not in the data")
    pool = [
        _data.exemplar(spec, _word(spec, by_id[i]), _data.fill(spec.prompt.target_template, code=by_id[i]["code"]))
        for i in spec.params.fewshot_ids
        if i in by_id
    ]
    lo, hi = SPLITS[split]
    docs = sorted((r for r in records if lo <= int(r["task_id"]) <= hi), key=lambda r: int(r["task_id"]))
    picks = _data.fewshot_picks(spec, len(docs), len(pool), same_split=False)
    return [
        Sample(
            id=str(r["task_id"]),
            question=_word(spec, r),
            target="\n".join(r["test_list"]),  # lm-eval's reference: the asserts
            fewshot=tuple(pool[j] for j in pick),
            gen_prefix=spec.prompt.gen_prefix,
            meta=_problem(r),
        )
        for r, pick in zip(docs, picks)
    ]


def code_of(name: str, completion: str) -> str:
    if name == "raw":
        return completion
    if name == "extract_code":
        return scorers.extract_code(completion)
    return scorers.sanitize(scorers.first_python_block(completion))  # dParallel/d3LLM postprocess_code_mbpp.py


def score(spec: TaskSpec, sample: Sample, completion: str) -> Score:
    p: Problem = sample.meta
    codes = {name: code_of(name, completion) for name in spec.scoring.filters}
    return scorers.score_programs(
        codes, lambda code: scorers.mbpp_program(code, p.tests, p.setup), spec.scoring.primary, spec.scoring.limits(sample.id)
    )


def reference(spec: TaskSpec, sample: Sample) -> str:
    return _data.fill(spec.params.reference, code=sample.meta.code)
