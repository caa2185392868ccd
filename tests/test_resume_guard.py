"""Re-running a workdir: a changed config fails before anything runs, naming the fields; a finished
run is reported as complete without training, evaluating or writing anything."""

import os

import pytest

from configs.tiny.grpo_arithmetic import get_config
from selfrl_jax.train.builders import ConfigError, check_resume_config, config_json
from selfrl_jax.train.loop import train
from selfrl_jax.train.metrics import read_jsonl


def _cfg():
  cfg = get_config()
  cfg.sft.steps = 0
  cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 8, 4, 32
  cfg.train.num_steps, cfg.train.checkpoint_every, cfg.train.eval_every = 2, 0, 0
  cfg.train.eval_size, cfg.train.progress = 128, False
  return cfg


def test_check_resume_config_names_changed_fields_and_allows_bookkeeping():
  saved = config_json(_cfg())
  cfg = _cfg()
  cfg.train.num_steps, cfg.rl.mode, cfg.mesh.fsdp = 10, "split", 2  # resumable changes
  cfg.model.remat, cfg.model.remat_policy = True, "dots_with_no_batch_dims_saveable"  # memory, not results
  check_resume_config(saved, cfg)
  cfg.optim.learning_rate, cfg.rl.kl_coef = 1e-3, 0.1
  with pytest.raises(ConfigError, match=r"optim.learning_rate: saved 0.0005, now 0.001; rl.kl_coef: saved 0.0, now 0.1"):
    check_resume_config(saved, cfg)


def test_a_knob_added_after_the_run_started_resumes_at_its_default_only():
  """Upgrading the code must not strand a run: a field of the algorithm's section that the saved
  config lacks is fine at its default, and named when set to anything else."""
  from configs.ssrl_if.tiny_constraints import get_config
  cfg = get_config("method")
  saved = config_json(cfg)
  del saved["ssrl_if"]["rm_objective"]  # as written by a version without the knob
  check_resume_config(saved, cfg)
  with cfg.unlocked():
    cfg.ssrl_if.rm_objective = "bt"
  with pytest.raises(ConfigError, match=r"ssrl_if.rm_objective: saved '<absent>', now 'bt'"):
    check_resume_config(saved, cfg)
  # A shared knob added later (builders.SHARED_KNOBS_ADDED): fine at the value the run behaved as.
  shared = _cfg()
  saved = config_json(shared)
  del saved["rl"]["kl_mode"]
  check_resume_config(saved, shared)
  shared.rl.kl_mode = "reward"
  with pytest.raises(ConfigError, match=r"rl.kl_mode: saved '<absent>', now 'reward'"):
    check_resume_config(saved, shared)


@pytest.mark.slow
def test_rerunning_a_workdir(tmp_path):
  workdir = str(tmp_path / "run")
  first = train(_cfg(), workdir)
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  again = train(_cfg(), workdir)  # same config, already finished
  assert again["already_complete"] and again["resumed_from"] == 2 and again["compilations"] == 0
  assert again["final"] == first["final"]
  assert read_jsonl(os.path.join(workdir, "metrics.jsonl")) == rows  # nothing appended
  changed = _cfg()
  changed.optim.learning_rate = 1e-3
  with pytest.raises(ConfigError, match="optim.learning_rate: saved 0.0005, now 0.001"):
    train(changed, workdir)
  longer = _cfg()
  longer.train.num_steps = 3  # resumable: continues the run
  assert train(longer, workdir)["resumed_from"] == 2
