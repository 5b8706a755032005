"""GSM8K (Cobbe et al. 2021, arXiv 2110.14168): grade-school math word problems, 1,319 test.

Specs: `gsm8k` (lm-eval 5-shot, exemplars drawn at random from train), `gsm8k_cot` (lm-eval 8
fixed chain-of-thought exemplars), `gsm8k_cot_zeroshot` ("Let's think step by step.") and
`gsm8k_dparallel` (dParallel's 0-shot chat prompt asking for `\\boxed{}`). Prompts and filters
follow lm-evaluation-harness v0.4.8/0.4.9 gsm8k*.yaml (v3.0) and czg1225/dParallel@2ca4d14
`LLaDA/eval_llada.py`; tasks.md §1.2-1.3, §2.2. Filters: strict-match, flexible-extract, boxed.

Data: `<data dir>/gsm8k/{test,train}.jsonl` (byte copies of openai/grade-school-math), else
`openai/gsm8k` (config main) on the hub at the spec's pinned revision. Sample ids are
`<split>/<index>`; the target is the full reference answer (exact match strips all but the
number after `#### `).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dleval.tasks import _data
from dleval.types import Sample, Score

if TYPE_CHECKING:
    from dleval.tasks import TaskSpec

FILTERS = ("strict-match", "flexible-extract", "boxed")
FIELDS = ("question", "answer")  # what every record must have


@dataclass(frozen=True)
class Config:
    # What a perfect completion looks like in this variant's answer form: what `dleval validate`
    # scores. {rationale} is the reference solution without its last line, {number} the answer.
    reference: str = "{rationale}\n#### {number}"


def _pool(spec: TaskSpec, data_dir: Path | None) -> list[tuple[str, str]]:
    if spec.prompt.shots == 0:
        return []
    if spec.data.fewshot_file:
        from dleval.tasks import specs_dir

        records = json.loads((specs_dir() / spec.data.fewshot_file).read_text(encoding="utf-8"))
    else:
        split = spec.data.fewshot_split
        records = _data.load(spec, data_dir, spec.data.fewshot_local.replace("{split}", split), (split,), FIELDS)
    return [
        _data.exemplar(
            spec, _data.fill(spec.prompt.template, question=r["question"]), _data.fill(spec.prompt.target_template, answer=r["answer"])
        )
        for r in records
    ]


def samples(spec: TaskSpec, data_dir: Path | None = None) -> list[Sample]:
    _data.check_filters(spec, FILTERS)
    split = spec.data.split
    docs = _data.load(spec, data_dir, spec.data.local.replace("{split}", split), (split,), FIELDS)
    pool = _pool(spec, data_dir)
    same = not spec.data.fewshot_file and spec.data.fewshot_split == split
    picks = _data.fewshot_picks(spec, len(docs), len(pool), same)
    return [
        Sample(
            id=f"{split}/{i}",
            question=_data.fill(spec.prompt.template, question=doc["question"]),
            target=doc["answer"],
            fewshot=tuple(pool[j] for j in picks[i]),
            gen_prefix=spec.prompt.gen_prefix,
        )
        for i, doc in enumerate(docs)
    ]


def score(spec: TaskSpec, sample: Sample, completion: str) -> Score:
    from dleval.tasks import gsm8k_score

    return gsm8k_score(spec, sample.target, completion)


def reference(spec: TaskSpec, sample: Sample) -> str:
    rationale, _, number = sample.target.rpartition("\n#### ")
    return _data.fill(spec.params.reference, rationale=rationale, number=number.strip())
