"""Runs untrusted, model-written Python in a separate, resource-limited process.

SCoRe's code reward is "all unit tests pass" (score.md §5); the programs come from the policy, so
they run here, never in the trainer's process.

What `run_in_sandbox` does (processes: sandbox_bootstrap.py; audit hook: sandbox_guard.py):
  * A fresh `python -I -B` supervisor S in its own session / process group, with a throwaway
    temporary directory as working directory (deleted afterwards, also on timeout or error). S
    forks the child C that runs the program.
  * When `unshare` works (root, or unprivileged user namespaces): new network and PID namespaces.
    The program sees no network interface but a downed loopback, every process it starts dies
    with the namespace's first process (S), and the kernel drops C's signals to S. This is probed
    once per process and cached.
  * Resource limits on C: RLIMIT_CPU, RLIMIT_AS (address space), RLIMIT_FSIZE, RLIMIT_NOFILE, no
    core dumps; RLIMIT_NPROC where the kernel applies it (not to root).
  * A Python audit hook in C, installed before the program runs, that refuses: creating processes
    (fork, exec, spawn, system, subprocess), signalling other processes, any socket, ctypes,
    raising resource limits, other processes' /proc entries, and writes / deletes / renames /
    chmods outside the working directory.
  * A wall-clock limit: at expiry the whole process group is SIGKILLed. Afterwards, stragglers that
    escaped the group are found by a per-run token in their environment and killed.
  * The result reaches us over a socket only S holds (C closes it first; /proc cannot reopen it).
  * With `tests`: the verdict is that the tests ran to their end in S, outside C, while C answered
    their requests (names the tests do not define are the program's; calls, attributes and
    operators on the program's objects run in C). The program cannot forge it from inside its
    process (print a marker, exit 0 early, find a secret by walking frames, write the verdict
    channel); it can only return values. A comparison of the program's object with the tests'
    value never runs the program's `__eq__` (see `sandbox_bootstrap.Remote`).
  * Without `tests`: "passed" needs exit status 0 AND reaching the end of the program, so
    `sys.exit(0)` before the asserts fails -- but the program can forge this verdict (e.g. by
    walking frames to the end-of-program nonce). Do not use it for rewards.

What it does NOT guarantee: without namespaces the audit hook and limits are the only barrier for
the host, and audit hooks are not a security boundary -- a determined attacker can get around them
(e.g. by tampering with interpreter internals, after which it can also tamper with S). Reads
anywhere the user can read are allowed (the dataset with the expected answers included), disk use
inside the working directory is limited only per file, and the program runs as the current user
(root in CI). Weak tests stay weak: hard-coded answers, or a program-level name that shadows a
builtin the tests call, pass as they would in-process. Use a container or VM for adversarial
code; this is meant for model output, honest-but-buggy or reward-hacking.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import marshal
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

_TAIL_CHARS = 4000
_TOKEN_ENV = "SELFRL_SANDBOX_TOKEN"
_SETUP_FAILED = 121

STATUSES = ("ok", "failed", "timeout", "memory", "blocked", "killed", "error")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  """Outcome of one sandboxed run.

  status: 'ok' (the program, then the tests if any, ran to the end; exit 0), 'failed' (exception,
  failed assert, non-zero or early exit), 'timeout' (wall-clock or CPU limit), 'memory'
  (address-space limit), 'blocked' (the program died on a refused operation), 'killed' (another
  signal), 'error' (the sandbox itself failed). With tests, the program's death while it answers
  them is classified the same way.
  """
  passed: bool
  status: str
  stdout: str
  stderr: str
  wall_s: float
  returncode: int | None = None


@functools.lru_cache(maxsize=None)
def _sandbox_code() -> bytes:
  """sandbox_bootstrap.py and sandbox_guard.py, compiled once per process, as marshal data: the
  sandboxed interpreters import nothing of ours and need not compile them (5 ms a run)."""
  here = pathlib.Path(__file__).parent
  return marshal.dumps(tuple(compile((here / name).read_text(encoding="utf-8"), f"<{name}>", "exec")
                             for name in ("sandbox_bootstrap.py", "sandbox_guard.py")))


# Runs the bootstrap from ROOT/sandbox.code (ROOT = argv[1]).
_LOADER = "import marshal, sys; exec(marshal.loads(open(sys.argv[1] + '/sandbox.code', 'rb').read())[0])"


@functools.lru_cache(maxsize=None)
def _namespace_prefix() -> tuple[str, ...]:
  """The `unshare` command prefix that works here (net + PID namespaces), or () if none does."""
  if os.environ.get("SELFRL_SANDBOX_NAMESPACES", "1") == "0" or shutil.which("unshare") is None:
    return ()
  base = ("unshare", "--net", "--pid", "--fork", "--kill-child")
  candidates = [base] if os.geteuid() == 0 else []
  candidates += [base[:1] + ("--user", "--map-current-user") + base[1:],
                 base[:1] + ("--user", "--map-root-user") + base[1:]]
  for prefix in candidates:
    try:
      probe = subprocess.run([*prefix, "--", sys.executable, "-I", "-c", ""], capture_output=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      continue
    if probe.returncode == 0:
      return prefix + ("--",)
  return ()


def namespaces_available() -> bool:
  """Whether sandboxed programs get their own network and PID namespaces on this machine."""
  return bool(_namespace_prefix())


def _user_task_count() -> int:
  """Tasks (processes and threads) the current real uid owns; RLIMIT_NPROC counts these."""
  uid, total = os.getuid(), 0
  for entry in os.scandir("/proc"):
    if not entry.name.isdigit():
      continue
    try:
      with open(f"/proc/{entry.name}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
      if int(fields["Uid"].split()[0]) == uid:
        total += int(fields["Threads"])
    except (OSError, KeyError, ValueError):
      continue
  return total


def _kill_stragglers(token: str) -> None:
  """SIGKILLs every process whose environment carries this run's token."""
  needle = f"{_TOKEN_ENV}={token}".encode()
  for entry in os.scandir("/proc"):
    if not entry.name.isdigit() or int(entry.name) == os.getpid():
      continue
    try:
      with open(f"/proc/{entry.name}/environ", "rb") as f:
        if needle in f.read().split(b"\0"):
          os.kill(int(entry.name), signal.SIGKILL)
    except (OSError, ValueError):
      continue


def _remove_tree(path: str) -> None:
  """Deletes `path` even if the program made parts of it read-only."""
  def retry(func, p, _):
    try:
      os.chmod(os.path.dirname(p), 0o700)
      if os.path.isdir(p) and not os.path.islink(p):
        os.chmod(p, 0o700)
      func(p)
    except OSError:
      pass
  shutil.rmtree(path, onerror=retry)
  if os.path.lexists(path):
    shutil.rmtree(path, ignore_errors=True)


def _tail(path: str) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(max(0, os.fstat(f.fileno()).st_size - 4 * _TAIL_CHARS))
      return f.read().decode("utf-8", errors="replace")[-_TAIL_CHARS:]
  except OSError:
    return ""


def _wait_until(proc: subprocess.Popen, deadline: float) -> bool:
  """Waits for `proc` to exit (it stays a zombie, unreaped) until `deadline`; True if it exited."""
  try:
    pidfd = os.pidfd_open(proc.pid)
  except (AttributeError, OSError):
    pidfd = None
  try:
    while True:
      if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        return True
      left = deadline - time.monotonic()
      if left <= 0:
        return False
      if pidfd is not None:
        select.select([pidfd], [], [], left)
      else:
        time.sleep(min(left, 0.01))
  finally:
    if pidfd is not None:
      os.close(pidfd)


def _classify(res: dict | None, stderr: str, cpu_s: int) -> tuple[str, int | None]:
  if res is None:
    return "error", None
  rc = res["returncode"]
  if rc == 0:
    return ("ok" if res["completed"] else "failed"), rc
  if rc == _SETUP_FAILED and "sandbox setup failed" in stderr:
    return "error", rc
  if "MemoryError" in stderr:
    return "memory", rc
  if rc < 0:
    if -rc == signal.SIGXCPU or (-rc == signal.SIGKILL and res["cpu_s"] >= 0.9 * cpu_s):  # rusage lags a tick.
      return "timeout", rc   # SIGXCPU: the soft CPU limit; SIGKILL past it: the hard one (SIGXCPU ignored)
    if -rc == signal.SIGSEGV:  # CPython overflowing its C stack or a failed allocation.
      return "memory", rc
    return "killed", rc
  if "SandboxViolation" in stderr:
    return "blocked", rc
  return "failed", rc


def run_in_sandbox(code: str, *, tests: str | None = None, timeout_s: float = 5.0, cpu_s: int = 5,
                   memory_mb: int = 512, max_procs: int = 16, max_file_mb: int = 16,
                   run_name: str = "__main__", label: str = "", guard: bool = True,
                   tmp_dir: str | None = None) -> SandboxResult:
  """Runs the Python source `code` in a sandbox (see the module docstring for what that means).

  Args:
    code: the program (the candidate solution and any setup code it needs).
    tests: test code (asserts, HumanEval's `check(...)`). Given, the run passes iff `code` runs to
      its end and then `tests` run to their end without an exception in the supervisor, outside
      the program's process (the verdict the program cannot forge). None: the run passes iff
      `code` runs to its end and exits with status 0 (a verdict the program can forge).
    timeout_s: wall-clock limit; the whole process group is killed when it expires.
    cpu_s: CPU-time limit of the program's process (RLIMIT_CPU, whole seconds).
    memory_mb: address-space limit (RLIMIT_AS) of the program's process.
    max_procs: RLIMIT_NPROC headroom, for kernels that apply it (non-root users).
    max_file_mb: largest file the program may write (RLIMIT_FSIZE), stdout/stderr included.
    run_name: `__name__` the program sees ('__main__' runs its main guard).
    label: extra argument on the sandbox's command line, to find its processes (e.g. in `ps`).
    guard: install the audit hook. Only tests turn it off, to exercise the outer layers.
    tmp_dir: where the throwaway directory is created (default: the system temp dir).
  """
  start = time.monotonic()
  # The result channel; S gets verdict_s. Unlike a pipe, a socket cannot be reopened via /proc.
  verdict, verdict_s = socket.socketpair()
  root = tempfile.mkdtemp(prefix="selfrl_sandbox_", dir=tmp_dir)
  token = uuid.uuid4().hex
  proc = None
  res = None
  timed_out = False
  try:
    os.mkdir(os.path.join(root, "work"))
    for name, text in (("program.py", code), ("tests.py", tests)):
      if text is not None:
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
          f.write(text)
    prefix = _namespace_prefix()
    nproc = None
    if os.geteuid() != 0:  # In a fresh user namespace the kernel counts only its own tasks.
      user_ns = "--user" in prefix
      nproc = max_procs + (2 if user_ns else _user_task_count())
    cfg = {"cpu_s": int(cpu_s), "memory_mb": int(memory_mb), "max_file_mb": int(max_file_mb),
           "nproc": nproc, "run_name": run_name, "tests": tests is not None,
           "guard": bool(guard)}
    work = os.path.join(root, "work")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": work,
           "TMPDIR": work, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", _TOKEN_ENV: token}
    with open(os.path.join(root, "sandbox.code"), "wb") as f:
      f.write(_sandbox_code())
    cmd = [*prefix, sys.executable, "-I", "-B", "-c", _LOADER, root, json.dumps(cfg),
           str(verdict_s.fileno())]
    cmd += [label] if label else []
    with open(os.path.join(root, "stdout"), "wb") as out, open(os.path.join(root, "stderr"), "wb") as err:
      proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work,
                              env=env, start_new_session=True, close_fds=True,
                              pass_fds=(verdict_s.fileno(),))
    verdict_s.close()
    timed_out = not _wait_until(proc, start + timeout_s)
    _killpg(proc.pid)  # Stragglers in the group die before the leader's pid can be recycled.
    proc.wait()
    res = _read_verdict(verdict)
    stdout, stderr = _tail(os.path.join(root, "stdout")), _tail(os.path.join(root, "stderr"))
  except OSError as e:
    stdout, stderr = "", f"sandbox error: {type(e).__name__}: {e}"
  finally:
    if proc is not None and proc.returncode is None:
      _killpg(proc.pid)
      proc.wait()
    verdict.close()
    verdict_s.close()
    _kill_stragglers(token)
    _remove_tree(root)
  if timed_out:
    status, rc = "timeout", None
  else:
    status, rc = _classify(res, stderr, int(cpu_s))
  return SandboxResult(passed=status == "ok", status=status, stdout=stdout, stderr=stderr,
                       wall_s=time.monotonic() - start, returncode=rc)


def _read_verdict(sock: socket.socket) -> dict | None:
  """The supervisor's result (non-blocking: whoever held the other end is dead by now)."""
  sock.setblocking(False)
  data = b""
  try:
    while chunk := sock.recv(1 << 16):
      data += chunk
  except BlockingIOError:
    pass
  try:
    res = json.loads(data)
  except ValueError:
    return None
  keys = {"returncode": int, "completed": bool, "cpu_s": float}
  if not isinstance(res, dict) or any(not isinstance(res.get(k), t) for k, t in keys.items()):
    return None
  return res


def _killpg(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
