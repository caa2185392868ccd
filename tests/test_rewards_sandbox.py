"""Sandbox: misbehaving programs are contained, killed in time, and leave no files or processes."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import time
import uuid

import psutil
import pytest

from selfrl_jax.rewards.sandbox import namespaces_available, run_in_sandbox

MARKER = f"sbxmark{uuid.uuid4().hex}"
TIMEOUT_S = 3.0
SLACK_S = 2.0  # Interpreter start-up and clean-up on a busy 2-core machine.


def _marked_processes(marker: str = MARKER) -> list[psutil.Process]:
  found = []
  for proc in psutil.process_iter(["cmdline"]):
    try:
      if marker in " ".join(proc.info["cmdline"] or []):
        found.append(proc)
    except psutil.Error:
      continue
  return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs every scenario concurrently once; yields {name: (result, scratch dir, base dir)}."""
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(8)
  listener.setblocking(False)
  port = listener.getsockname()[1]

  scenarios = {
      "hello": ("import sys\nprint('hello', sum(range(10)))\nprint('err', file=sys.stderr)", {}),
      "infinite_loop": ("while True:\n  pass", {"cpu_s": 1}),
      "sleep_forever": ("import time\ntime.sleep(1000)", {}),
      "huge_alloc": ("x = bytearray(8 << 30)", {"memory_mb": 256}),
      "growing_alloc": ("chunks = []\nwhile True:\n  chunks.append(bytearray(32 << 20))",
                        {"memory_mb": 256}),
      "fork_bomb": ("import os\nwhile True:\n  os.fork()", {}),
      "subprocess_bomb": ("import subprocess, sys\nwhile True:\n"
                          "  subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])", {}),
      "write_outside": ("open({outside!r}, 'w').write('pwned')", {}),
      "write_outside_relative": ("import os\nopen(os.path.join('..', '..', 'escaped.txt'), 'w').write('x')",
                                 {}),
      "delete_outside": ("import os\nos.remove({victim!r})", {}),
      "socket_connect": (f"import socket\ns = socket.socket()\ns.settimeout(1)\n"
                         f"s.connect(('127.0.0.1', {port}))\ns.sendall(b'hi')", {}),
      "socket_bind": ("import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(1)\n"
                      "print('listening on', s.getsockname())", {}),
      "early_exit": ("import sys\nsys.exit(0)\nassert False", {}),
      # The same protections hold while the program answers the tests (which run outside it).
      "loop_in_call": ("def f():\n  while True:\n    pass", {"cpu_s": 1, "tests": "f()"}),
      "fork_in_call": ("import os\ndef f():\n  while True:\n    os.fork()", {"tests": "f()"}),
      "write_outside_in_call": ("def f():\n  open({outside!r}, 'w').write('pwned')",
                                {"tests": "f()"}),
  }
  out = {}
  with cf.ThreadPoolExecutor(len(scenarios)) as pool:
    futures = {}
    for name, (code, kwargs) in scenarios.items():
      scratch = tmp_path_factory.mktemp(name)
      base = scratch / "sandboxes"
      base.mkdir()
      (scratch / "victim.txt").write_text("keep me")
      code = code.format(outside=str(scratch / "outside.txt"), victim=str(scratch / "victim.txt"))
      code = f"# {MARKER}\n{code}"
      kwargs = {"timeout_s": TIMEOUT_S, "label": MARKER, "tmp_dir": str(base), **kwargs}
      futures[name] = (pool.submit(run_in_sandbox, code, **kwargs), scratch, base)
    for name, (fut, scratch, base) in futures.items():
      out[name] = (fut.result(), scratch, base)
  try:
    conn, _ = listener.accept()
    conn.close()
    out["_accepted_connection"] = True
  except BlockingIOError:
    out["_accepted_connection"] = False
  finally:
    listener.close()
  return out


def test_well_behaved_program_passes(runs):
  result, _, base = runs["hello"]
  assert result.passed and result.status == "ok" and result.returncode == 0
  assert result.stdout == "hello 45\n"
  assert result.stderr == "err\n"
  assert list(base.iterdir()) == []


@pytest.mark.parametrize("name,statuses", [
    ("infinite_loop", {"timeout"}), ("sleep_forever", {"timeout"}), ("huge_alloc", {"memory"}),
    ("growing_alloc", {"memory"}), ("fork_bomb", {"blocked"}), ("subprocess_bomb", {"blocked"}),
    ("write_outside", {"blocked"}), ("write_outside_relative", {"blocked"}),
    ("delete_outside", {"blocked"}), ("socket_connect", {"blocked"}), ("socket_bind", {"blocked"}),
    ("early_exit", {"failed"}), ("loop_in_call", {"timeout"}), ("fork_in_call", {"blocked"}),
    ("write_outside_in_call", {"blocked"}),
])
def test_misbehaviour_is_contained(runs, name, statuses):
  result, scratch, base = runs[name]
  assert not result.passed
  assert result.status in statuses, (result.status, result.stderr[-500:])
  assert result.wall_s < TIMEOUT_S + SLACK_S
  assert list(base.iterdir()) == [], "the sandbox directory was left behind"
  assert not (scratch / "outside.txt").exists()
  assert not (scratch / "escaped.txt").exists()
  assert (scratch / "victim.txt").read_text() == "keep me"


def test_cpu_limit_fires_before_wall_clock(runs):
  # cpu_s=1: the kernel stops the loop long before the 3 s wall clock.
  assert runs["infinite_loop"][0].wall_s < TIMEOUT_S


def test_no_network_and_no_processes_left(runs):
  assert runs["_accepted_connection"] is False
  assert "listening on" not in runs["socket_bind"][0].stdout
  assert _marked_processes() == []


def test_outer_layers_kill_escaped_processes(tmp_path):
  """With the audit hook off, children that leave the process group still die with the run."""
  marker = f"escape{uuid.uuid4().hex}"
  code = (
      "import subprocess, sys\n"
      "for _ in range(4):\n"
      f"  subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)  # {marker}'],\n"
      "                   start_new_session=True)\n"
      "print('spawned', flush=True)\n"
      "import time\ntime.sleep(120)\n")
  with cf.ThreadPoolExecutor(1) as pool:
    fut = pool.submit(run_in_sandbox, code, timeout_s=TIMEOUT_S, guard=False, tmp_dir=str(tmp_path))
    seen = 0
    while not fut.done():
      seen = max(seen, len(_marked_processes(marker)))
      time.sleep(0.05)
    result = fut.result()
  assert seen == 4, "the escaping children never started, so the test proves nothing"
  assert result.status == "timeout" and result.stdout == "spawned\n"
  assert result.wall_s < TIMEOUT_S + SLACK_S
  deadline = time.monotonic() + 2
  while _marked_processes(marker) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert _marked_processes(marker) == []
  assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not namespaces_available(), reason="no network namespace on this machine")
def test_network_namespace_without_hook():
  result = run_in_sandbox(
      "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", guard=False,
      timeout_s=TIMEOUT_S)
  assert result.status == "failed"
  assert "Network is unreachable" in result.stderr
