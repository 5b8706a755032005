"""Scores in the reference's dtype (issue 10): LLaDA, Prophet and Learn2PD take the confidence
softmax (and Prophet its logit gaps) in the logits' dtype, as their code's `F.softmax(logits)`
does; Fast-dLLM and dParallel take it in float64, as theirs does. bf16 runs on the CPU.

Run: pytest tests/test_score_dtype.py
"""

from __future__ import annotations

import pytest
import torch

from dleval.decoders import _parts, dparallel, fastdllm, learn2pd, llada, prophet
from dleval.models.base import Counted
from tests.conftest import random_llada, write_random_filter
from tests.recording import FixedLogits, Recording

P, L, V = 2, 4, 8
TOKEN = 5  # the argmax of every position


def _next_bf16(v: torch.Tensor) -> torch.Tensor:
    return (v.view(torch.int16) + 1).view(torch.bfloat16)


def _tied_pair() -> tuple[float, float]:
    """Two bf16 logits a < b whose confidences (b's row: b at TOKEN, 0 elsewhere) differ in
    float64 but round to the same bf16 value."""
    a = torch.tensor(2.0, dtype=torch.bfloat16)
    for _ in range(200):
        b = _next_bf16(a)
        rows = torch.zeros(2, V, dtype=torch.bfloat16)
        rows[:, TOKEN] = torch.stack([a, b])
        low = torch.softmax(rows, dim=-1)[:, TOKEN]
        high = torch.softmax(rows.double(), dim=-1)[:, TOKEN]
        if low[0] == low[1] and high[0] < high[1]:
            return float(a), float(b)
        a = b
    raise AssertionError("no bf16 confidence tie found")


def tie_table() -> torch.Tensor:
    """(P+L, V) bf16 logits: generation offsets 0 and 1 tie in bf16 confidence (offset 1 is
    higher in float64), offsets 2 and 3 are far less confident."""
    a, b = _tied_pair()
    table = torch.zeros(P + L, V, dtype=torch.bfloat16)
    table[:, TOKEN] = 0.5
    table[P, TOKEN], table[P + 1, TOKEN] = a, b
    return table


def first_commit(module, cfg) -> int:
    steps = []
    module.decode(FixedLogits(tie_table()), [[4] * P], cfg, on_step=steps.append)
    return int(steps[0].committed[0].nonzero()[0]) - P


@pytest.mark.parametrize(
    "module,cfg",
    [
        (llada, llada.Config(gen_length=L, block_length=L)),
        (prophet, prophet.Config(gen_length=L, block_length=L, answer_prefix="")),
    ],
)
def test_reference_dtype_ties_break_by_position_float64_does_not(module, cfg):
    """One commit per forward: in bf16 (the default, as the reference) offsets 0 and 1 tie and
    the earlier wins; in float64 offset 1 is more confident."""
    assert first_commit(module, cfg) == 0
    assert first_commit(module, type(cfg)(**{**cfg.__dict__, "score_dtype": "float64"})) == 1


def test_learn2pd_quota_and_filter_input_in_the_logits_dtype(tmp_path):
    path = write_random_filter(tmp_path, L, bias=-100.0)  # accepts nothing: only the quota commits
    cfg = learn2pd.Config(gen_length=L, block_length=L, filter=str(path))
    assert first_commit(learn2pd, cfg) == 0
    assert first_commit(learn2pd, learn2pd.Config(**{**cfg.__dict__, "score_dtype": "float64"})) == 1


@pytest.mark.parametrize(
    "module,cfg",
    [
        (fastdllm, fastdllm.Config(gen_length=L, block_length=L, threshold=None, cache="none")),
        (dparallel, dparallel.Config(gen_length=L, block_length=L, threshold=0.0)),
    ],
)
def test_float64_references_stay_float64(module, cfg):
    """Fast-dLLM and dParallel take the softmax in float64 (their get_transfer_index*)."""
    assert first_commit(module, cfg) == 1


class Encoding(FixedLogits):
    def encode(self, text: str) -> list[int]:
        return [3]


@pytest.mark.parametrize("score_dtype,nfe", [("logits", 1), ("float64", 2)])
def test_prophet_gap_is_subtracted_in_the_logits_dtype(score_dtype, nfe):
    """top1 - top2 = 8 - 0.5078125 = 7.4921875 exactly, which bf16 rounds to 7.5: the reference
    (bf16 subtraction) exits at the first forward against the early threshold 7.5; in float64 the
    gap is below it until the mid threshold (5.0) applies at the second forward (2/6 >= 0.33)."""
    G = 6
    table = torch.zeros(P + G, V, dtype=torch.bfloat16)
    table[:, TOKEN] = 1.0
    table[P + 2, TOKEN], table[P + 2, 6] = 8.0, 0.5078125  # the window: offset 0 + 2 ("0:The" encodes to one token)
    cfg = prophet.Config(gen_length=G, block_length=G, answer_prefix="0:The", answer_length=1, score_dtype=score_dtype)
    counted = Counted(Encoding(table))
    (gen,) = prophet.decode(counted, [[4] * P], cfg)
    assert counted.nfe == nfe and gen.finish == "early_exit"


def test_bf16_model_commits_by_bf16_confidence():
    """Parity on a real (random) model in bf16: every LLaDA commit is the most confident masked
    position of the block by `F.softmax(logits)` in bf16, ties to the earlier position."""
    model = Recording(random_llada().to(torch.bfloat16))
    prompt, B = [5, 9, 12, 7, 30], 8
    steps = []
    llada.decode(model, [prompt], llada.Config(gen_length=32, block_length=B), on_step=steps.append)
    n = len(prompt)
    canvas = torch.tensor([prompt + [1] * 32])
    for i, (call, step) in enumerate(zip(model.calls, steps)):
        assert call.logits.dtype == torch.bfloat16
        s = n + (i // B) * B
        logits = call.logits[0, s : s + B]  # (B, V)
        conf = torch.softmax(logits, dim=-1).gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)
        conf = torch.where(canvas[0, s : s + B] == 1, conf, torch.full_like(conf, -torch.inf))
        best = int((conf == conf.max()).nonzero()[0])  # first of the maxima
        assert step.committed[0].nonzero().flatten().tolist() == [s + best]
        canvas = step.canvas


def test_bf16_changes_tokens_on_a_random_model():
    """The dtype matters: on the bf16 random model the reference dtype and float64 disagree."""
    model = random_llada().to(torch.bfloat16)
    cfg = llada.Config(gen_length=32, block_length=8)
    f64 = llada.Config(gen_length=32, block_length=8, score_dtype="float64")
    prompts = [[5 + k, 9, 12, 7, 30] for k in range(6)]
    assert any(llada.decode(model, [p], cfg) != llada.decode(model, [p], f64) for p in prompts)


def test_score_dtype_is_validated():
    with pytest.raises(ValueError, match="score_dtype must be one of logits, float64"):
        llada.Config(score_dtype="float16")
    assert _parts.check_score_dtype("logits") is None
