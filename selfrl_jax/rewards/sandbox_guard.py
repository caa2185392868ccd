"""The audit hook of the sandboxed program's process (what it refuses: see sandbox.py).

Self-contained: sandbox.py sends this file's text to the sandbox's child process, which executes
it and calls `install` before it runs the program.
"""

import os
import sys


def install(work):
  """Installs the audit hook; `work` is the only directory the program may write in."""
  work = os.path.realpath(work)
  me = os.readlink("/proc/self")  # Our pid as this /proc mount numbers it (namespaces differ).
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
      if not isinstance(path, int):  # Other processes' memory, fds, environment: the supervisor's too.
        parts = resolve(path).split(os.sep)
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != me:
          raise SandboxViolation(f"sandbox: another process's /proc entry refused: {path!r}")
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
  import ctypes, posix, signal, _signal
  sys.addaudithook(hook)
  def refuse(*a, **k):
    raise SandboxViolation("sandbox: process creation or signalling refused")
  try:
    import _posixsubprocess
    _posixsubprocess.fork_exec = refuse
  except ImportError:
    pass
  # Signals without an audit event. A re-import brings them back: what keeps the supervisor alive
  # is the PID namespace (its init gets no SIGKILL from inside); without one, C can kill it (no pass).
  for mod, name in ((os, "pidfd_open"), (posix, "pidfd_open"), (signal, "pidfd_send_signal"),
                    (_signal, "pidfd_send_signal")):
    if hasattr(mod, name):
      setattr(mod, name, refuse)
