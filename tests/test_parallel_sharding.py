"""Mesh shape resolution, the logical sharding rules and the distributed start-up logic (1 device)."""

from __future__ import annotations

import logging

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import Decoder
from selfrl_jax.parallel import distributed, sharding
from selfrl_jax.parallel.mesh import make_mesh, resolve_mesh_shape
from selfrl_jax.sampling.kv_cache import init_cache


def _abstract_mesh(data, fsdp):
  return AbstractMesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


def _abstract_params(**overrides):
  cfg = tiny_config(**{"family": "qwen3", "tie_embeddings": False, **overrides})
  return cfg, nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)[1]


def _flat_specs(specs):
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  return {sharding.path_str(p): s for p, s in flat}


@pytest.mark.parametrize("n,data,fsdp,expected", [
    (8, -1, 1, (8, 1)), (8, 2, -1, (2, 4)), (8, -1, 8, (1, 8)), (1, -1, 1, (1, 1)), (6, 3, 2, (3, 2))])
def test_resolve_mesh_shape(n, data, fsdp, expected):
  assert resolve_mesh_shape(n, data, fsdp) == expected


@pytest.mark.parametrize("data,fsdp,match", [
    (3, 1, r"data=3 x fsdp=1 = 3 devices, but 8"), (-1, 3, r"fsdp=3 does not divide the 8"),
    (-1, -1, r"at most one axis"), (0, 8, r"data=0"), (2, -2, r"fsdp=-2")])
def test_resolve_mesh_shape_errors_name_fields(data, fsdp, match):
  with pytest.raises(ValueError, match=match):
    resolve_mesh_shape(8, data, fsdp)


def test_make_mesh_single_device():
  mesh = make_mesh()
  assert mesh.axis_names == ("data", "fsdp")
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
  with pytest.raises(ValueError, match="data=1 x fsdp=2"):
    make_mesh(data=1, fsdp=2)


def test_param_specs_follow_rules_table():
  cfg, params = _abstract_params()
  specs = sharding.param_partition_specs(params, _abstract_mesh(2, 4))
  # Same pytree structure as the state, one spec per parameter.
  assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(params)
  flat = _flat_specs(specs)
  expected = {
      "model/embed_tokens/embedding": P(None, "fsdp"),
      "lm_head/kernel": P("fsdp", None),
      "model/norm/weight": P(None),
  }
  for i in range(cfg.n_layers):
    pre = f"model/layers/{i}"
    expected.update({
        f"{pre}/self_attn/q_proj/kernel": P("fsdp", None), f"{pre}/self_attn/k_proj/kernel": P("fsdp", None),
        f"{pre}/self_attn/v_proj/kernel": P("fsdp", None), f"{pre}/self_attn/o_proj/kernel": P(None, "fsdp"),
        f"{pre}/self_attn/q_norm/weight": P(None), f"{pre}/self_attn/k_norm/weight": P(None),
        f"{pre}/mlp/gate_proj/kernel": P("fsdp", None), f"{pre}/mlp/up_proj/kernel": P("fsdp", None),
        f"{pre}/mlp/down_proj/kernel": P(None, "fsdp"),
        f"{pre}/input_layernorm/weight": P(None), f"{pre}/post_attention_layernorm/weight": P(None),
    })
  assert flat == expected


def test_logical_rules_are_the_single_knob():
  # Mapping "mlp" to the data axis (a tensor-parallel-style choice) changes only MLP specs.
  rules = dict(sharding.LOGICAL_RULES, mlp="data")
  flat = _flat_specs(sharding.param_partition_specs(_abstract_params()[1], _abstract_mesh(2, 4),
                                                    logical_rules=rules))
  assert flat["model/layers/0/mlp/gate_proj/kernel"] == P("fsdp", "data")
  assert flat["model/layers/0/mlp/down_proj/kernel"] == P("data", "fsdp")
  assert flat["model/layers/0/self_attn/q_proj/kernel"] == P("fsdp", None)


def test_indivisible_dims_fall_back_to_replication_and_log_once(monkeypatch, caplog):
  monkeypatch.setattr(sharding, "_LOGGED", set())
  _, params = _abstract_params(d_model=36, n_heads=3, n_kv_heads=1, head_dim=12, n_layers=2)
  with caplog.at_level(logging.WARNING, logger=sharding.__name__):
    flat = _flat_specs(sharding.param_partition_specs(params, _abstract_mesh(1, 8)))
  # d_model=36 cannot be split 8 ways: every "embed" dim replicated, nothing crashes.
  assert all(all(a is None for a in spec) for spec in flat.values())
  embed_msgs = [r for r in caplog.records if "'embed' of size 36" in r.getMessage()]
  assert len(embed_msgs) == 1
  # 4-way split of 36 works.
  flat4 = _flat_specs(sharding.param_partition_specs(params, _abstract_mesh(2, 4)))
  assert flat4["model/layers/1/mlp/up_proj/kernel"] == P("fsdp", None)


def test_spec_errors_name_the_path():
  with pytest.raises(ValueError, match=r"q_proj/kernel.*shape \(4, 4, 4\)"):
    sharding.param_partition_specs({"self_attn": {"q_proj": {"kernel": np.zeros((4, 4, 4))}}})
  with pytest.raises(ValueError, match=r"logical axis 'embed'.*known"):
    sharding.logical_to_spec(("embed",), logical_rules={"batch": None}, path="x/kernel")
  with pytest.raises(ValueError, match=r"mesh axes \['tensor'\]"):
    sharding.logical_to_spec(("embed",), (8,), _abstract_mesh(2, 4), {"embed": "tensor"})


def test_optimizer_state_gets_param_specs():
  _, params = _abstract_params()
  mesh = _abstract_mesh(2, 4)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  opt_state = jax.eval_shape(tx.init, params)
  param_sh = sharding.param_shardings(params, mesh)
  p_flat = {k: s.spec for k, s in _flat_specs(param_sh).items()}
  for got in (sharding.tree_shardings_like(param_sh, opt_state), sharding.param_shardings(opt_state, mesh)):
    flat = {k: s.spec for k, s in _flat_specs(got).items()}
    mirrored = {k: v for k, v in flat.items() if "/mu/" in k or "/nu/" in k}
    assert len(mirrored) == 2 * len(p_flat)
    for k, spec in mirrored.items():
      assert spec == p_flat[k.split("/mu/")[-1].split("/nu/")[-1]], k
    assert flat["1/0/count"] == P()


def test_tree_shardings_like_replicates_mismatched_shapes():
  mesh = _abstract_mesh(2, 4)
  param_sh = {"w": {"kernel": NamedSharding(mesh, P("fsdp", None))}}
  tree = {"mu": {"w": {"kernel": np.zeros((8, 3))}}, "row": {"w": {"kernel": np.zeros((6,))}},
          "count": np.zeros(())}
  got = sharding.tree_shardings_like(param_sh, tree)
  assert got["mu"]["w"]["kernel"].spec == P("fsdp", None)
  assert got["row"]["w"]["kernel"].spec == P()
  assert got["count"].spec == P()


def test_batch_shardings_for_kv_cache():
  mesh = make_mesh()
  cache = init_cache(tiny_config(), batch_size=2, capacity=8)
  sh = sharding.batch_tree_shardings(cache, mesh)
  assert sh.kv.k_BxKxHxS[0].spec == P(("data", "fsdp"))
  assert sh.valid_BxS.spec == P(("data", "fsdp")) and sh.next_pos_B.spec == P(("data", "fsdp"))
  assert sh.end_index.spec == P()
  placed = jax.device_put(cache, sh)
  assert placed.valid_BxS.sharding.spec == P(("data", "fsdp"))


def test_shard_batch_and_params_single_process():
  mesh = make_mesh()
  batch = {"tokens": np.arange(12, dtype=np.int32).reshape(4, 3), "temp": np.float32(0.5)}
  out = sharding.shard_batch(batch, mesh)
  np.testing.assert_array_equal(np.asarray(out["tokens"]), batch["tokens"])
  assert out["tokens"].sharding.spec == P(("data", "fsdp"))
  assert float(out["temp"]) == 0.5 and out["temp"].sharding.spec == P()
  params = {"mlp": {"down_proj": {"kernel": np.ones((4, 2), np.float32)}}}
  placed = sharding.shard_params(params, mesh)
  assert placed["mlp"]["down_proj"]["kernel"].sharding.spec == P(None, "fsdp")
  np.testing.assert_array_equal(np.asarray(placed["mlp"]["down_proj"]["kernel"]), 1.0)


def test_shard_batch_rejects_rows_not_divisible():
  with pytest.raises(ValueError, match=r"shard_batch: prompts has 3 local rows.*8 batch shards"):
    sharding.shard_batch({"prompts": np.zeros((3, 5))}, _abstract_mesh(2, 4))


@pytest.fixture
def clean_env(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SELFRL_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return calls


def test_distributed_single_process_is_a_no_op(clean_env, monkeypatch):
  monkeypatch.setattr(distributed, "_managed_cluster_detected", lambda: False)
  assert distributed.maybe_initialize_distributed() is False
  assert clean_env == []
  assert distributed.process_info() == (0, 1, jax.local_device_count())
  assert distributed.is_main_process()


def test_distributed_explicit_and_env_arguments(clean_env, monkeypatch):
  monkeypatch.setattr(distributed, "_managed_cluster_detected", lambda: False)
  assert distributed.maybe_initialize_distributed("localhost:1234", 2, 1) is True
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:8476")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.maybe_initialize_distributed() is True
  assert [(c["coordinator_address"], c["num_processes"], c["process_id"]) for c in clean_env] == [
      ("localhost:1234", 2, 1), ("10.0.0.1:8476", 4, 3)]
  monkeypatch.setenv("SELFRL_DISTRIBUTED", "off")
  assert distributed.maybe_initialize_distributed() is False
  assert len(clean_env) == 2


def test_distributed_auto_detected_cluster_calls_without_arguments(clean_env, monkeypatch):
  monkeypatch.setattr(distributed, "_managed_cluster_detected", lambda: True)
  assert distributed.maybe_initialize_distributed() is True
  assert clean_env[0]["coordinator_address"] is None and clean_env[0]["num_processes"] is None


def test_distributed_bad_settings(clean_env, monkeypatch):
  with pytest.raises(ValueError, match=r"mode='maybe'.*auto"):
    distributed.maybe_initialize_distributed(mode="maybe")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES='two'"):
    distributed.maybe_initialize_distributed("localhost:1", process_id=0)
