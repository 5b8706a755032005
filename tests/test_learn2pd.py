"""Learn2PD (decoders.md §6): the filter, reductions, End-of-Text Prediction, and the `dleval train filter` recipe.

Run: pytest tests/test_learn2pd.py
"""

from __future__ import annotations

import json

import pytest
import torch

from dleval.cli import main
from dleval.decoders import learn2pd, llada
from dleval.models.base import Counted, ForwardOutput, KVCache
from dleval.train import filter as recipe
from tests.conftest import random_llada, write_random_filter

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44]]


def decode(model, prompt, cfg, module=learn2pd):
    counted = Counted(model)
    steps = []
    gen = module.decode(counted, [prompt], cfg, on_step=steps.append)[0]
    return gen, counted, steps


class NoMaskLogits:
    """A random model whose [MASK] logit is -inf, as a trained dLLM's effectively is (so the plain
    argmax of `llada` and the [MASK]-free proposal of `learn2pd` agree)."""

    def __init__(self, model) -> None:
        self.inner = model

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, **kw):
        out = self.inner.forward(ids, **kw)
        out.logits[..., self.inner.mask_id] = float("-inf")
        return out


def test_filter_round_trip(tmp_path):
    path = write_random_filter(tmp_path, 8, seed=3)
    params = learn2pd.load_filter(path)
    assert sorted(params) == sorted(learn2pd.PARAMS)
    assert learn2pd.filter_logits(params, torch.rand(5, 8)).shape == (5, 8)
    assert json.loads(path.with_suffix(".json").read_text())["seed"] == 3


@pytest.mark.parametrize("gen,block,steps", [(16, 8, 16), (16, 16, 16), (16, 8, 6)])
def test_rejecting_filter_without_eotp_equals_llada(tmp_path, gen, block, steps):
    write_random_filter(tmp_path, block, bias=-100.0)  # sigmoid never passes 0.96: only the quota commits (3 or 2 a step when steps=6)
    model = NoMaskLogits(random_llada(seed=5))
    for prompt in PROMPTS:
        cfg = learn2pd.Config(gen_length=gen, block_length=block, steps=steps, eotp=False, filter=str(tmp_path))
        ours, n_ours, _ = decode(model, prompt, cfg)
        base, n_base, _ = decode(model, prompt, llada.Config(gen_length=gen, block_length=block, steps=steps), module=llada)
        assert ours == base and n_ours.nfe == n_base.nfe == steps


def test_accepting_filter_commits_a_block_per_forward(tmp_path):
    write_random_filter(tmp_path, 8, bias=100.0)
    gen, counted, _ = decode(
        random_llada(seed=5), PROMPTS[0], learn2pd.Config(gen_length=24, block_length=8, eotp=False, filter=str(tmp_path))
    )
    assert counted.nfe == 3 and gen.committed_per_step == (8, 8, 8) and 1 not in gen.tokens


class Scripted:
    """Fixed logits per position, optionally a different table per forward (V = 8; 0 = EOS, 1 = mask)."""

    mask_id, eos_id, eot_id, vocab_size = 1, 0, 2, 8
    device = torch.device("cpu")

    def __init__(self, *tables: torch.Tensor) -> None:
        self.tables = tables
        self.calls = 0

    def forward(self, ids, *, start=0, cache=None, attention_mask=None):
        table = self.tables[min(self.calls, len(self.tables) - 1)]
        self.calls += 1
        return ForwardOutput(logits=table[start : start + ids.shape[1]].expand(ids.shape[0], -1, -1).clone(), kv=KVCache([], []))


def table(P: int, L: int, eos: dict[int, float]) -> torch.Tensor:
    """Token 3 wins everywhere with rising confidence, except EOS at the given offsets (logit given)."""
    t = torch.zeros(P + L, 8)
    t[:, 3] = torch.linspace(2.0, 3.0, P + L)
    for offset, logit in eos.items():
        t[P + offset, 0] = logit
    return t


def test_eotp_cuts_after_the_most_confident_masked_eos(tmp_path):
    P, L, B = 2, 16, 8
    write_random_filter(tmp_path, B, bias=-100.0)
    model = Scripted(table(P, L, {5: 4.0, 11: 9.0}))  # two EOS predictions; offset 11 is the more confident
    gen, counted, _ = decode(model, [4, 6], learn2pd.Config(gen_length=L, block_length=B, filter=str(tmp_path)))
    assert len(gen.tokens) == 12 and gen.finish == "eos"
    assert gen.tokens[5] == 0 and gen.tokens[11] == 0 and 1 not in gen.tokens
    assert sum(gen.committed_per_step) == 12 and counted.nfe == 12 == len(gen.committed_per_step)


def test_eotp_cuts_after_the_first_eos_the_filter_accepts(tmp_path):
    P, L, B = 2, 16, 8
    write_random_filter(tmp_path, B, bias=100.0)  # accepts the whole block
    model = Scripted(table(P, L, {3: 4.0, 6: 9.0, 12: 9.5}))
    gen, counted, steps = decode(model, [4, 6], learn2pd.Config(gen_length=L, block_length=B, filter=str(tmp_path)))
    assert gen.tokens == (3, 3, 3, 0) and counted.nfe == 1  # offsets 4-7 were committed, then cut away
    assert gen.committed_per_step == (4,) and steps[0].canvas.shape[1] == P + 4


def test_a_forward_whose_commits_are_all_cut_counts_zero(tmp_path):
    P, L, B = 2, 8, 8
    write_random_filter(tmp_path, B, bias=-100.0)
    first = table(P, L, {})  # forward 1 commits offset 7 (the most confident), no EOS anywhere
    later = table(P, L, {4: 9.0})  # forward 2 predicts EOS at offset 4: the cut drops offset 7
    gen, counted, _ = decode(Scripted(first, later), [4, 6], learn2pd.Config(gen_length=L, block_length=B, filter=str(tmp_path)))
    assert len(gen.tokens) == 5 and gen.committed_per_step[0] == 0
    assert sum(gen.committed_per_step) == 5 and len(gen.committed_per_step) == counted.nfe


def test_missing_or_mismatched_filter_is_a_clear_error(tmp_path):
    model = random_llada()
    with pytest.raises(ValueError, match="pass filter=PATH"):
        learn2pd.decode(model, [PROMPTS[0]], learn2pd.Config(gen_length=16, block_length=8))
    model.folder = tmp_path
    with pytest.raises(ValueError, match="dleval train filter"):
        learn2pd.check(model, learn2pd.Config(gen_length=16, block_length=8))
    write_random_filter(tmp_path, 8)
    learn2pd.check(model, learn2pd.Config(gen_length=16, block_length=8))  # found next to the model
    with pytest.raises(ValueError, match="no Learn2PD filter for block_length 16"):
        learn2pd.check(model, learn2pd.Config(gen_length=16, block_length=16))
    (tmp_path / "other.safetensors").write_bytes(learn2pd.filter_path(tmp_path, 8).read_bytes())
    with pytest.raises(ValueError, match="trained for block_length 8"):
        learn2pd.check(model, learn2pd.Config(gen_length=16, block_length=16, filter=str(tmp_path / "other.safetensors")))


def test_egp_oracle_ends_on_the_reference_and_labels_its_steps():
    model = random_llada(seed=6)
    ref = llada.decode(model, [PROMPTS[0]], llada.Config(gen_length=16, block_length=8))[0]
    confs, labels, tokens = recipe.egp_traces(model, PROMPTS[0], torch.tensor(ref.tokens), 16, 8)
    assert tuple(tokens) == ref.tokens
    assert len(confs) == len(labels) >= 2 and all(c.shape == (8,) and 0 <= c.min() <= c.max() <= 1 for c in confs)
    assert all(set(y.tolist()) <= {0.0, 1.0} for y in labels)


def test_recipe_is_deterministic_and_its_filter_decodes(bundled, tmp_path):
    cfg = recipe.FilterConfig(samples=3, epochs=40, hidden=8, batch_size=2)
    a = recipe.train("tiny", cfg, tmp_path / "a", log=lambda m: None)
    b = recipe.train("tiny", cfg, tmp_path / "b", log=lambda m: None)
    wa, wb = learn2pd.load_filter(a["path"]), learn2pd.load_filter(b["path"])
    assert all(torch.equal(wa[k], wb[k]) for k in learn2pd.PARAMS)
    assert a["config"]["block_length"] == 40 and a["oracle_steps"] > 0 and "test" in a["metrics"] or "val" in a["metrics"]
    gen = learn2pd.decode(bundled.model, [[0, 5, 7]], learn2pd.Config(gen_length=40, block_length=40, filter=str(tmp_path / "a")))[0]
    assert 0 < len(gen.tokens) <= 40 and bundled.model.mask_id not in gen.tokens


def test_cli_train_filter_and_run(tmp_path, capsys):
    out = tmp_path / "filter"
    assert main(["train", "filter", "--model", "tiny", "--out", str(out), "-O", "samples=2", "-O", "epochs=5"]) == 0
    assert learn2pd.filter_path(out, 40).is_file()
    assert "trained the Learn2PD filter" in capsys.readouterr().out
    args = ["run", "--decoder", "learn2pd", "--task", "synth_gsm", "--limit", "2", "--no-progress", "--out", str(tmp_path / "runs")]
    assert main([*args, "-D", f"filter={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (a line before it says which model was chosen)
    assert err.startswith("dleval: error: decoder 'learn2pd': no Learn2PD filter") and "Traceback" not in err
    assert main([*args, "-D", f"filter={out}"]) == 0
    assert main(["train", "filter", "--model", "tiny", "-O", "sample=2"]) == 2


@pytest.mark.parametrize("score_dtype", ["logits", "float64"])
def test_thin_step_whole_and_cut_blocks_equal_the_batched_step(bundled, score_dtype, monkeypatch):
    """`_step_one` feeds the filter the block's slice itself when the block is whole and a
    zero-padded copy after an EoTP cut inside it: both inputs occur here (float32 scores: the
    slice shares the scores' storage, the padded copy owns exactly B floats; one-row calls only),
    and the tokens
    equal the batched `_step`'s (rows decoded together) for both score dtypes."""
    from test_batched import check_batch_equals_batch_one, synth_gsm

    B, sizes, filter_logits = 40, [], learn2pd.filter_logits
    monkeypatch.setattr(
        learn2pd,
        "filter_logits",
        lambda params, c: (len(c) == 1 and sizes.append(c.untyped_storage().nbytes())) or filter_logits(params, c),
    )
    cfg = learn2pd.Config(gen_length=120, block_length=B, score_dtype=score_dtype)
    problems = synth_gsm(bundled.tokenizer)
    check_batch_equals_batch_one(bundled.model, problems, learn2pd, cfg)
    if score_dtype == "logits":
        assert B * 4 in sizes and any(s > B * 4 for s in sizes)
