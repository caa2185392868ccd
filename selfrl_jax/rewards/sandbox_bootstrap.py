"""The sandbox's two processes: the supervisor S and the child C (guarantees: see sandbox.py).

Never imported: sandbox.py compiles it and runs it as `python -I -B -c LOADER ROOT CFG VERDICT_FD`,
so the sandboxed interpreters import nothing of ours.
S (the first process of the namespaces) forks C. C closes VERDICT_FD, sets its resource limits and
the audit hook, and runs ROOT/program.py. Then:
  * without tests, C writes a nonce to a pipe if the program reached its end. This verdict is
    forgeable: the program shares the process that holds the nonce.
  * with tests (ROOT/tests.py, which S reads and deletes before the fork), C answers requests on
    two pipes while S runs the tests itself. Names the tests do not define are looked up in the
    program's namespace in C, and everything done with C's objects is a request to C. The verdict
    is "the tests ran to the end in S without an exception and C answered every request": C only
    ever sends values and is never sent the tests or the expected values. Plain data crosses as
    copies (a program that mutates its argument in place is not seen doing so), and names the
    tests assign stay in S.
S then writes one JSON result to VERDICT_FD, a socket that only S holds.

Wire format: one JSON object per line, never pickle. S -> C: {"op": "global", "name"} (a
program-level name; KeyError if it has none), {"op": "apply", "fn", "args", "kw"} (fn from
`_fns()`: call, getattr, operators, ...), {"op": "plain", "v"} (the plain-data copy of an object).
C -> S: {"ready": 1} once the program has run, then {"v": VALUE} or {"e": [exception type, text]}.
VALUE: null, booleans, strings, floats (NaN/Infinity included) and ints under 2**63 as themselves;
a JSON array is a list; {"T": tag, "v": ...} tags int (hex), tuple, dict (pairs), set, frozenset,
bytes (latin-1), complex, slice, frac, dec, type (a plain builtin type by name), mod (a module by
name, with a ref), ref (an object that stays in C, by id). S rebuilds every value itself, so an
object of C's can only reach the tests as a `Remote`.
"""

import json
import os
import sys

_BIG = 1 << 63
_MAX_LINE = 8 << 20  # Longest reply S reads; a longer value stays in C, as a reference.
_MAX_DEPTH = 48
_MAX_NODES = 1_000_000  # Likewise.
_PLAIN = (int, float, complex, str, bytes, tuple, list, dict, set, frozenset)  # bool is an int.
_TYPES = {t.__name__: t for t in (bool, *_PLAIN)}
# Standard modules S will not import when C says a name is one (import-time side effects).
_NO_IMPORT = frozenset(("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"))


# ----------------------------------------------------------------------------------------- values

class _NotPlain(Exception):
  """A value that cannot travel by value where it stands (a set element or a dict key)."""


class _TooBig(Exception):
  """A value too large or too deep to travel by value."""


def _encode(v, other, key=False, depth=0, count=None):
  """JSON for `v`; `other(v, key, depth, count)` encodes what is not plain data (or raises)."""
  count = [0] if count is None else count
  count[0] += 1
  if depth > _MAX_DEPTH or count[0] > _MAX_NODES:
    raise _TooBig
  t = type(v)
  if v is None or t is bool or t is str or t is float:
    return v
  if t is int:
    return v if -_BIG < v < _BIG else {"T": "int", "v": hex(v)}
  if t is list or t is tuple:
    items = [_encode(x, other, key, depth + 1, count) for x in v]
    return items if t is list else {"T": "tuple", "v": items}
  if t is dict or t is set or t is frozenset:
    try:
      if t is dict:
        body = [[_encode(k, other, True, depth + 1, count), _encode(x, other, key, depth + 1, count)]
                for k, x in v.items()]
      else:
        body = [_encode(x, other, True, depth + 1, count) for x in v]
    except _NotPlain:
      if key:
        raise
      return other(v, key, depth, count)  # The whole container, then.
    return {"T": t.__name__, "v": body}
  if t is bytes:
    return {"T": "bytes", "v": v.decode("latin-1")}
  if t is complex:
    return {"T": "complex", "v": [v.real, v.imag]}
  if t is slice:
    return {"T": "slice", "v": [_encode(x, other, key, depth + 1, count) for x in (v.start, v.stop, v.step)]}
  for name, tag, parts in (("fractions", "frac", lambda f: [hex(f.numerator), hex(f.denominator)]),
                           ("decimal", "dec", str)):
    mod = sys.modules.get(name)
    if mod is not None and t is getattr(mod, "Fraction" if tag == "frac" else "Decimal"):
      return {"T": tag, "v": parts(v)}
  if any(v is x for x in _TYPES.values()):
    return {"T": "type", "v": v.__name__}
  return other(v, key, depth, count)


def _decode(x, on_ref, key=False, depth=0):
  """The value that JSON `x` encodes; `on_ref(x, key)` turns a ref / mod tag into an object."""
  if depth > _MAX_DEPTH + 2:
    raise ValueError("value nested too deeply")
  t = type(x)
  if x is None or t is bool or t is int or t is float or t is str:
    return x
  if t is list and not key:
    return [_decode(i, on_ref, False, depth + 1) for i in x]
  if t is not dict:
    raise ValueError(f"not a value: {t.__name__}")
  tag, v = x.get("T"), x.get("v")
  def items(k=key):
    if type(v) is not list:
      raise ValueError(f"malformed {tag}")
    return [_decode(i, on_ref, k, depth + 1) for i in v]
  if tag == "int":
    return int(str(v), 16)
  if tag == "tuple":
    return tuple(items())
  if tag == "frozenset" or (tag == "set" and not key):
    return (set if tag == "set" else frozenset)(items(True))
  if tag == "dict" and not key:
    if type(v) is not list or not all(type(p) is list and len(p) == 2 for p in v):
      raise ValueError("malformed dict")
    return {_decode(k, on_ref, True, depth + 1): _decode(x, on_ref, False, depth + 1) for k, x in v}
  if tag == "bytes":
    return str(v).encode("latin-1")
  if tag == "complex":
    re_, im = items()
    return complex(float(re_), float(im))
  if tag == "slice":
    return slice(*items()[:3])
  if tag == "frac":
    import fractions
    return fractions.Fraction(int(str(v[0]), 16), int(str(v[1]), 16))
  if tag == "dec":
    import decimal
    return decimal.Decimal(str(v))
  if tag == "type":
    return _TYPES[str(v)]
  if tag in ("ref", "mod"):
    return on_ref(x, key)
  return _bad(tag)


def _bad(tag):
  raise ValueError(f"unexpected value tag {tag!r}")


def _write(fd, msg):
  data = ((msg if type(msg) is str else json.dumps(msg, separators=(",", ":"))) + "\n").encode()
  while data:
    data = data[os.write(fd, data):]


class _Lines:
  """JSON lines from an fd, at most _MAX_LINE bytes each."""

  def __init__(self, fd):
    self.fd, self.buf, self.scanned = fd, bytearray(), 0

  def read(self):
    while True:
      i = self.buf.find(b"\n", self.scanned)
      if i >= 0:
        line = bytes(self.buf[:i])
        del self.buf[:i + 1]
        self.scanned = 0
        return json.loads(line)
      self.scanned = len(self.buf)
      if len(self.buf) > _MAX_LINE:
        raise ValueError("message too long")
      chunk = os.read(self.fd, 1 << 16)
      if not chunk:
        raise EOFError("the program under test exited")
      self.buf += chunk


# ---------------------------------------------------------------------------- C: the program side

# What S may ask C to do with its objects (each also a dunder of Remote, except the first four).
_CMP_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
_BINARY = ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "divmod", "pow", "lshift",
           "rshift", "and", "or", "xor")
_UNARY = ("repr", "str", "hash", "len", "bool", "iter", "next", "reversed", "contains", "getitem",
          "setitem", "delitem", "int", "float", "complex", "index", "round", "format", "trunc",
          "floor", "ceil", "neg", "pos", "abs", "invert")


def _fns():
  import builtins, math, operator
  fns = {"call": lambda f, *a, **k: f(*a, **k), "getattr": getattr, "setattr": setattr,
         "delattr": delattr}
  for name in _CMP_OPS + _BINARY + _UNARY:
    fns[name] = next(getattr(m, n) for m in (builtins, operator, math) for n in (name, name + "_")
                     if hasattr(m, n))
  return fns


def _serve(g, rfd, wfd):
  """Answers S's requests about the program's namespace `g` until S closes the pipe."""
  import importlib, types
  fns, objs = _fns(), {}
  def other(v, key, depth, count):
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.generic) and type(v.item()) is not type(v):
      return _encode(v.item(), other, key, depth, count)
    if key:
      raise _NotPlain
    objs[len(objs)] = v
    if isinstance(v, types.ModuleType):
      return {"T": "mod", "v": v.__name__, "id": len(objs) - 1}
    return {"T": "ref", "id": len(objs) - 1, "plain": isinstance(v, _PLAIN)}
  def on_ref(x, key):
    return importlib.import_module(x["v"]) if x["T"] == "mod" else objs[x["id"]]
  def reply(v):
    try:
      data = json.dumps({"v": _encode(v, other)}, separators=(",", ":"))
      if len(data) < _MAX_LINE:
        return data
    except _TooBig:
      pass
    return json.dumps({"v": other(v, False, 0, [0])})
  lines = _Lines(rfd)
  _write(wfd, {"ready": 1})
  while True:
    try:
      msg = lines.read()
    except (EOFError, OSError):
      break
    try:
      op = msg["op"]
      if op == "global":
        value = g[msg["name"]]
      elif op == "apply":
        value = fns[msg["fn"]](*_decode(msg["args"], on_ref),
                               **{k: _decode(a, on_ref) for k, a in msg["kw"]})
      else:  # "plain": the object as the plain type it is an instance of (snapshot for comparisons).
        obj = _decode(msg["v"], on_ref)
        value = next((t(obj) for t in _PLAIN if isinstance(obj, t)), obj)
      data = reply(value)
    except SystemExit as e:  # The program ended itself, as it would have in-process.
      _exit(e)
    except BaseException as e:
      try:
        text = str(e)[:2000]
      except BaseException:
        text = ""
      data = json.dumps({"e": [type(e).__name__, text]})
    _write(wfd, data)
  _flush()
  os._exit(0)


def _child(root, cfg, done):
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
        # CPU: the soft limit sends SIGXCPU (a clear "timeout"); the hard one, a second later, SIGKILL
        # for a program that ignores it. With both equal the kernel's SIGKILL came first, and a
        # lagging rusage could not tell it from another killer (a flaky "killed" under load).
        resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Over-long writes raise OSError instead.
    if cfg["guard"]:  # sandbox_guard.py, compiled.
      import marshal
      ns = {}
      with open(os.path.join(root, "sandbox.code"), "rb") as f:
        exec(marshal.loads(f.read())[1], ns)
      ns.pop("install")(work)
  except BaseException as e:
    sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
    _flush()
    os._exit(121)
  g = {"__name__": cfg["run_name"], "__builtins__": __builtins__, "__file__": "program.py"}
  sys.argv = ["program.py"]
  try:
    exec(compile(source, "program.py", "exec"), g)
  except SystemExit as e:
    _exit(e)
  except BaseException:
    import traceback
    traceback.print_exc()
    _flush()
    os._exit(1)
  _flush()
  done(g)
  _flush()
  os._exit(0)


def _exit(e):  # On SystemExit.
  _flush()
  os._exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))


def _flush():
  for s in (sys.stdout, sys.stderr):
    try:
      s.flush()
    except BaseException:
      pass


# --------------------------------------------------------------------------- S: the test side

class RemoteError(Exception):
  """An exception of the program under test that is not a builtin one."""


class ChannelBroken(BaseException):
  """C died or broke the protocol: no test can pass any more (not an Exception: tests can't catch it)."""


class _Channel:
  def __init__(self, wfd, rfd):
    self.wfd, self.lines, self.broken, self.died = wfd, _Lines(rfd), None, False

  def _fail(self, e):
    self.died = self.died or isinstance(e, (EOFError, BrokenPipeError))
    self.broken = self.broken or f"{type(e).__name__}: {e}"
    raise ChannelBroken(f"sandbox: the program under test died or broke the protocol ({self.broken})")

  def ready(self):
    try:
      if self.lines.read() != {"ready": 1}:
        raise ValueError("bad greeting")
    except Exception as e:
      self._fail(e)

  def request(self, msg):
    if self.broken:
      raise ChannelBroken(f"sandbox: the program under test died or broke the protocol ({self.broken})")
    try:
      _write(self.wfd, msg)
      reply = self.lines.read()
      if type(reply) is dict and "v" in reply:
        return _decode(reply["v"], self._on_ref)
      name, text = reply["e"]
      exc = _exception(str(name), str(text)[:2000])
    except ChannelBroken:
      raise
    except Exception as e:
      self._fail(e)
    raise exc

  def apply(self, fn, args, kw=None):
    return self.request({"op": "apply", "fn": fn, "args": [_encode(a, _s_other) for a in args],
                         "kw": [[k, _encode(a, _s_other)] for k, a in (kw or {}).items()]})

  def _on_ref(self, x, key):
    if key:
      raise ValueError("an object of the program as a dict key or set element")
    if x["T"] == "mod":
      module = _stdlib_module(x.get("v"))
      if module is not None:
        return module
    if type(x.get("id")) is not int:
      raise ValueError("malformed ref")
    return Remote(self, x["id"], x.get("plain") is True)


def _exception(name, text):
  import builtins
  cls = getattr(builtins, name, None)
  if isinstance(cls, type) and issubclass(cls, Exception):
    try:
      return cls(text)
    except Exception:
      pass
  return RemoteError(f"{name}: {text}")


def _stdlib_module(name):
  """S's own copy of the standard module `name`, or None."""
  if type(name) is not str or not all(p.isidentifier() for p in name.split(".")):
    return None
  top = name.split(".")[0]
  if top.startswith("_") or top in _NO_IMPORT or top not in sys.stdlib_module_names:
    return None
  import importlib
  try:
    return importlib.import_module(name)
  except Exception:
    return None


def _s_other(v, key, depth, count):
  import types
  if type(v) is Remote:
    return {"T": "ref", "id": v._rid}
  if isinstance(v, types.ModuleType):
    return {"T": "mod", "v": v.__name__}
  raise TypeError(f"sandbox: a {type(v).__name__} cannot be passed to the program under test")


class Remote:
  """An object that stays in C: every use of it is a request to C.

  Comparisons with the tests' own values never run C's code: they compare the plain-data copy of
  C's object (when it is an instance of int, str, tuple, list, dict, ... or a subclass), else they
  are NotImplemented (== is False, != True, < raises TypeError), so an object whose __eq__ always
  returns True equals nothing. Between two objects of C's, C compares (in-process semantics), and
  so it does for everything else (bool, len, in, arithmetic, ...). isinstance() sees a Remote.
  """
  __slots__ = ("_ch", "_rid", "_plain")

  def __init__(self, ch, rid, plain):
    object.__setattr__(self, "_ch", ch)
    object.__setattr__(self, "_rid", rid)
    object.__setattr__(self, "_plain", plain)

  def __getattr__(self, name):
    if name in Remote.__slots__:  # A copy made without __init__.
      raise AttributeError(name)
    return self._ch.apply("getattr", (self, name))

  def __setattr__(self, name, value):
    self._ch.apply("setattr", (self, name, value))

  def __delattr__(self, name):
    self._ch.apply("delattr", (self, name))

  def __call__(self, *args, **kw):
    return self._ch.apply("call", (self, *args), kw)


def _forward(fn, reflected=False):
  if reflected:
    return lambda self, other: self._ch.apply(fn, (other, self))
  return lambda self, *args: self._ch.apply(fn, (self, *args))


def _compare(fn):
  import operator
  local = getattr(operator, fn)
  def method(self, other):
    if type(other) is Remote:
      return self._ch.apply(fn, (self, other))
    if not self._plain:
      return NotImplemented
    mine = self._ch.request({"op": "plain", "v": {"T": "ref", "id": self._rid}})
    return NotImplemented if type(mine) is Remote else local(mine, other)
  return method


for _fn in _UNARY:
  setattr(Remote, f"__{_fn}__", _forward(_fn))
for _fn in _BINARY:
  setattr(Remote, f"__{_fn}__", _forward(_fn))
  setattr(Remote, f"__r{_fn}__", _forward(_fn, reflected=True))
for _fn in _CMP_OPS:
  setattr(Remote, f"__{_fn}__", _compare(_fn))


class RemoteGlobals(dict):
  """The tests' globals: a name they do not define is the program's (a request), else a builtin.

  A name the program lacked once (a builtin, mostly) is not asked for again.
  """
  __slots__ = ("_ch", "_absent")

  def __init__(self, ch):
    super().__init__(__name__="__sandbox_tests__")
    self._ch, self._absent = ch, set()

  def __missing__(self, name):
    if type(name) is not str or (name.startswith("__") and name.endswith("__")) or name in self._absent:
      raise KeyError(name)
    try:
      return self._ch.request({"op": "global", "name": name})
    except KeyError:
      self._absent.add(name)
      raise


def _reap(pid, grace_s):
  """Waits for C (SIGKILL after `grace_s`); returns (wait status, rusage, killed by us)."""
  import signal, time
  end, killed = time.monotonic() + grace_s, False
  while True:
    done, status, usage = os.wait4(pid, 0 if killed else os.WNOHANG)
    if done:
      return status, usage, killed
    if time.monotonic() > end:
      os.kill(pid, signal.SIGKILL)
      killed = True
    else:
      time.sleep(0.001)


def _run_tests(root, cfg, vfd):
  path = os.path.join(root, "tests.py")
  with open(path, encoding="utf-8") as f:
    code = compile(f.read(), "<tests>", "exec")
  os.unlink(path)  # Nothing of the tests is left for C to read.
  req_r, req_w = os.pipe()
  resp_r, resp_w = os.pipe()
  pid = os.fork()
  if pid == 0:
    try:
      for fd in (vfd, req_w, resp_r):
        os.close(fd)
      _child(root, cfg, lambda g: _serve(g, req_r, resp_w))
    finally:
      os._exit(1)
  os.close(req_r)
  os.close(resp_w)
  os.chdir("/")
  ch, completed = _Channel(req_w, resp_r), False
  try:
    ch.ready()
    exec(code, RemoteGlobals(ch))
    completed = ch.broken is None
  except ChannelBroken as e:
    sys.stderr.write(f"{e}\n")
  except BaseException:
    import traceback
    traceback.print_exc()
  finally:
    sys.stderr.flush()
  os.close(req_w)
  os.close(resp_r)
  status, usage, killed = _reap(pid, 1.0)
  rc = os.waitstatus_to_exitcode(status)
  if completed:
    rc = 0
  elif not ch.died or killed:  # C was alive: the tests failed, or C broke the protocol.
    rc = 1
  return {"returncode": rc, "completed": completed, "cpu_s": usage.ru_utime + usage.ru_stime}


def _run_program(root, cfg, vfd):
  nonce = os.urandom(16).hex().encode()
  rfd, wfd = os.pipe()
  pid = os.fork()
  if pid == 0:
    try:
      os.close(vfd)
      os.close(rfd)
      _child(root, cfg, lambda g: os.write(wfd, nonce))
    finally:
      os._exit(1)
  os.close(wfd)
  _, status, usage = os.wait4(pid, 0)
  got = os.read(rfd, 64)
  return {"returncode": os.waitstatus_to_exitcode(status), "completed": got == nonce,
          "cpu_s": usage.ru_utime + usage.ru_stime}


def _main():
  import signal
  root, cfg, vfd = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
  # -I leaves neither the working directory nor ROOT on sys.path; S imports only installed modules.
  sys.path[:] = [p for p in sys.path if os.path.isabs(p) and not p.startswith(root)]
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # As namespace init, S then gets no signal from C.
  res = (_run_tests if cfg["tests"] else _run_program)(root, cfg, vfd)
  os.write(vfd, json.dumps(res).encode())
  os._exit(0)


if __name__ == "__main__":
  _main()
