"""The lm-eval adapter: `dleval` registered as an lm-eval model, tested against a fake lm_eval.

Run: pytest tests/test_harness.py
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest

from dleval import harness
from dleval.tasks import synth_gsm
from dleval.train.tiny import chat_prompt


@pytest.fixture
def fake_lm_eval(monkeypatch):
    """The two lm-eval APIs the adapter touches: the LM base class and register_model."""
    registry: dict[str, type] = {}

    class LM:
        def __init__(self) -> None:
            self._rank, self._world_size = 0, 1

    def register_model(*names):
        def decorate(cls):
            for name in names:
                registry[name] = cls
            return cls

        return decorate

    root, api = types.ModuleType("lm_eval"), types.ModuleType("lm_eval.api")
    model_mod, reg_mod = types.ModuleType("lm_eval.api.model"), types.ModuleType("lm_eval.api.registry")
    model_mod.LM, reg_mod.register_model = LM, register_model
    for name, mod in {"lm_eval": root, "lm_eval.api": api, "lm_eval.api.model": model_mod, "lm_eval.api.registry": reg_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return registry


@dataclass
class Request:
    args: tuple


def test_registered_model_generates_until_and_logs_speed(fake_lm_eval, tmp_path):
    cls = harness.register()
    assert fake_lm_eval["dleval"] is cls
    log = tmp_path / "speed.jsonl"
    lm = cls(decoder="vanilla", model="tiny", speed_log=str(log), gen_length=32, block_length=32, batch_size=1, device="cpu")
    problem = synth_gsm.problem("test", 0)
    context = chat_prompt(problem.question)
    full, cut = lm.generate_until([Request((context, {"until": []})), Request((context, {"until": ["####"], "max_gen_toks": 5}))])
    assert full and cut == (full[: full.index("####")] if "####" in full else full)  # cut at `until`
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["nfe"] for r in rows] == [32, 32] and rows[1]["answer_tokens"] < rows[0]["answer_tokens"]
    assert lm.apply_chat_template([{"role": "user", "content": problem.question}]) == context
    with pytest.raises(NotImplementedError, match="generation tasks"):
        lm.loglikelihood([])


def test_bad_decoder_argument_is_a_user_error():
    from dleval.errors import UserError

    with pytest.raises(UserError, match="did you mean 'threshold'|has no parameter"):
        harness.Generator(decoder="llada", model="tiny", device="cpu", treshold=0.5)
