"""Runs untrusted, model-written Python in a separate, resource-limited process.

SCoRe's code reward is "all unit tests pass" (score.md §5); the programs come from the policy, so
they run here, never in the trainer's process.

What `run_in_sandbox` does:
  * A fresh `python -I -B` in its own session / process group, with a throwaway temporary
    directory as working directory (deleted afterwards, also on timeout or error).
  * When `unshare` works (root, or unprivileged user namespaces): new network and PID namespaces.
    The program sees no network interface but a downed loopback, and every process it starts dies
    with the namespace's first process. This is probed once per process and cached.
  * Resource limits on the program: RLIMIT_CPU, RLIMIT_AS (address space), RLIMIT_FSIZE,
    RLIMIT_NOFILE, no core dumps; RLIMIT_NPROC where the kernel applies it (not to root).
  * A Python audit hook, installed before the program runs, that refuses: creating processes
    (fork, exec, spawn, system, subprocess), signalling other processes, any socket, ctypes, raising
    resource limits, and writes / deletes / renames / chmods outside the working directory.
  * A wall-clock limit: at expiry the whole process group is SIGKILLed. Afterwards, stragglers that
    escaped the group are found by a per-run token in their environment and killed.
  * "passed" needs exit status 0 AND reaching the end of the program: `sys.exit(0)` or
    `os._exit(0)` before the asserts does not count as a pass.

What it does NOT guarantee: without namespaces the audit hook and limits are the only barrier,
and audit hooks are not a security boundary -- a determined attacker can get around them (e.g. by
tampering with interpreter internals). Reads anywhere the user can read are allowed, disk use
inside the working directory is limited only per file, and the program runs as the current user
(root in CI). Use a container or VM for adversarial code; this is meant for honest-but-buggy
model output (infinite loops, memory blow-ups, stray file writes, accidental fork loops).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import select
import shutil
import signal
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

  status: 'ok' (ran to the end, exit 0), 'failed' (exception, assert, non-zero or early exit),
  'timeout' (wall-clock or CPU limit), 'memory' (address-space limit), 'blocked' (the program died
  on a refused operation), 'killed' (another signal), 'error' (the sandbox itself failed).
  """
  passed: bool
  status: str
  stdout: str
  stderr: str
  wall_s: float
  returncode: int | None = None


# The supervisor: first process in the namespace. It forks the child that runs the program, waits
# for it and writes result.json. Kept as a string so the sandboxed interpreter imports nothing of
# ours.
_BOOTSTRAP = r'''
import os, sys
def _guard(work):
  import os, sys
  work = os.path.realpath(work)
  wflags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
  refused = frozenset((
      "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
      "subprocess.Popen", "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
      "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "fcntl.ioctl", "pty.spawn"))
  # event -> (indices of path arguments, indices of their dir_fd arguments).
  path_events = {
      "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
      "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
      "os.truncate": ((0,), (None,)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
      "os.utime": ((0,), (3,)), "os.chflags": ((0,), (None,)), "os.lchflags": ((0,), (None,)),
      "os.setxattr": ((0,), (None,)), "os.removexattr": ((0,), (None,)),
      "shutil.rmtree": ((0,), (1,))}
  class SandboxViolation(PermissionError):
    pass
  def resolve(path, dir_fd=None):
    p = os.fsdecode(os.fspath(path))
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(p):
      p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
    return os.path.realpath(p)
  def inside(path, dir_fd=None):
    if isinstance(path, int):  # An fd the program opened (and we checked) earlier.
      return True
    p = resolve(path, dir_fd)
    return p == work or p.startswith(work + os.sep) or p == "/dev/null"
  def hook(event, args):
    if event == "open":
      path, mode, flags = args
      writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
          isinstance(flags, int) and flags & wflags)
      if (writes or (not isinstance(path, int) and os.path.isdir(resolve(path)))) and not inside(path):
        # Directory fds outside are refused too: os.open(name, dir_fd=...) carries no dir_fd here.
        raise SandboxViolation(f"sandbox: write or directory open outside the working directory refused: {path!r}")
    elif event.startswith("socket."):
      raise SandboxViolation(f"sandbox: network access refused ({event})")
    elif event in refused:
      raise SandboxViolation(f"sandbox: {event} refused")
    elif event in path_events:
      paths, fds = path_events[event]
      for i, j in zip(paths, fds):
        if not inside(args[i], None if j is None else args[j]):
          raise SandboxViolation(f"sandbox: {event} outside the working directory refused: {args[i]!r}")
  # ctypes is imported before the hook (numpy needs it); afterwards no new library or symbol.
  import ctypes
  sys.addaudithook(hook)
  try:
    import _posixsubprocess
    def _no_fork_exec(*a, **k):
      raise SandboxViolation("sandbox: process creation refused")
    _posixsubprocess.fork_exec = _no_fork_exec
  except ImportError:
    pass

def _child(root, cfg, wfd, nonce):
  try:
    import resource, signal
    work = os.path.join(root, "work")
    with open(os.path.join(root, "program.py"), encoding="utf-8") as f:
      source = f.read()
    os.chdir(work)
    mb = 1 << 20
    for name, value in (("RLIMIT_AS", cfg["memory_mb"] * mb), ("RLIMIT_CPU", cfg["cpu_s"]),
                        ("RLIMIT_FSIZE", cfg["max_file_mb"] * mb), ("RLIMIT_NOFILE", 256),
                        ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", cfg["nproc"])):
      if value is not None:
        resource.setrlimit(getattr(resource, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Over-long writes raise OSError instead.
    if cfg["guard"]:
      _guard(work)
  except BaseException as e:
    sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
    _flush()
    os._exit(121)
  g = {"__name__": cfg["run_name"], "__builtins__": __builtins__, "__file__": "program.py"}
  sys.argv = ["program.py"]
  try:
    exec(compile(source, "program.py", "exec"), g)
  except SystemExit as e:
    c = e.code
    _flush()
    os._exit(c if isinstance(c, int) else (0 if c is None else 1))
  except BaseException:
    import traceback
    traceback.print_exc()
    _flush()
    os._exit(1)
  _flush()
  os.write(wfd, nonce)
  os._exit(0)

def _flush():
  for s in (sys.stdout, sys.stderr):
    try:
      s.flush()
    except BaseException:
      pass

def _main():
  import json
  root, cfg = sys.argv[1], json.loads(sys.argv[2])
  nonce = os.urandom(16).hex().encode()
  rfd, wfd = os.pipe()
  pid = os.fork()
  if pid == 0:
    try:
      os.close(rfd)
      _child(root, cfg, wfd, nonce)
    finally:
      os._exit(1)
  os.close(wfd)
  _, status, usage = os.wait4(pid, 0)
  got = os.read(rfd, 64)
  res = {"returncode": os.waitstatus_to_exitcode(status), "completed": got == nonce,
         "cpu_s": usage.ru_utime + usage.ru_stime}
  tmp = os.path.join(root, "result.json.tmp")
  with open(tmp, "w") as f:
    json.dump(res, f)
  os.rename(tmp, os.path.join(root, "result.json"))
  os._exit(0)

_main()
'''


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
    if -rc in (signal.SIGKILL, signal.SIGXCPU) and res["cpu_s"] >= 0.9 * cpu_s:  # rusage lags a tick.
      return "timeout", rc
    if -rc == signal.SIGSEGV:  # CPython overflowing its C stack or a failed allocation.
      return "memory", rc
    return "killed", rc
  if "SandboxViolation" in stderr:
    return "blocked", rc
  return "failed", rc


def run_in_sandbox(code: str, *, timeout_s: float = 5.0, cpu_s: int = 5, memory_mb: int = 512,
                   max_procs: int = 16, max_file_mb: int = 16, run_name: str = "__main__",
                   label: str = "", guard: bool = True, tmp_dir: str | None = None) -> SandboxResult:
  """Runs the Python source `code` in a sandbox (see the module docstring for what that means).

  Args:
    code: the program; it passes iff it runs to the end and exits with status 0.
    timeout_s: wall-clock limit; the whole process group is killed when it expires.
    cpu_s: CPU-time limit (RLIMIT_CPU, whole seconds).
    memory_mb: address-space limit (RLIMIT_AS) of the program's process.
    max_procs: RLIMIT_NPROC headroom, for kernels that apply it (non-root users).
    max_file_mb: largest file the program may write (RLIMIT_FSIZE), stdout/stderr included.
    run_name: `__name__` the program sees ('__main__' runs its main guard).
    label: extra argument on the sandbox's command line, to find its processes (e.g. in `ps`).
    guard: install the audit hook. Only tests turn it off, to exercise the outer layers.
    tmp_dir: where the throwaway directory is created (default: the system temp dir).
  """
  start = time.monotonic()
  root = tempfile.mkdtemp(prefix="selfrl_sandbox_", dir=tmp_dir)
  token = uuid.uuid4().hex
  proc = None
  res = None
  timed_out = False
  try:
    os.mkdir(os.path.join(root, "work"))
    with open(os.path.join(root, "program.py"), "w", encoding="utf-8") as f:
      f.write(code)
    prefix = _namespace_prefix()
    nproc = None
    if os.geteuid() != 0:  # In a fresh user namespace the kernel counts only its own tasks.
      user_ns = "--user" in prefix
      nproc = max_procs + (2 if user_ns else _user_task_count())
    cfg = {"cpu_s": int(cpu_s), "memory_mb": int(memory_mb), "max_file_mb": int(max_file_mb),
           "nproc": nproc, "run_name": run_name, "guard": bool(guard)}
    work = os.path.join(root, "work")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": work,
           "TMPDIR": work, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", _TOKEN_ENV: token}
    cmd = [*prefix, sys.executable, "-I", "-B", "-c", _BOOTSTRAP, root, json.dumps(cfg)]
    cmd += [label] if label else []
    with open(os.path.join(root, "stdout"), "wb") as out, open(os.path.join(root, "stderr"), "wb") as err:
      proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work,
                              env=env, start_new_session=True, close_fds=True)
    timed_out = not _wait_until(proc, start + timeout_s)
    _killpg(proc.pid)  # Stragglers in the group die before the leader's pid can be recycled.
    proc.wait()
    try:
      with open(os.path.join(root, "result.json")) as f:
        res = json.load(f)
    except (OSError, ValueError):
      res = None
    stdout, stderr = _tail(os.path.join(root, "stdout")), _tail(os.path.join(root, "stderr"))
  except OSError as e:
    stdout, stderr = "", f"sandbox error: {type(e).__name__}: {e}"
  finally:
    if proc is not None and proc.returncode is None:
      _killpg(proc.pid)
      proc.wait()
    _kill_stragglers(token)
    _remove_tree(root)
  if timed_out:
    status, rc = "timeout", None
  else:
    status, rc = _classify(res, stderr, int(cpu_s))
  return SandboxResult(passed=status == "ok", status=status, stdout=stdout, stderr=stderr,
                       wall_s=time.monotonic() - start, returncode=rc)


def _killpg(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
