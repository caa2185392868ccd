"""MetricWriter: JSONL round-trip, resume truncation, TensorBoard records read back, NaN handling."""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.train import metrics as metrics_lib
from selfrl_jax.train.metrics import MetricWriter, Timer, read_jsonl


def _read_events(tb_dir: str) -> list:
  """Parses TFRecord-framed Event protos (u64 length, u32 crc, payload, u32 crc) from all files."""
  from tensorboardX.proto import event_pb2

  events = []
  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      pos += 12
      events.append(event_pb2.Event.FromString(data[pos:pos + length]))
      pos += length + 4
  return events


def _scalars(events) -> dict[str, dict[int, float]]:
  out: dict[str, dict[int, float]] = {}
  for ev in events:
    for v in ev.summary.value:
      if v.WhichOneof("value") == "simple_value":
        out.setdefault(v.tag, {})[ev.step] = v.simple_value
  return out


def _histos(events) -> dict[str, dict[int, object]]:
  out: dict[str, dict[int, object]] = {}
  for ev in events:
    for v in ev.summary.value:
      if v.WhichOneof("value") == "histo":
        out.setdefault(v.tag, {})[ev.step] = v.histo
  return out


def test_jsonl_round_trip_nan_and_single_device_get(tmp_path, monkeypatch):
  calls = []
  real_get = jax.device_get
  monkeypatch.setattr(metrics_lib.jax, "device_get", lambda x: calls.append(1) or real_get(x))
  writer = MetricWriter(tmp_path, console=False, tensorboard=False)
  writer.write(1, {"loss": jnp.float32(0.5), "kl": np.float64(0.25), "n": 3, "ok": True,
                   "bad": float("nan"), "inf": jnp.inf, "hist": jnp.array([1.0, 2.0, np.nan]),
                   "big": np.zeros(100)})
  assert len(calls) == 1
  writer.write(2, {"loss": 0.125})
  writer.close()
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in text and "Infinity" not in text  # strict JSON
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert rows == [
      {"step": 1, "loss": 0.5, "kl": 0.25, "n": 3.0, "ok": 1.0, "bad": None, "inf": None,
       "hist": [1.0, 2.0, None]},
      {"step": 2, "loss": 0.125},
  ]
  assert [json.loads(line)["step"] for line in text.splitlines()] == [1, 2]


def test_resume_truncates_jsonl_and_purges_tensorboard(tmp_path):
  with MetricWriter(tmp_path, console=False) as writer:
    for step in range(1, 6):
      writer.write(step, {"loss": float(step)})
  # The crashed run also left a torn last line behind.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')
  with MetricWriter(tmp_path, console=False, resume_step=3) as writer:
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    for step in (4, 5):
      writer.write(step, {"loss": 10.0 * step})
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
  events = _read_events(str(tmp_path / "tb"))
  assert len(glob.glob(str(tmp_path / "tb" / "events.*"))) == 2  # the reopened writer did not overwrite
  starts = [ev.step for ev in events if ev.HasField("session_log") and ev.session_log.status == 1]
  assert starts == [4]  # TensorBoard hides events with step >= 4 written before this marker


def test_truncate_after_mid_run(tmp_path):
  writer = MetricWriter(tmp_path, console=False, tensorboard=False)
  for step in range(1, 5):
    writer.write(step, {"x": step})
  writer.truncate_after(2)
  writer.write(3, {"x": 30})
  writer.close()
  assert [(r["step"], r["x"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [(1, 1), (2, 2), (3, 30)]


def test_read_jsonl_rejects_corrupt_middle_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{oops\n{"step": 2}\n')
  with pytest.raises(ValueError, match="line 2"):
    read_jsonl(path)


def test_tensorboard_scalars_histograms_and_nonfinite(tmp_path):
  ratios = np.array([0.0, 0.1, 0.5, 0.5, 1.0, np.nan])
  with MetricWriter(tmp_path, console=False, jsonl=False) as writer:
    writer.write(1, {"reward/mean": 0.75, "kl": jnp.float32(0.5), "nan": np.nan})
    writer.write(2, {"reward/mean": 0.875, "kl": -np.inf, "edit_ratio": jnp.asarray(ratios),
                     "edit_ratio_hist": np.array([1, 0, 0, 0, 0, 2, 0, 0, 0, 1])})
    assert writer.num_nonfinite_skipped == 3  # nan scalar, -inf scalar, one nan array element
  assert not (tmp_path / "metrics.jsonl").exists()
  events = _read_events(str(tmp_path / "tb"))
  scalars = _scalars(events)
  assert scalars["reward/mean"] == {1: 0.75, 2: 0.875}
  assert scalars["kl"] == {1: 0.5}
  assert "nan" not in scalars
  histos = _histos(events)
  h = histos["edit_ratio"][2]
  assert h.num == 5 and h.min == 0.0 and h.max == 1.0
  assert math.isclose(h.sum, 2.1) and math.isclose(h.sum_squares, 0.01 + 0.25 + 0.25 + 1.0)
  raw = histos["edit_ratio_hist"][2]
  assert list(raw.bucket) == [1, 0, 0, 0, 0, 2, 0, 0, 0, 1] and raw.num == 4
  np.testing.assert_allclose(list(raw.bucket_limit), np.linspace(0.1, 1.0, 10))


def test_console_line_uses_keys_and_precision(tmp_path, capsys):
  writer = MetricWriter(tmp_path, console_keys=("time/step_s", "kl", "reward/mean", "missing", "loss"),
                        console_precision=3, console_every=2, jsonl=False, tensorboard=False)
  row = {"reward/mean": 0.123456, "kl": 1e-5, "other": 3.0, "time/step_s": 0.5, "loss": -0.25}
  writer.write(1, row)
  writer.write(2, row)
  writer.close()
  # Grouped (reward / policy / timing), in the keys' order within a group.
  assert capsys.readouterr().out.splitlines() == ["step 2 | reward  reward/mean 0.123",
                                                  "       | policy  kl 1e-05  loss -0.25",
                                                  "       | timing  time/step_s 0.5"]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(tmp_path / "run", enabled=False)
  writer.write(1, {"x": 1.0})
  writer.truncate_after(0)
  writer.close()
  assert not (tmp_path / "run").exists()


def test_bad_metric_raises(tmp_path):
  writer = MetricWriter(tmp_path, console=False, tensorboard=False)
  with pytest.raises(ValueError, match="'name'"):
    writer.write(1, {"name": "abc"})
  with pytest.raises(ValueError, match="'step'"):
    writer.write(1, {"step": 1})
  writer.close()


def test_timer_accumulates_and_resets():
  timer = Timer()
  with timer("sample"):
    time.sleep(0.02)
  with timer("sample"):
    time.sleep(0.02)
  with timer("update"):
    pass
  got = timer.pop()
  assert set(got) == {"time/sample_s", "time/update_s"}
  assert 0.04 <= got["time/sample_s"] < 1.0 and 0.0 <= got["time/update_s"] < got["time/sample_s"]
  assert timer.pop() == {}
