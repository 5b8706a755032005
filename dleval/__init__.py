"""dleval: a benchmark and evaluation harness for parallel decoding of diffusion LLMs.

Importing dleval stays light (no torch); see `dleval.run` for the evaluation loop and
`dleval.cli` for the command line.
"""

from dleval.types import Generation, Record, Sample, Score

__version__ = "0.1.0"
__all__ = ["Generation", "Record", "Sample", "Score", "__version__"]
