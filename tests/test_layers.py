"""The dependency rule: imports only go down the data flow (pyproject's import-linter contracts).

Run: pytest tests/test_layers.py   (or: lint-imports)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_importing_dleval_does_not_import_torch():
    code = "import sys, dleval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_every_file_opens_with_a_docstring():
    import ast

    for path in [*ROOT.joinpath("dleval").rglob("*.py"), *ROOT.joinpath("tests").glob("*.py")]:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no module docstring"


def test_the_decoder_independence_contract_lists_every_decoder():
    import tomllib

    from dleval import decoders

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (independent,) = [c for c in contracts if c["type"] == "independence"]
    assert sorted(independent["modules"]) == [f"dleval.decoders.{n}" for n in decoders.names()], (
        "add the new decoder to the independence contract in pyproject.toml"
    )
