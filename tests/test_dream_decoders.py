"""Dream's own sampler (`dream` decoder) and the Dream-specific branch of `fastdllm`.

Run: pytest tests/test_dream_decoders.py
"""

from __future__ import annotations

import pytest
import torch

from dleval.decoders import dream, fastdllm
from dleval.models.base import Counted
from tests.conftest import random_dream, random_llada

PROMPT = [5, 9, 12, 7, 30]


def decode(module, cfg, prompts=(PROMPT,), model=None, **kw):
    counted = Counted(model or random_dream())
    gens = module.decode(counted, [list(p) for p in prompts], cfg, **kw)
    return gens, counted.nfe


def reference_schedule(n: int, steps: int, eps: float = 1e-3) -> list[int]:
    """DreamGenerationMixin._sample's per-step count: int(n_masked (1 - s/t)), all at the last step."""
    t = torch.linspace(1, eps, steps + 1)
    left, out = n, []
    for i in range(steps):
        k = int(left * (1 - t[i + 1] / t[i])) if i < steps - 1 else left
        out.append(k)
        left -= k
    return out


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_confidence_algs_follow_the_reference_schedule(alg):
    (g,), nfe = decode(dream, dream.Config(gen_length=24, steps=8, alg=alg))
    assert nfe == 8 and list(g.committed_per_step) == reference_schedule(24, 8)
    assert 1 not in g.tokens


def test_entropy_picks_the_lowest_entropy_positions():
    model = random_dream()
    x = torch.tensor([PROMPT + [1] * 8])
    logits = model.forward(x).logits[0, 5:]
    probs = torch.softmax(logits, -1)  # top_p=None: no filtering
    neg_entropy = (probs * torch.log(probs + 1e-10)).sum(-1)
    steps = []
    dream.decode(Counted(model), [PROMPT], dream.Config(gen_length=8, steps=4, alg="entropy", top_p=None), on_step=steps.append)
    first = steps[0].committed[0, 5:]
    k = int(first.sum())
    assert k == reference_schedule(8, 4)[0] and k >= 1
    assert set(first.nonzero().flatten().tolist()) == set(torch.topk(neg_entropy, k).indices.tolist())


def test_origin_and_sampling_are_reproducible_with_seeds_and_row_independent():
    cfg = dream.Config(gen_length=16, steps=8, alg="origin", temperature=0.5, top_p=0.9)
    prompts = [PROMPT, [8, 3, 44]]
    a, _ = decode(dream, cfg, prompts, seeds=[1, 2])
    b, _ = decode(dream, cfg, prompts, seeds=[1, 2])
    alone, _ = decode(dream, cfg, prompts[1:], seeds=[2])
    assert a == b and a[1] == alone[0]
    c, _ = decode(dream, cfg, prompts, seeds=[1, 3])
    assert c[0] == a[0]
    assert all(1 not in g.tokens for g in a)
    with pytest.raises(ValueError, match="one seed per prompt"):
        decode(dream, cfg, prompts, seeds=[1])


def test_alg_temp_samples_positions():
    cfg = dream.Config(gen_length=16, steps=4, alg="maskgit_plus", alg_temp=0.5)
    (g,), nfe = decode(dream, cfg, seeds=[0])
    assert nfe == 4 and sum(g.committed_per_step) == 16


def test_filters_match_the_reference_definitions():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    low = torch.finfo(torch.float32).min
    kept = dream.filter_logits(logits, dream.Config(top_p=0.7, temperature=0.0))
    assert (kept[0, :2] == logits[0, :2]).all() and (kept[0, 2:] == low).all()  # p = .64, .24: the second crosses 0.7
    kept = dream.filter_logits(logits, dream.Config(top_p=None, top_k=1, temperature=0.0))
    assert kept[0, 0] == 3.0 and (kept[0, 1:] == low).all()


def greedy_matches_reference(logits, cfg, mask_id=1):
    """The sort-free greedy nucleus equals the reference's sort-based path bit for bit."""
    want_conf, want_tok = dream._sample_tokens(logits.clone(), cfg, mask_id, None)
    rows, hard_conf, token = dream._greedy_nucleus(logits.clone(), cfg, mask_id)
    conf = torch.full((len(logits),), dream._one_hot_conf(cfg.alg, logits.dtype), dtype=logits.dtype)
    if rows is not None:
        conf.index_copy_(0, rows, hard_conf)
    tok = torch.stack([token(j) for j in range(len(logits))])
    assert torch.equal(tok, want_tok)
    assert conf.numpy().tobytes() == want_conf.numpy().tobytes()  # bytes: -0.0 and NaN included


@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
@pytest.mark.parametrize("top_p", [0.9, 0.95, 0.5])
def test_greedy_nucleus_equals_the_sorting_filter(alg, top_p):
    gen = torch.Generator().manual_seed(0)
    V = 348  # the tiny models' vocabulary
    rows = [torch.randn(64, V, generator=gen) * scale for scale in (0.01, 1.0, 3.0, 6.0, 12.0)]
    rows.append(torch.randn(64, V, generator=gen).round())  # many equal logits
    peaked = torch.randn(V, V, generator=gen)
    peaked[torch.arange(V), torch.arange(V)] = 30.0  # a one-token nucleus at every vocabulary position
    rows.append(peaked)
    cfg = dream.Config(alg=alg, top_p=top_p)
    for logits in rows:
        greedy_matches_reference(logits, cfg)
    greedy_matches_reference(rows[2].double(), cfg)  # float64 logits: a one-token nucleus's entropy is ~1e-10 there


def nucleus(probs: list[float], V: int = 12) -> torch.Tensor:
    """One row of logits with these leading probabilities, the rest spread evenly."""
    rest = (1 - sum(probs)) / (V - len(probs))
    return torch.tensor([probs + [rest] * (V - len(probs))], dtype=torch.float64).log().float()


@pytest.mark.parametrize(
    "probs",
    [
        [0.9 + 1e-6, 0.05],  # p_top inside the rounding band (3.1e-6 at V = 12) above top_p: not decided without the sort
        [0.9 - 1e-6, 0.05],  # the same below it
        [0.6, 0.3 + 1e-6, 0.05],  # the cumulative mass at the second token inside the band
        [0.85, 0.06, 0.06],  # equal logits straddle the nucleus boundary
        [1.0 / 40] * 36,  # a flat distribution: the nucleus is longer than the topk read (16)
    ],
)
def test_greedy_nucleus_falls_back_to_the_sort(monkeypatch, probs):
    V = 40 if len(probs) > 12 else 12
    logits = torch.cat([nucleus(probs, V), nucleus([0.99], V)])  # a decidable row alongside
    calls = []
    sort_filter = dream.filter_logits
    monkeypatch.setattr(dream, "filter_logits", lambda lg, cfg: calls.append(len(lg)) or sort_filter(lg, cfg))
    greedy_matches_reference(logits, dream.Config(top_p=0.9))
    assert calls == [2, 1]  # the reference sorted both rows; the greedy path only the undecidable one


def test_greedy_nucleus_decides_clear_rows_without_the_sort(monkeypatch):
    logits = torch.cat([nucleus([0.95]), nucleus([0.6, 0.25, 0.1]), nucleus([0.5, 0.3, 0.15])])
    calls = []
    monkeypatch.setattr(dream, "filter_logits", lambda lg, cfg: calls.append(len(lg)))
    rows, conf, token = dream._greedy_nucleus(logits, dream.Config(top_p=0.9), mask_id=11)
    assert calls == [] and [int(token(j)) for j in range(3)] == [0, 0, 0]
    assert rows.tolist() == [1, 2] and (conf < 0).all()  # the first row's is the one-hot confidence, 0


def test_greedy_nucleus_row_topped_by_mask_takes_the_reference():
    logits = nucleus([0.95])
    greedy_matches_reference(logits, dream.Config(top_p=0.9), mask_id=0)  # the reference's zeroed one-hot row: token 0
    greedy_matches_reference(torch.full((2, 8), float("nan")), dream.Config(top_p=0.9))


@pytest.mark.parametrize("bad", [{"alg": "greedy"}, {"top_p": 0.0}, {"top_k": 0}, {"temperature": -1}, {"eps": 1.0}])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        dream.Config(**bad)


def test_fastdllm_dream_cached_block_start_commits_the_first_position_only():
    """Fast-dLLM dream/generation_utils_block.py: the block-start forward commits x[block_start] alone."""
    for cache in ("prefix", "dual"):
        steps = []
        cfg = fastdllm.Config(gen_length=16, block_length=8, threshold=0.0, cache=cache)
        (g,), nfe = decode(fastdllm, cfg, on_step=steps.append)
        # threshold 0: the block-start forward commits 1, the first cached forward the other 7
        assert list(g.committed_per_step) == [1, 7, 1, 7] and nfe == 4
        assert steps[0].committed[0, 5:].nonzero().flatten().tolist() == [0]
        assert steps[2].committed[0, 5:].nonzero().flatten().tolist() == [8]
    # the LLaDA path is unchanged: threshold 0 commits the whole block at its first forward (then
    # the reference's idle cached forward)
    (g,), nfe = decode(fastdllm, fastdllm.Config(gen_length=16, block_length=8, threshold=0.0, cache="prefix"), model=random_llada())
    assert list(g.committed_per_step) == [8, 0, 8, 0]


def test_fastdllm_dream_without_cache_is_the_whole_canvas_threshold_loop():
    """Fast-dLLM dream/generation_utils.py: quota gen/steps per forward, steps = gen/block, shortfall carried."""
    (g,), nfe = decode(fastdllm, fastdllm.Config(gen_length=16, block_length=8, threshold=0.0, cache="none"))
    assert list(g.committed_per_step) == [8, 8] and nfe == 2
    (g,), nfe = decode(fastdllm, fastdllm.Config(gen_length=16, block_length=8, threshold=1.0, cache="none"))
    assert (
        list(g.committed_per_step) == [1] * 16 and nfe == 16
    )  # only the forced top-1 (no random-model confidence reaches 1): the loop extends past 2 steps
    assert 1 not in g.tokens
