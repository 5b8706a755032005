"""`dleval sweep` + `dleval report`: real tiny-model runs -> leaderboard.csv, board.csv and a
self-contained report.html that renders in headless Chromium; report rules on written runs.

Run: pytest tests/test_report.py   (the Chromium test skips without a `chromium` binary unless
DLEVAL_REQUIRE_CHROMIUM=1, as in .ci/run; its screenshot goes to test-artifacts/ or $DLEVAL_ARTIFACTS)
"""

from __future__ import annotations

import base64
import csv
import json
import os
import tempfile
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from dleval import report, results, tasks
from dleval.cli import main
from dleval.errors import UserError
from dleval.identity import digest
from dleval.metrics import AUPWarning, aup, pbx
from dleval.report.runs import read_run
from dleval.types import Record
from tests.browser import Chromium, find_chromium

ROOT = Path(__file__).resolve().parents[1]
GEN = tasks.load_task("synth_gsm").generation.gen_length  # the baseline's NFE: one token per forward
SWEEP = "sweep --decoder llada --task synth_gsm -D steps=12,6 --limit 8 --batch-size 4 --no-progress".split()

# ecosystem.md §4.3, every proposed column (the code-task pass@1 columns included)
PROPOSED = """rank model base_model decoder decoder_params config_hash task n_shot prompt_variant filter n_samples
accuracy_pct accuracy_stderr pass_at_1_raw pass_at_1_sanitized gen_length block_length steps_budget avg_nfe avg_gen_tokens
tpf tpf_mean latency_s_mean latency_s_p50 latency_s_p90 tps_per_gpu speedup_vs_baseline gpu batch_size dtype backend
warmup aup y_max aup_alpha dleval_version git_hash date""".split()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real llada sweep (steps 12 and 6, plus the one-token-per-step baseline) on 8 samples."""
    root = tmp_path_factory.mktemp("sweep")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see dleval.gate.check: oversubscribed CPUs spin with 2 OpenMP threads
    try:
        assert main([*SWEEP, "--out", str(root / "runs"), "--sweeps-out", str(root / "sweeps")]) == 0
    finally:
        torch.set_num_threads(previous)
    (sweep_dir,) = (root / "sweeps").iterdir()
    return root, sweep_dir


@pytest.fixture(scope="module")
def written(swept, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(swept[1]), "--out", str(out)]) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_sweep_records_every_point_and_resumes(swept, capsys):
    root, sweep_dir = swept
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["complete"] and record["axes"] == {"steps": ["12", "6"]}
    assert [p["settings"] for p in record["points"]] == [{"steps": "12"}, {"steps": "6"}]
    assert record["baseline"]["nfe_mean"] == GEN and [p["nfe_mean"] for p in record["points"]] == [12, 6]
    runs = {(sweep_dir / p["run_dir"]).resolve() for p in [*record["points"], record["baseline"]]}
    assert len(runs) == 3 and all(results.is_run_dir(r) for r in runs)
    before = sorted((root / "runs").iterdir())
    assert main([*SWEEP, "--out", str(root / "runs"), "--sweeps-out", str(root / "sweeps")]) == 0
    assert sorted((root / "runs").iterdir()) == before  # every point resumed its finished run
    assert "AUP" in capsys.readouterr().out


def test_leaderboard_has_the_proposed_columns_and_one_row_per_setting(written):
    header = (written / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert [c for c in PROPOSED if c not in header] == []
    rows = read_csv(written / "leaderboard.csv")
    assert sorted(float(r["avg_nfe"]) for r in rows) == [6.0, 12.0, GEN]
    assert {r["decoder"] for r in rows} == {"llada"} and {r["model"] for r in rows} == {"tiny"}
    base = next(r for r in rows if float(r["avg_nfe"]) == GEN)
    assert all(r["speedup_baseline"] == base["run_id"] for r in rows)
    assert float(next(r for r in rows if float(r["avg_nfe"]) == 6)["speedup_nfe"]) == pytest.approx(GEN / 6, abs=1e-3)
    # one curve, one AUP: recomputed from the rows' own (TPF, accuracy) against the pool's best
    y_max = max(float(r["accuracy_pct"]) for r in rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AUPWarning)  # a point below the floor is dropped here as in the report
        expected = aup([(float(r["tpf"]), float(r["accuracy_pct"])) for r in rows], y_max)
    assert [float(r["aup"]) for r in rows] == [pytest.approx(expected, rel=1e-3)] * 3  # from 4-decimal CSV values
    assert all(float(r["y_max"]) == pytest.approx(y_max) and r["aup_alpha"] == "3" for r in rows)
    for r in rows:
        assert float(r["tpf"]) == pytest.approx(float(r["avg_answer_tokens"]) / float(r["avg_nfe"]), abs=1e-3)
        assert r["prompt_variant"].startswith("chat:") and r["filter"] == "strict-match" and r["n_samples"] == "8"


def test_board_has_one_entry_per_model_and_decoder(written):
    (row,) = read_csv(written / "board.csv")
    assert row["model_decoder"] == "tiny+llada" and row["rank"] == "1"
    assert row["avg_aup"] == row["synth_gsm_aup"] and row["avg_tasks"] == "synth_gsm"
    rows = read_csv(written / "leaderboard.csv")
    fastest = max((r for r in rows if r["aup_point"] == "kept"), key=lambda r: float(r["tpf"]))
    assert (row["synth_gsm_tpf"], row["synth_gsm_acc"]) == (fastest["tpf"], fastest["accuracy_pct"])
    # PB80/PB90 next to the AUP: the curve's own, recomputed from the rows' (TPF, accuracy)
    points = [(float(r["tpf"]), float(r["accuracy_pct"])) for r in rows]
    for x in (80, 90):
        assert float(row[f"synth_gsm_pb{x}"]) == pytest.approx(pbx(points, x), rel=1e-3)
        assert all(float(r[f"pb{x}"]) == pytest.approx(pbx(points, x), rel=1e-3) for r in rows)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.refs.append((tag, name, value or ""))
            if name == "id":
                self.ids.add(value or "")


def test_report_html_is_one_self_contained_file(written):
    text = (written / "report.html").read_text()
    page = _Page()
    page.feed(text)
    assert "board" in page.ids
    images = [v for tag, name, v in page.refs if tag == "img"]
    assert images and all(v.startswith("data:image/png;base64,") for v in images)
    assert all(base64.b64decode(v.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for v in images)
    external = [v for tag, name, v in page.refs if tag != "a" and not v.startswith("data:")]
    assert external == []  # nothing is fetched: only links to the per-sample files
    assert all(not v.startswith(("http:", "https:", "//")) for _, _, v in page.refs)
    assert "<script src" not in text and '<link rel="stylesheet"' not in text


def test_report_renders_in_headless_chromium(written):
    exe = find_chromium()
    if exe is None:
        if os.environ.get("DLEVAL_REQUIRE_CHROMIUM") == "1":
            pytest.fail("DLEVAL_REQUIRE_CHROMIUM=1 but no chromium binary was found (apt-get install chromium)")
        pytest.skip("no chromium binary (apt-get install chromium)")
    artifacts = Path(os.environ.get("DLEVAL_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dleval-chromium-") as profile, Chromium(exe, Path(profile) / "profile") as browser:
        log = browser.open_page((written / "report.html").as_uri())
        state = browser.evaluate(
            """({
              board: document.querySelectorAll("table#board tbody tr").length,
              headers: Array.from(document.querySelectorAll("table#board th")).map(th => th.textContent.trim()),
              images: Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth})),
            })"""
        )
        browser.evaluate('document.querySelector("table#board th:last-child").click()')  # the sort script runs cleanly
        browser.screenshot(artifacts / "report.png")
        after = browser.page_log()
    assert state["board"] == 1 and "Avg AUP" in state["headers"] and "synth_gsm" in state["headers"]
    assert state["images"] and all(i["ok"] for i in state["images"]), state["images"]
    assert log.errors == [] and after.errors == []
    assert all(u.startswith(("file:", "data:")) for u in after.requests), after.requests
    assert (artifacts / "report.png").read_bytes()[:4] == b"\x89PNG"


# --- report rules on runs written by hand ----------------------------------------------------


def write_run(root: Path, name: str, *, decoder="fast", params=None, task="t1", model="m", seed=1, correct=(1, 1, 0, 0), nfe=10, answer=20):
    """A run folder in the run loop's format with records built from the arguments."""
    params = {"gen_length": 24, "steps": None, **(params or {})}
    identity = [decoder, params, task, model, seed]
    config_hash = digest(identity)[:12]
    folder = root / name
    folder.mkdir(parents=True)
    config = {
        "format_version": 1, "run_id": name, "created": f"2026-01-01T00:00:{len(name) % 60:02d}+00:00", "command": ["dleval", "run"],
        "config_hash": config_hash, "decoder": {"name": decoder, "config": params},
        "task": {"name": task, "prompt": {"shots": 0}, "scoring": {"primary": "strict-match"}},
        "model": {"name": model, "fingerprint": "f" * 16, "dtype": "float32"}, "prompt": {"style": "chat", "template_hash": "abc"},
        "seed": seed, "batch_size": 1, "dataset_hash": f"d-{task}", "environment": {"device": "cpu", "dleval": "0.1.0", "git_sha": "x"},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    records = [
        Record(
            sample_id=f"{task}/{i}", config_hash=config_hash, completion="", raw="", answer="", correct=float(c), metrics={},
            nfe=nfe, rows_forwarded=nfe, gen_tokens=24, answer_tokens=answer, prompt_tokens=5, seconds=0.01 * nfe,
            committed_per_step=(), finish="length", batch_size=1, warmup=i == 0,
        )
        for i, c in enumerate(correct)
    ]  # fmt: skip
    (folder / "samples.jsonl").write_text("".join(r.to_json() + "\n" for r in records))
    return folder


def test_pinned_y_max_and_dropped_points_are_reported(tmp_path):
    write_run(tmp_path, "base", decoder="llada", correct=(1,) * 20, nfe=24)
    write_run(tmp_path, "fast-a", params={"threshold": 0.9}, correct=(1,) * 19 + (0,), nfe=8)  # 95%: on the floor, kept
    write_run(tmp_path, "fast-b", params={"threshold": 0.5}, correct=(1, 0) * 10, nfe=4)  # 50%: dropped
    built = report.build([tmp_path])
    fast = next(c for c in built.curves if c.decoder == "fast")
    assert fast.baseline is not None and fast.baseline.decoder == "llada"  # the baseline point joins the curve
    assert built.y_max == {"t1": 100.0} and not built.pinned
    rows = {r.run_id: r for r in built.rows}
    assert rows["fast-b"].aup_point == "dropped" and rows["fast-a"].aup_point == "kept"
    assert any("threshold=0.5" in n and "dropped" in n for n in built.notes)
    expected = aup([(20 / 24, 100.0), (20 / 8, 95.0)], 100.0)
    assert fast.aup is not None and fast.aup.value == pytest.approx(expected)
    pinned = report.build([tmp_path], y_max={"t1": 80.0})
    assert pinned.pinned == {"t1"} and next(c for c in pinned.curves if c.decoder == "fast").aup.value > expected


def test_strict_aup_fails_like_the_reference(tmp_path):
    write_run(tmp_path, "base", decoder="llada", correct=(1, 1, 1, 1), nfe=24)
    write_run(tmp_path, "fast-b", params={"threshold": 0.5}, correct=(1, 0, 0, 0), nfe=4)
    with pytest.raises(UserError, match="degradation is too large"):
        report.build([tmp_path], strict=True)


def test_speedup_against_a_named_baseline(tmp_path, capsys):
    write_run(tmp_path, "base", decoder="llada", nfe=24)
    write_run(tmp_path, "slow", params={"threshold": 0.99}, nfe=12)
    write_run(tmp_path, "fast", params={"threshold": 0.5}, nfe=6)
    auto = {r.run_id: r for r in report.build([tmp_path]).rows}
    assert auto["fast"].speedup_nfe == pytest.approx(4.0) and auto["fast"].speedup_baseline == "base"
    named = {r.run_id: r for r in report.build([tmp_path], baselines=["slow"]).rows}
    assert named["fast"].speedup_nfe == pytest.approx(2.0) and named["fast"].speedup_vs_baseline == pytest.approx(2.0)
    assert named["base"].speedup_baseline == "slow"
    by_folder = {r.run_id: r for r in report.build([tmp_path], baselines=[str(tmp_path / "slow")]).rows}
    assert by_folder["fast"].speedup_baseline == "slow"
    assert main(["report", str(tmp_path), "--baseline", "nope", "--out", str(tmp_path / "out")]) == 2
    assert "--baseline 'nope' is not one of the runs" in capsys.readouterr().err


def test_seeds_merge_into_one_row_and_duplicates_are_superseded(tmp_path):
    for seed in range(5):
        write_run(tmp_path, f"seed{seed}", seed=seed, correct=(seed == 0, 0, 0, 0))
    write_run(tmp_path / "again", "seed0-partial", seed=0, correct=(1,))
    built = report.build([tmp_path, tmp_path / "again"])
    (row,) = built.rows
    assert row.n_samples == 20 and row.seeds == "0,1,2,3,4"
    assert json.loads(row.pass_at_k) == {"1": pytest.approx(5.0), "5": pytest.approx(25.0)}
    assert any("seed0-partial" in n and "left out" in n for n in built.notes)


def test_mean_aup_over_an_explicit_task_list(tmp_path):
    for task in ("t1", "t2"):
        write_run(tmp_path, f"{task}-base", decoder="llada", task=task, nfe=24)
        write_run(tmp_path, f"{task}-fast", task=task, nfe=6)
    write_run(tmp_path, "t1-other", decoder="other", task="t1", nfe=12)
    built = report.build([tmp_path], mean_tasks=["t1", "t2"])
    by = {e.decoder: e for e in built.board}
    assert by["fast"].mean_aup == pytest.approx((by["fast"].cells["t1"].aup + by["fast"].cells["t2"].aup) / 2)
    assert by["other"].mean_aup is None and by["other"].rank is None  # no t2 result: not averaged over fewer tasks
    assert [e.decoder for e in built.board][-1] == "other"
    only_t1 = report.build([tmp_path], mean_tasks=["t1"])
    assert {e.decoder: e.mean_aup for e in only_t1.board}["other"] == pytest.approx(by["other"].cells["t1"].aup)
    out = tmp_path / "out"
    report.write(built, out)
    header = (out / "board.csv").read_text().splitlines()[0]
    assert header.startswith("rank,model,decoder,model_decoder,t1_aup,t1_pb80,t1_pb90,t1_tpf,t1_acc,t2_aup") and header.endswith(
        "avg_aup,avg_tasks,missing_tasks"
    )


def test_reading_is_read_only_and_tolerates_a_run_in_progress(tmp_path):
    folder = write_run(tmp_path, "live")
    path = folder / "samples.jsonl"
    torn = path.read_text() + '{"sample_id": "t1/9", "conf'
    path.write_text(torn)
    assert len(read_run(folder).records) == 4
    assert path.read_text() == torn


@pytest.mark.parametrize(
    "argv,message",
    [
        (["report", "/nonexistent/x"], "'/nonexistent/x' does not exist"),
        (["report", "{empty}"], "holds no run folders"),
        (["report", "{runs}", "--tasks", "t9"], "--tasks names 't9'"),
        (["report", "{runs}", "--y-max", "t1"], "--y-max expects TASK=ACCURACY"),
        (["report", "{runs}", "--y-max", "t7=50"], "--y-max names task 't7'"),
    ],
)
def test_bad_report_input_is_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "runs", "r1")
    argv = [a.format(empty=tmp_path / "empty", runs=tmp_path / "runs") for a in argv]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["-D", "steps=12,,6"], "has an empty value"),
        (["-D", "stepz=12,6"], "did you mean 'steps'"),
        (["-D", "steps=12,5"], "multiple of the number of blocks"),
    ],
)
def test_bad_sweep_input_fails_before_any_run(args, message, tmp_path, capsys):
    argv = ["sweep", "--decoder", "llada", "--task", "synth_gsm", "-D", "gen_length=24", "-D", "block_length=12", *args, "--limit", "2"]
    assert main([*argv, "--out", str(tmp_path / "runs"), "--sweeps-out", str(tmp_path / "sweeps")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_setting_label_always_names_skip_idle_forward():
    from types import SimpleNamespace

    from dleval.report.rows import setting_labels

    rows = [
        SimpleNamespace(run_id=rid, decoder_params=json.dumps({"threshold": 0.9, "cache": "prefix", "skip_idle_forward": skip}))
        for rid, skip in (("a", True), ("b", True))
    ]
    assert setting_labels(rows) == {"a": "threshold=0.9, skip_idle_forward=True", "b": "threshold=0.9, skip_idle_forward=True"}
