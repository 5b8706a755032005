"""Task specs: the declarative files in top-level `tasks/` and the code that turns them into Samples.

A spec (`tasks/<name>.toml`) is data only: which loader builds the samples, where the data comes
from (hub id + pinned revision, or a file under a data dir), the prompt wording and style, stop
strings, scoring filters, generation-length hints and the paper it reproduces. The loader is a
module `dleval/tasks/<loader>.py` exporting `samples(spec, data_dir)` and
`score(spec, sample, completion)`, optionally `reference(spec, sample)` (the completion an ideal
model would write, for `validate`) and a `Config` dataclass of its own parameters (the spec's
`[params]` table). `-T key=value` overrides any field of any section by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dleval import executor, options
from dleval.errors import UserError, did_you_mean, unknown
from dleval.prompts import STYLES
from dleval.scorers import GSM8K_STRICT, cut_at_stops
from dleval.types import Sample, Score


@dataclass(frozen=True)
class DataSpec:
    split: str = "test"
    hub: str = ""  # Hugging Face dataset id
    hub_config: str = ""
    revision: str = ""  # pinned dataset revision
    local: str = ""  # file under --data-dir / DLEVAL_DATA_DIR; "{split}" is replaced by the split
    fewshot_split: str = ""
    fewshot_local: str = ""
    fewshot_file: str = ""  # exemplars shipped beside the specs (tasks/<file>: JSON list of {question, answer})


@dataclass(frozen=True)
class PromptSpec:
    style: str = "chat"  # raw | chat (one user turn) | chat_multiturn (few-shot as turns)
    template: str = "{question}"  # lm-eval doc_to_text, filled by the loader
    target_template: str = "{answer}"  # a few-shot exemplar's answer
    target_delimiter: str = " "  # lm-eval default, between question and answer
    fewshot_delimiter: str = "\n\n"  # lm-eval default, after each exemplar
    gen_prefix: str = ""  # text that starts the assistant turn
    shots: int = 0
    fewshot_sampler: str = "first_n"  # first_n | random (lm-eval default sampler)
    fewshot_seed: int = 1234  # lm-eval fewshot_random_seed
    stop: tuple[str, ...] = ()  # cut after decoding (lm-eval `until`)
    system: str = ""  # optional system message for chat styles
    # Prepend the tokenizer's BOS to the prompt ids: Dream Base evaluations (DreamLM/Dream
    # eval/eval_dream_gen.sh, Fast-dLLM dream/eval_gsm8k.sh: add_bos_token=true; -T bos=true).
    # Dream's escape_until=true (no stop-string cut) is -T stop= (empty).
    bos: bool = False

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not '{self.style}'")
        if self.shots < 0:
            raise ValueError("shots must be >= 0")


@dataclass(frozen=True)
class ScoringSpec:
    scorer: str = "gsm8k"
    filters: tuple[str, ...] = ("strict-match", "flexible-extract")
    primary: str = "strict-match"  # the filter whose value is `correct`
    strict_pattern: str = GSM8K_STRICT
    timeout: float = 10.0  # seconds per program (code tasks)
    timeout_overrides: tuple[str, ...] = ()  # "sample_id=seconds" for known slow references

    def __post_init__(self) -> None:
        if self.primary not in self.filters:
            raise ValueError(f"primary filter '{self.primary}' is not among filters {list(self.filters)}")
        for item in self.timeout_overrides:
            key, sep, value = item.rpartition("=")
            try:
                ok = bool(sep and key) and float(value) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"timeout_overrides entries look like 'sample_id=seconds', not '{item}'")

    def limits(self, sample_id: str) -> executor.Limits:
        """Sandbox limits for one program: the task timeout, or the sample's override."""
        overrides = {key: float(value) for key, _, value in (item.rpartition("=") for item in self.timeout_overrides)}
        return executor.Limits(timeout=overrides.get(sample_id, self.timeout))


@dataclass(frozen=True)
class GenerationHints:
    """Decoder defaults this task asks for (e.g. a short gen_length); -D still wins."""

    gen_length: int | None = None
    block_length: int | None = None
    answer_prefix: str | None = None  # Prophet's forced answer prefix ("offset:word|..."), where the answer format is fixed
    answer_start: int | None = None  # Prophet's exit window: first generation offset (where the answer itself sits)
    answer_length: int | None = None  # Prophet's exit window: how many positions


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    source: str
    loader: str
    data: DataSpec = DataSpec()
    prompt: PromptSpec = PromptSpec()
    scoring: ScoringSpec = ScoringSpec()
    generation: GenerationHints = GenerationHints()
    params: Any = None  # the loader's Config instance, or None
    path: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        return out


SECTIONS = {"data": DataSpec, "prompt": PromptSpec, "scoring": ScoringSpec, "generation": GenerationHints}
TOP = ("description", "source", "loader")


def specs_dir() -> Path:
    """Where the spec files are: $DLEVAL_TASKS_DIR, the wheel's copy, or the checkout's tasks/."""
    env = os.environ.get("DLEVAL_TASKS_DIR")
    if env:
        return Path(env)
    installed = Path(__file__).resolve().parent.parent / "task_specs"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "tasks"


def list_tasks() -> list[str]:
    return sorted(p.stem for p in specs_dir().glob("*.toml"))


def loader_module(name: str) -> ModuleType:
    if name.startswith("_"):
        raise UserError(f"'{name}' is not a task loader")
    try:
        return importlib.import_module(f"dleval.tasks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"dleval.tasks.{name}":
            raise UserError(f"task loader '{name}' does not exist (no dleval/tasks/{name}.py)") from None
        raise


def load_task(name: str, overrides: dict[str, Any] | None = None) -> TaskSpec:
    """Read tasks/<name>.toml, apply -T overrides, validate every key."""
    path = specs_dir() / f"{name}.toml"
    if not path.is_file():
        raise unknown("task", name, list_tasks())
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"task spec {path} is not valid TOML: {exc}") from None
    return build_spec(name, raw, overrides or {}, str(path))


def build_spec(name: str, raw: dict[str, Any], overrides: dict[str, Any], path: str = "") -> TaskSpec:
    allowed = set(TOP) | set(SECTIONS) | {"params"}
    for key in raw:
        if key not in allowed:
            raise UserError(f"task spec '{name}' has an unknown key '{key}'{did_you_mean(key, allowed)}")
    for key in TOP:
        if not isinstance(raw.get(key), str):
            raise UserError(f"task spec '{name}' needs a string '{key}'")
    module = loader_module(raw["loader"])
    params_cls = getattr(module, "Config", None)
    # Route each -T key to the section (or the loader's params) that has a field of that name.
    routed: dict[str, dict[str, Any]] = {s: {} for s in [*SECTIONS, "params"]}
    owners = {f: s for s, cls in SECTIONS.items() for f in options.field_names(cls)}
    if params_cls is not None:
        owners.update({f: "params" for f in options.field_names(params_cls)})
    for key, value in overrides.items():
        if key not in owners:
            raise UserError(f"task '{name}' has no parameter '{key}'{did_you_mean(key, owners)}; it takes: {', '.join(sorted(owners))}")
        routed[owners[key]][key] = value
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = dict(raw.get(section, {}))
        table.update(routed[section])
        built[section] = options.build(cls, table, f"task '{name}' [{section}]")
    params = None
    if params_cls is not None:
        table = dict(raw.get("params", {}))
        table.update(routed["params"])
        params = options.build(params_cls, table, f"task '{name}' [params]")
    elif raw.get("params"):
        raise UserError(f"task spec '{name}' has [params] but loader '{raw['loader']}' takes none")
    return TaskSpec(
        name=name, description=raw["description"], source=raw["source"], loader=raw["loader"], params=params, path=path, **built
    )


def load_samples(spec: TaskSpec, data_dir: Path | None = None) -> list[Sample]:
    return loader_module(spec.loader).samples(spec, data_dir)


def score(spec: TaskSpec, sample: Sample, completion: str) -> Score:
    return loader_module(spec.loader).score(spec, sample, completion)


def gsm8k_score(spec: TaskSpec, target: str, completion: str) -> Score:
    """Score a completion against a GSM8K-form reference with the spec's filters."""
    from dleval.scorers import exact_match, gsm8k_extract

    answers = gsm8k_extract(completion, spec.scoring.filters, spec.scoring.strict_pattern)
    metrics = {f: float(exact_match(a, target)) for f, a in answers.items()}
    primary = spec.scoring.primary
    return Score(correct=metrics[primary], answer=answers[primary], metrics=metrics, answers=answers)


def reference(spec: TaskSpec, sample: Sample) -> str:
    module = loader_module(spec.loader)
    if not hasattr(module, "reference"):
        raise UserError(f"task '{spec.name}' has no reference answers to validate")
    return module.reference(spec, sample)


@dataclass(frozen=True)
class Validation:
    """`validate`'s outcome: how many reference completions pass under each filter."""

    task: str
    n: int
    primary: str
    passed: dict[str, int]  # filter -> reference completions that score 1
    failures: tuple[tuple[str, str], ...]  # (sample id, why) under the primary filter
    seconds: float
    workers: int

    @property
    def ok(self) -> bool:
        return self.passed.get(self.primary, 0) == self.n


def validate(spec: TaskSpec, samples: list[Sample], workers: int | None = None) -> Validation:
    """Score each sample's reference completion, cut at the stop strings as a generation would be,
    with the task's own scorer (code runs in the sandbox, `workers` programs at a time)."""
    workers = workers or executor.default_workers()

    def one(sample: Sample) -> Score:
        completion = cut_at_stops(reference(spec, sample), spec.prompt.stop)
        try:
            return score(spec, sample, completion)
        except Exception as exc:  # a scorer bug is a failed sample, reported like the others
            return Score(correct=0.0, answer="", detail=f"scoring failed: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scores = list(pool.map(one, samples))
    seconds = time.perf_counter() - start
    primary = spec.scoring.primary
    passed = {f: sum(int(s.metrics.get(f, 0.0) == 1.0) for s in scores) for f in spec.scoring.filters}
    failures = tuple((smp.id, sc.detail or f"answered {sc.answer!r}") for smp, sc in zip(samples, scores) if sc.metrics.get(primary) != 1.0)
    return Validation(spec.name, len(samples), primary, passed, failures, seconds, workers)
