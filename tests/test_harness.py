"""The lm-eval adapter: `dleval` registered as an lm-eval model, tested against a fake lm_eval
(fast, no lm-eval install needed; tests/test_lm_eval.py runs the real package).

Run: pytest tests/test_harness.py
"""

from __future__ import annotations

import hashlib
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

        rank = property(lambda self: self._rank)
        world_size = property(lambda self: self._world_size)

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

    with pytest.raises(UserError, match=r"no key 'treshold' \(did you mean 'threshold'\?\)"):
        harness.Generator(decoder="dparallel", model="tiny", device="cpu", treshold=0.5)
    with pytest.raises(UserError, match="steps='many' is not a valid int"):
        harness.Generator(decoder="llada", model="tiny", device="cpu", steps="many")


def test_bad_model_args_key_suggests_the_adapters_own_keys():
    from dleval.errors import UserError

    with pytest.raises(UserError, match=r"no key 'modle' \(did you mean 'model'\?\)"):
        harness.Generator(decoder="llada", modle="tiny", device="cpu")


def test_pre_filled_assistant_turn_is_continued_on_the_real_chat_template(bundled):
    """lm-eval hands a history ending in the assistant's gen_prefix (mbpp_instruct: ```python);
    the bundled model's tokenizer carries a real Llama-3-style chat template."""
    gen = harness.Generator.__new__(harness.Generator)
    gen.loaded = bundled
    history = [{"role": "user", "content": "Write a function."}, {"role": "assistant", "content": "```python\n"}]
    closed = bundled.tokenizer.apply_chat_template(history, add_generation_prompt=False, tokenize=False)
    assert closed.endswith("```python\n<|eot_id|>")  # what the adapter rendered before: a closed turn
    rendered = gen.chat(history, add_generation_prompt=False)
    assert rendered == closed.removesuffix("<|eot_id|>")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n```python\n")
    # No pre-filled turn: the generation prompt opens the assistant's turn, as before.
    question = [{"role": "user", "content": "2+2?"}]
    assert gen.chat(question) == chat_prompt("2+2?")


def test_speed_log_gets_one_file_per_rank(tmp_path):
    from dleval.ranks import Ranks

    assert harness.rank_file(tmp_path / "speed.jsonl", Ranks()) == tmp_path / "speed.jsonl"
    assert harness.rank_file(tmp_path / "speed.jsonl", Ranks(1, 2, 1, "torchrun")) == tmp_path / "speed.rank-1-of-2.jsonl"


def _requests(n: int) -> list[Request]:
    """n synth_gsm chat prompts of different lengths, each cut at its own `until`."""
    return [Request((chat_prompt(synth_gsm.problem("test", i).question), {"until": ["####"] if i % 2 else []})) for i in range(n)]


@pytest.mark.parametrize("args", [{"decoder": "fastdllm"}, {"decoder": "fastdllm", "temperature": 0.7}], ids=["T0", "T0.7"])
def test_batch_size_decodes_batches_with_batch_one_outputs_and_nfe(fake_lm_eval, tmp_path, args):
    """`--batch_size 3` over 5 requests: batches of 3 and 2, longest prompt first; every request gets
    its batch-1 completion and NFE (at T > 0 too: its noise is seeded by the prompt), in request order."""
    cls = harness.register()
    requests = _requests(5)
    logs, outs = {}, {}
    for size in (1, 3):
        logs[size] = tmp_path / f"speed{size}.jsonl"
        lm = cls(model="tiny", speed_log=str(logs[size]), gen_length=32, block_length=8, cache="none", batch_size=str(size), device="cpu", **args)
        assert lm.batch_size == size
        outs[size] = lm.generate_until(requests)
    assert outs[3] == outs[1] and len(set(outs[1])) > 1
    rows = {size: [json.loads(line) for line in logs[size].read_text().splitlines()] for size in (1, 3)}
    nfe = {size: {r["prompt_hash"]: r["nfe"] for r in rows[size]} for size in (1, 3)}
    assert nfe[3] == nfe[1] and len(nfe[1]) == 5 and len(set(nfe[1].values())) > 1  # rows that finish early leave
    assert [r["batch_size"] for r in rows[3]] == [3, 3, 3, 2, 2] and {r["batch_size"] for r in rows[1]} == {1}
    longest = sorted(range(5), key=lambda i: -len(requests[i].args[0]))[:3]
    first = {hashlib.sha256(requests[i].args[0].encode()).hexdigest() for i in longest}
    assert {r["prompt_hash"] for r in rows[3][:3]} == first  # the three longest prompts made the first batch


def test_batch_size_falls_back_to_one_for_decoders_that_do_not_batch(fake_lm_eval, capsys):
    lm = harness.register()(decoder="klass", model="tiny", gen_length=16, block_length=16, batch_size=4, device="cpu")
    assert lm.batch_size == 1
    assert "decoder 'klass' decodes one prompt at a time; running with batch size 1" in capsys.readouterr().err


def test_batch_size_values():
    from dleval.errors import UserError

    assert [harness.batch_size_of(v) for v in (None, 1, "8", " 2 ", "auto", "auto:4")] == [1, 1, 8, 2, 1, 1]
    for bad, why in (("0", "positive integer, got 0"), ("many", "positive integer or 'auto', got 'many'"), (-3, "got -3")):
        with pytest.raises(UserError, match=why):
            harness.batch_size_of(bad)
    with pytest.raises(UserError, match="seed must be an integer"):
        harness.Generator(decoder="llada", model="tiny", device="cpu", seed="x")
