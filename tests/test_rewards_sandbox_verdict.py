"""The test verdict cannot be forged from inside the program under test (issue 14).

With `run_in_sandbox(program, tests=...)` the tests run in the sandbox's supervisor, outside the
program's process; these programs try to fake a pass anyway, and each must score 0. Where an attack
worked against the previous harness (tests appended to the program, verdict = a nonce the program's
process wrote at its end), the test shows that too, with the legacy mode that still works that way.
"""

from __future__ import annotations

import pytest

from selfrl_jax.rewards.code_tests import mbpp_check, mbpp_reward
from selfrl_jax.rewards.sandbox import namespaces_available, run_in_sandbox

# MBPP task 2.
TESTS = ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
         "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
         "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]
RIGHT = "def similar_elements(a, b):\n  return tuple(sorted(set(a) & set(b)))\n"
WRONG = "def similar_elements(a, b):\n  return ()\n"

# Walks up the stack to the harness's frames and writes whatever could be a verdict to every fd
# it finds there: the nonce, a fake "ready" plus fake answers, a fake result; then exits 0.
FORGER = r'''
import json, os, sys
def _forge():
  payloads = [b'{"ready":1}\n' + b'{"v":true}\n' * 20,
              json.dumps({"returncode": 0, "completed": True, "cpu_s": 0.0}).encode()]
  fds, frame = set(), sys._getframe()
  while frame is not None:
    cells = [c.cell_contents for v in frame.f_locals.values()
             for c in (getattr(v, "__closure__", None) or ()) if c.cell_contents is not None]
    for v in [*frame.f_locals.values(), *cells]:
      if isinstance(v, bytes) and len(v) == 32:  # The legacy harness's nonce: that is all it takes.
        payloads = [v]
      if isinstance(v, int) and not isinstance(v, bool) and 2 < v < 256:
        fds.add(v)
    frame = frame.f_back
  for fd in sorted(fds):
    for p in payloads:
      try:
        os.write(fd, p)
      except OSError:
        pass
  os._exit(0)
'''


def legacy_reward(completion_program: str, tests: list[str]) -> float:
  """What the previous harness computed: the asserts appended to the program, one process."""
  return float(run_in_sandbox(completion_program + "\n" + "\n".join(tests) + "\n",
                              run_name="__sandbox__").passed)


def test_reference_and_wrong_solutions():
  assert mbpp_reward(RIGHT, TESTS) == 1.0 and mbpp_reward(WRONG, TESTS) == 0.0


# (a) Before: the frame walk finds `nonce` and the pipe fd in the harness's frame, writes the nonce
# and exits 0 before the asserts run, so the old harness scored the wrong solution 1.
@pytest.mark.parametrize("where", ["top level", "inside the tested function"])
def test_frame_walk_forgery_scores_zero(where):
  if where == "top level":
    program = WRONG + FORGER + "_forge()\n"
  else:  # Called by the tests: the harness frames are then those that answer the tests' requests.
    program = FORGER + "def similar_elements(a, b):\n  _forge()\n"
  if where == "top level":
    assert legacy_reward(program, TESTS) == 1.0, "the attack no longer works on the old harness"
  result = run_in_sandbox(mbpp_check(program, TESTS).candidate, tests="\n".join(TESTS))
  assert not result.passed and result.status == "failed", (result.status, result.stderr[-500:])
  assert mbpp_reward(program, TESTS) == 0.0


# (b) Markers and early exits. The old harness already refused these (exit 0 without the nonce); a
# harness that trusts exit status 0 or a printed marker would have scored them 1.
@pytest.mark.parametrize("program", [
    WRONG + "print('PASSED'); print('All tests passed'); print('ok')\n",
    WRONG + "import sys\nsys.exit(0)\n",
    WRONG + "import os\nos._exit(0)\n",
    WRONG + "raise SystemExit\n",
    "import sys\ndef similar_elements(a, b):\n  print('PASSED', flush=True)\n  sys.exit(0)\n",
    "import os\ndef similar_elements(a, b):\n  os._exit(0)\n",
])
def test_markers_and_early_exit_score_zero(program):
  assert mbpp_reward(program, TESTS) == 0.0


# (c) An object whose __eq__ always returns True passes in-process asserts (reward hacking of weak
# tests, not a forged verdict). Design choice: comparing the program's object with the tests' value
# never runs the program's __eq__; S compares the object's plain-data copy (for instances of int,
# str, tuple, list, dict, ... and their subclasses), else the comparison is NotImplemented.
ALWAYS_EQUAL = ("class Anything:\n  def __eq__(self, other):\n    return True\n"
                "  def __ne__(self, other):\n    return False\n  __hash__ = object.__hash__\n")


def test_always_equal_object_scores_zero():
  program = ALWAYS_EQUAL + "def similar_elements(a, b):\n  return Anything()\n"
  assert legacy_reward(program, TESTS) == 1.0
  assert mbpp_reward(program, TESTS) == 0.0


def test_plain_subclasses_compare_by_their_plain_copy():
  sneaky = "class T(tuple):\n  def __eq__(self, other):\n    return True\n  __hash__ = tuple.__hash__\n"
  assert legacy_reward(sneaky + "def similar_elements(a, b):\n  return T()\n", TESTS) == 1.0
  assert mbpp_reward(sneaky + "def similar_elements(a, b):\n  return T()\n", TESTS) == 0.0
  # ... and pass when the copy is right (a namedtuple solution is a real solution).
  assert mbpp_reward(sneaky + "def similar_elements(a, b):\n  return T(sorted(set(a) & set(b)))\n",
                     TESTS) == 1.0
  named = ("from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
           "def similar_elements(a, b):\n  return P(*sorted(set(a) & set(b)))\n")
  assert mbpp_reward(named, TESTS) == 1.0


def test_program_objects_compare_in_the_program():
  # Both sides are the program's objects: the program compares them, as it would in-process.
  program = ALWAYS_EQUAL + "def make(x):\n  return Anything()\n"
  assert run_in_sandbox(program, tests="assert make(1) == make(2)\nassert make(1) == Anything()\n").passed


# (d) The verdict channel and the result: the supervisor's socket (fd number in sys.orig_argv),
# reopened through /proc, a result file next to the working directory, the supervisor killed. The
# old harness read result.json from the run's directory, outside the writable working directory.
CHANNEL_ATTACK = r'''
import importlib, os, signal, sys
report = []
def attempt(name, fn):
  try:
    fn()
    report.append(f"{name}: DONE")
  except BaseException as e:
    report.append(f"{name}: {type(e).__name__}")
forged = b'{"returncode": 0, "completed": true, "cpu_s": 0.0}'
verdict_fd = int(sys.orig_argv[7])
attempt("write the verdict fd", lambda: os.write(verdict_fd, forged))
with open("/proc/self/status") as f:
  host_ppid = int(next(line.split()[1] for line in f if line.startswith("PPid:")))
for pid in sorted({os.getppid(), host_ppid}):
  attempt(f"reopen /proc/{pid}/fd/verdict", lambda: open(f"/proc/{pid}/fd/{verdict_fd}", "wb").write(forged))
attempt("write result.json", lambda: open(os.path.join("..", "result.json"), "w").write(forged.decode()))
attempt("os.kill the supervisor", lambda: os.kill(os.getppid(), signal.SIGKILL))
def pidfd_kill():  # pidfd_send_signal has no audit event; re-import the modules the hook patched.
  for name in ("posix", "_signal"):
    sys.modules.pop(name, None)
  posix, _signal = importlib.import_module("posix"), importlib.import_module("_signal")
  for pid in sorted({os.getppid(), host_ppid}):
    try:
      _signal.pidfd_send_signal(posix.pidfd_open(pid), signal.SIGKILL)
    except ProcessLookupError:
      pass
attempt("pidfd_send_signal the supervisor", pidfd_kill)
print("\n".join(report), flush=True)
'''


@pytest.mark.parametrize("guard", [True, False])
def test_verdict_channel_is_out_of_reach(guard):
  if not guard and not namespaces_available():
    pytest.skip("without the audit hook only the PID namespace keeps the supervisor alive")
  check = mbpp_check(CHANNEL_ATTACK + WRONG, TESTS)
  result = run_in_sandbox(check.candidate, tests=check.tests, guard=guard)
  report = dict(line.split(": ") for line in result.stdout.splitlines())
  assert len(report) >= 5, result.stdout + result.stderr
  assert not result.passed
  for attack in ("write the verdict fd", "write result.json" if guard else "",
                 *[k for k in report if k.startswith("reopen")]):
    if attack:
      assert report[attack] != "DONE", (attack, report)
  if guard:
    assert report["os.kill the supervisor"] == "SandboxViolation"
  if namespaces_available():  # The supervisor survived every attempt and gave its verdict.
    assert result.status == "failed", (result.status, result.stderr[-500:])
    assert "AssertionError" in result.stderr


# ------------------------------------------------ the tests see the program as they would in-process

def test_names_inside_test_functions_and_modules():
  program = ("import math\nfrom collections import Counter\n"
             "def helper(i):\n  return i * i\n"
             "def entry(n):\n  return [helper(i) for i in range(n)]\n"
             "class Node:\n  def __init__(self, data, left=None):\n    self.data, self.left = data, left\n"
             "def depth(node):\n  return 0 if node is None else 1 + depth(node.left)\n"
             "root = Node(1, Node(2))\n")
  tests = ("METADATA = {}\n"
           "def check(candidate):\n"
           "  assert candidate(3) == [0, 1, 4]\n"
           "  for i in range(5):\n"  # A builtin, then the program's helper, inside a function.
           "    assert helper(i) == i * i\n"
           "  assert len(candidate(4)) == 4 and sorted(candidate(3), reverse=True)[0] == 4\n"
           "check(entry)\n"
           "assert math.isclose(math.sqrt(2) ** 2, 2) and type(math).__name__ == 'module'\n"
           "assert Counter('aab') == {'a': 2, 'b': 1}\n"
           "assert depth(root) == 2 and depth(Node(5)) == 1 and root.left.data == 2\n")
  result = run_in_sandbox(program, tests=tests)
  assert result.passed, result.stderr


def test_values_cross_intact():
  program = "def echo(x):\n  return x\n"
  tests = ("import decimal, fractions\n"
           "values = [None, True, 0, -7, 10**40, -(2**63), 2**63, 1.5, -0.0, float('inf'), 'h\\u00e9\\x00',\n"
           "          b'\\x00\\xff', 2+3j, [1, [2]], (1, (2,)), {(1, 2): {'a': [3]}, 4: None}, {1, (2, 3)},\n"
           "          frozenset({'x'}), fractions.Fraction(1, 3), decimal.Decimal('1.10'), int, slice(1, None)]\n"
           "for v in values:\n"
           "  back = echo(v)\n"
           "  assert back == v and type(back) is type(v), (v, back)\n"
           "nan = echo(float('nan'))\n"
           "assert nan != nan\n"
           "assert echo(10**5000) == 10**5000\n"
           "assert echo(list(range(300000)))[-1] == 299999\n")
  result = run_in_sandbox(program, tests=tests)
  assert result.passed, result.stderr


def test_program_objects_work_remotely():
  program = ("class Box:\n  def __init__(self, v):\n    self.v = v\n"
             "  def __add__(self, o):\n    return Box(self.v + (o.v if isinstance(o, Box) else o))\n"
             "  __radd__ = __add__\n"
             "  def __len__(self):\n    return self.v\n"
             "  def __getitem__(self, i):\n    return list(range(self.v))[i]\n"
             "  def __contains__(self, x):\n    return x == self.v\n"
             "def gen(n):\n  yield from range(n)\n"
             "loop = []\nloop.append(loop)\n"
             "class Oops(Exception):\n  pass\n"
             "def fail(kind):\n  raise {'value': ValueError('bad'), 'key': KeyError('k'), 'own': Oops('mine')}[kind]\n"
             "def apply(f, x):\n  return f(x)\n")
  tests = ("b = Box(3)\n"
           "assert (b + 1).v == 4 and (1 + b).v == 4 and (b + b).v == 6 and len(b) == 3\n"
           "assert b[1] == 1 and b[1:] == [1, 2] and 3 in b and list(b) == [0, 1, 2]\n"
           "b.v = 5\n"
           "assert b.v == 5\n"
           "assert list(gen(4)) == [0, 1, 2, 3] and sum(gen(5)) == 10\n"
           "assert loop[0][0][0] is not None\n"
           "for kind, exc in (('value', ValueError), ('key', KeyError)):\n"
           "  try:\n    fail(kind)\n    raise AssertionError('no exception')\n"
           "  except exc:\n    pass\n"
           "try:\n  fail('own')\nexcept Exception as e:\n  assert type(e).__name__ == 'RemoteError' and 'Oops' in str(e)\n"
           "try:\n  apply(lambda x: x, 1)\n  raise AssertionError('a function of the tests was passed')\n"
           "except TypeError as e:\n  assert 'cannot be passed' in str(e)\n")
  result = run_in_sandbox(program, tests=tests)
  assert result.passed, result.stderr


def test_tests_do_not_import_the_programs_files():
  # The supervisor's sys.path has no working directory: a planted module is not what tests import.
  program = "open('fractions.py', 'w').write('import os\\nos._exit(0)\\n')\nimport fractions\n"
  result = run_in_sandbox(program, tests="import fractions\nassert fractions.Fraction(1, 2) == 0.5\n"
                                         "assert fractions.__name__ == 'fractions'\n")
  assert result.passed, result.stderr


def test_death_during_the_tests_is_not_a_pass():
  # Tests that swallow every exception still fail once the program has died.
  program = "import os\ndef f():\n  os._exit(0)\n"
  result = run_in_sandbox(program, tests="try:\n  f()\nexcept BaseException:\n  pass\n")
  assert not result.passed and result.status == "failed", result.stderr


@pytest.mark.parametrize("body,kw,status", [
    ("  while True:\n    pass\n", {"cpu_s": 1}, "timeout"),
    ("  return bytearray(8 << 30)\n", {"memory_mb": 256}, "memory"),
    ("  open('/tmp/escaped_by_sandbox_test', 'w')\n", {}, "blocked"),
    ("  import time\n  time.sleep(60)\n", {"timeout_s": 1.5}, "timeout"),
])
def test_death_while_answering_is_classified(body, kw, status):
  result = run_in_sandbox("def f():\n" + body, tests="f()\n", **kw)
  assert not result.passed and result.status == status, (result.status, result.stderr[-500:])
