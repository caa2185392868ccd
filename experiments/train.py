r"""Train with any experiment config; resumes automatically from the newest checkpoint in --workdir.

  python experiments/train.py --config=configs/tiny/grpo_arithmetic.py --workdir=/tmp/grpo
  python experiments/train.py --config=configs/tiny/grpo_arithmetic.py --workdir=/tmp/grpo \
      --config.rl.advantage=rloo --config.train.num_steps=200

Exit status: 0 finished; 75 stopped early by SIGTERM / Ctrl-C after saving (rerun to resume);
anything else, an error.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ imports

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli, plots  # noqa: E402
from selfrl_jax.train.loop import train  # noqa: E402
from selfrl_jax.train.preemption import EXIT_PREEMPTED  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py:arg).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  summary = train(_CONFIG.value, _WORKDIR.value)
  if summary["history"]["step"]:
    workdir = os.path.abspath(_WORKDIR.value)
    path = os.path.join(workdir, "learning_curve.png")
    plots.plot_curves({"run": (summary["history"], os.path.join(workdir, "metrics.jsonl"))}, path)
    print(f"wrote {path}", file=sys.stderr)
  print(json.dumps({k: summary[k] for k in ("initial", "final", "preempted", "resumed_from", "compilations")}))
  if summary["preempted"]:
    stage = {"warm_start": "SFT warm start", "rl": "RL phase"}.get(summary["stopped_in"], summary["stopped_in"])
    print(f"Stopped early in the {stage}, progress saved: rerun the same "
          f"command to resume (exit status {EXIT_PREEMPTED}).", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  cli.run(main)
