"""nox sessions: tests (CPU, default suite), lint (ruff), imports (the no-upward-import contract), gpu.

Run: nox -s tests lint imports
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "imports"]
TORCH = "torch==2.13.0"  # the CPU wheel; a bare "torch" would pull several GB of CUDA packages


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "dleval", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "dleval", "tests", "noxfile.py")


@nox.session
def imports(session: nox.Session) -> None:
    _install(session)
    session.run("lint-imports")


@nox.session
def gpu(session: nox.Session) -> None:
    session.install("torch")
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "gpu", *session.posargs)
