"""Results on disk -> leaderboard.csv, board.csv and one self-contained report.html.

Reads only the files the run loop writes (`config.json` and `samples.jsonl` per run, `sweep.json`
per sweep) and recomputes every metric from the Records with `dleval.metrics`, so a report never
depends on the code version that produced a summary. Conventions (ecosystem.md §4.3-4.4):

- a **row** is one model x decoder x setting x task. Runs of one configuration that differ only
  in their seed are merged (their records concatenated, which is what makes pass@k > 1 defined);
  of several runs with the same config hash the most complete, then newest, is used;
- a **curve** is one model x decoder x task (same samples): the row points (answer TPF,
  accuracy) plus the **baseline point**, the `llada` decoder at one token per step on the same
  model and samples, as d3LLM's board gives every method a full-steps point. TPF is always the
  measured answer TPF (d3LLM's board uses a nominal 1.0 for the full-steps point);
- **AUP** per curve against `y_max` = the best accuracy of any row of that task in the report,
  unless pinned; points below the 5-point floor are dropped with a note that names them;
- **PB80 / PB90** per curve (ParallelBench's PBx, `metrics.pbx`): the largest answer TPF that
  keeps 80 / 90 % of the curve's own best accuracy, over all its points (dropped ones too);
- **speedup** of each row against an explicitly named baseline run (`baselines`), else the
  curve's baseline point; the baseline's run id is written next to the ratio.

The modules read in flow order: `runs` (run and sweep folders -> Run), `rows` (the runs of one
setting -> a leaderboard Row; the facts a speedup ratio needs), `curves` (Rows -> AUP curves and
the board), `tables` (`build()`: every table of a Report) and `render` (a Report -> the CSV files
and the HTML page with its figures).
"""

from dleval.report.render import write
from dleval.report.runs import BASELINE_DECODER
from dleval.report.tables import Report, build

__all__ = ["BASELINE_DECODER", "Report", "build", "write"]
