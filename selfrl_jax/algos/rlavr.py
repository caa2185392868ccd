"""RLAVR / CARE (Wang, Lu et al. 2026, arXiv 2605.25864; spec ../shared/papers/rlavr.md) on the
phases of the shared step: label-free GRPO on majority-vote pseudo-labels, with a budget of
ground-truth labels bought where the Corrective Advantage Gap is expected to be largest.

    rollout (device: G samples, last-layer hidden states from the decode loop)
 -> cluster (host: answers -> integer codes; never sees a label)
 -> acquire (device: majority vote, the selection rule; CARE scores with its probes)
 -> label (host: the LabelOracle reveals the ground truth of the queried prompts only)
 -> reward (device: r = 1[answer ≡ mixed label], c_i per prompt)
 -> diagnose (host: true accuracy of the labels used, confident-wrong rate, AUROC; metrics only)
 -> UPDATE (GRPO advantages x c_i), then after_update: budget count and CARE probe training.

`rlavr.selection`: ttrl | random | entropy | avg_prob | care | oracle_cag (labels every prompt first, selects by
the true CAG) | full_gt. The oracle is the only object holding the records; acquisition runs
before it is called, so no selection rule can read a label.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfrl_jax.algos import rlavr_config
from selfrl_jax.algos import rlavr_labels as L
from selfrl_jax.algos import rlavr_probes as probes_lib
from selfrl_jax.algos.base import UPDATE, Phase, Rewards, TokenTerms, host_call
from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.algos.registry import AlgorithmSpec
from selfrl_jax.data.records import normalize_record
from selfrl_jax.rewards.answer_clusters import AnswerClusterer
from selfrl_jax.rewards.host import decode_responses
from selfrl_jax.rewards.math_answers import extract_answer, reference_answer
from selfrl_jax.rollouts.segments import context, generated, pack_segments
from selfrl_jax.sampling.hidden import gather_positions
from selfrl_jax.sampling.sampler import generate


def _answers(texts: list[str], style: str) -> list[str | None]:
  if style == "text":
    return [t.strip() or None for t in texts]
  return [extract_answer(t, style) for t in texts]


class AnswerCoder:
  """Host side of the `cluster` phase: decode, extract, cluster per group. Holds no labels."""

  def __init__(self, tokenizer, clusterer: AnswerClusterer, style: str, group_size: int):
    self.tokenizer, self.clusterer, self.style, self.group_size = tokenizer, clusterer, style, group_size

  def answers(self, tokens_BxN, valid_BxN) -> list[list[str | None]]:
    flat = _answers(decode_responses(self.tokenizer, tokens_BxN, valid_BxN), self.style)
    return [flat[i:i + self.group_size] for i in range(0, len(flat), self.group_size)]

  def __call__(self, tokens_BxN, valid_BxN):
    return self.clusterer.codes(self.answers(tokens_BxN, valid_BxN))


class LabelOracle:
  """Hands out the ground truth of queried prompts as the code of the cluster it falls in
  (`answer_clusters.NO_MATCH` when no sample is right, `L.NO_LABEL` when not queried). Only it
  reads the records."""

  def __init__(self, records, coder: AnswerCoder):
    self._records, self._coder = records, coder

  def __call__(self, tokens_BxN, valid_BxN, codes_PxG, example_id_P, query_P) -> np.ndarray:
    out = np.full(len(example_id_P), L.NO_LABEL, np.int32)
    rows = np.flatnonzero(np.asarray(query_P))
    if len(rows):
      answers = self._coder.answers(tokens_BxN, valid_BxN)
      golds = [self._gold(int(example_id_P[i])) for i in rows]
      out[rows] = self._coder.clusterer.match([answers[i] for i in rows], np.asarray(codes_PxG)[rows], golds)
    return out

  def _gold(self, example_id: int) -> str:
    answer = normalize_record(self._records[example_id])["answer"]
    return answer.strip() if self._coder.style == "text" else reference_answer(answer)


@dataclasses.dataclass(frozen=True)
class RLAVR(GRPO):
  """GRPO on mixed labels; `reward_fn` (the true reward) serves evaluation only.

  Attributes (besides GRPO's): knobs of `config.rlavr` (rlavr_config.py); `coder`, `oracle`: host objects.
  """

  selection: str = "care"
  p: float = 0.2
  p2: float = 0.25
  warmup: int = 20
  kappa: float = 1.0
  adv_mode: str = "gated"
  score: str = "cag"
  mask_non_gt: bool = True
  probe_lr: float = 1e-4
  probe_steps: int = 3
  replay_size: int = 2048
  replay_batch: int = 16
  aux_weight: float = 1.5
  num_records: int = 0      # train-split size: `labels_unique` counts each prompt's first label once
  coder: Any = dataclasses.field(default=None, compare=False)
  oracle: Any = dataclasses.field(default=None, compare=False)

  # -- the iteration ---------------------------------------------------------------------------

  def phases(self):
    label = Phase("label", self.label_phase, host=True)
    acquire = Phase("acquire", self.acquire_phase)
    middle = (label, acquire) if self.selection == "oracle_cag" else (acquire, label)
    return (Phase("rollout", self.rollout_phase), Phase("cluster", self.cluster_phase, host=True), *middle,
            Phase("reward", self.reward_phase), Phase("diagnose", self.diagnose_phase, host=True), UPDATE)

  def rollout_phase(self, ctx, record):
    b = record.batch
    g = self.group_size
    sampling = dataclasses.replace(self.sampling, return_hidden=True)
    out = generate(ctx.model, b.prompt_tokens_PxT, b.prompt_valid_PxT, ctx.key, sampling, group_size=g)
    rollout = pack_segments([context(jnp.repeat(b.prompt_tokens_PxT, g, 0), jnp.repeat(b.prompt_valid_PxT, g, 0)),
                             generated(out, 1, sampling)])
    h_resp_BxD = gather_positions(out.hidden_BxNxD, jnp.maximum(out.length_B - 1, 0)[:, None])[:, 0]
    aux = {"h_prompt_PxD": out.context_hidden_BxD[::g], "h_resp_PxGxD": h_resp_BxD.reshape(-1, g, h_resp_BxD.shape[-1]),
           "len_PxG": out.length_B.reshape(-1, g)}
    return record.replace(rollout=rollout, aux=aux)

  def cluster_phase(self, ctx, record):
    r = record.rollout
    p = record.batch.num_prompts
    shape = (jax.ShapeDtypeStruct((p, self.group_size), jnp.int32), jax.ShapeDtypeStruct((p, self.group_size), jnp.bool_))
    codes, valid = host_call(self.coder, shape, r.response_tokens_BxN, r.response_valid_BxN)
    return record.replace(aux={**record.aux, "codes_PxG": codes, "answer_valid_PxG": valid})

  def label_phase(self, ctx, record):
    a, r, b = record.aux, record.rollout, record.batch
    query = a["query_P"] if "query_P" in a else jnp.ones((b.num_prompts,), bool)  # oracle_cag: all first
    gt = host_call(self.oracle, jax.ShapeDtypeStruct((b.num_prompts,), jnp.int32), r.response_tokens_BxN,
                   r.response_valid_BxN, a["codes_PxG"], b.example_id_P, query)
    return record.replace(aux={**a, "gt_P": gt})

  def features(self, aux) -> probes_lib.ProbeFeatures:
    codes, valid = aux["codes_PxG"], aux["answer_valid_PxG"]
    pseudo = aux["pseudo_P"]
    feat = jnp.concatenate([valid.mean(1, keepdims=True, dtype=jnp.float32), L.cluster_size_fractions(codes, valid)], 1)
    return probes_lib.ProbeFeatures(
        h_prompt_BxD=aux["h_prompt_PxD"].astype(jnp.float32), h_resp_BxNxD=aux["h_resp_PxGxD"].astype(jnp.float32),
        feat_BxF=feat, len_BxN=jnp.clip(aux["len_PxG"] / probes_lib.LENGTH_SCALE, 0.0, 1.0),
        valid_BxN=valid, other_BxN=valid & (codes != pseudo[:, None]),
        feasible_BxC=L.feasible_count_classes(codes, valid, pseudo))

  def acquire_phase(self, ctx, record):
    a = record.aux
    codes, valid = a["codes_PxG"], a["answer_valid_PxG"]
    pseudo, x, _ = L.majority_vote(codes, valid)
    a = {**a, "pseudo_P": pseudo, "x_P": x}
    p_count = codes.shape[0]
    k = math.ceil(self.p * p_count)
    none = jnp.zeros((p_count,), bool)
    s = p1 = jnp.zeros((p_count,), jnp.float32)
    reliable = none
    if self.selection == "ttrl":
      query = none
    elif self.selection == "full_gt":
      query = jnp.ones((p_count,), bool)
    elif self.selection == "random":
      query = L.top_k_mask(jax.random.uniform(jax.random.fold_in(ctx.key, 0x51), (p_count,)), k)
    elif self.selection == "entropy":
      query = L.top_k_mask(L.answer_entropy(codes, valid), k)
    elif self.selection == "avg_prob":
      r = record.rollout
      query = L.top_k_mask(-L.mean_token_prob(r.sampler_logp_BxS, r.loss_mask_BxS, self.group_size), k)
    elif self.selection == "oracle_cag":
      s = L.cag(L.binary_rewards(codes, valid, pseudo), L.binary_rewards(codes, valid, a["gt_P"]))
      query = L.top_k_mask(s, k)
    else:  # care
      gd = _probe_graphdef(a["h_prompt_PxD"].shape[-1], self.group_size)
      probes = nnx.merge(gd, ctx.algo_state["probe_params"])
      f = self.features(a)
      logits1, _ = probes.stage1(f)
      p1 = jax.nn.softmax(logits1, -1)[:, 1]
      s = L.expected_cag(probes.stage2(f), f.feasible_BxC, x, L.cag_table(self.group_size))
      rank = s if self.score == "cag" else (1.0 - p1) * s
      query, reliable = L.acquire(p1, rank, p=self.p, p2=self.p2, step=ctx.step, warmup=self.warmup)
    return record.replace(aux={**a, "query_P": query, "reliable_P": reliable, "s_P": s, "p1_P": p1})

  def reward_phase(self, ctx, record):
    a = record.aux
    query = a["query_P"]
    if self.selection == "oracle_cag":  # every label was revealed to rank by true CAG; train on the chosen ones
      gt = jnp.where(query, a["gt_P"], L.NO_LABEL)
      a = {**a, "gt_P": gt}
    labels = L.mix_labels(a["pseudo_P"], a["gt_P"], query)
    rewards_PxG = L.binary_rewards(a["codes_PxG"], a["answer_valid_PxG"], labels)
    if self.selection == "care":
      coeff = L.adv_coeff(query, a["reliable_P"], a["s_P"], self.kappa, self.adv_mode)
    elif self.selection in ("random", "entropy", "avg_prob") and self.mask_non_gt or self.selection == "oracle_cag":
      coeff = query.astype(jnp.float32)
    else:
      coeff = jnp.ones(query.shape, jnp.float32)
    g = self.group_size
    parts = {"adv_coeff_B": jnp.repeat(coeff, g), "queried_B": jnp.repeat(query, g).astype(jnp.float32)}
    return record.replace(aux={**a, "labels_P": labels}, rewards=Rewards(reward_B=rewards_PxG.reshape(-1), parts=parts))

  def diagnose_phase(self, ctx, record):
    """Metrics that need every label (true accuracy of the labels used, confident-wrong rate,
    stage-1 AUROC, recall of the oracle top-CAG set); computed after the labels are fixed."""
    a, r, b = record.aux, record.rollout, record.batch
    # Queried prompts were labelled in the label phase: ask the oracle for the rest only (for
    # full_gt nothing), so no answer is decoded and matched against its gold twice.
    rest = host_call(self.oracle, jax.ShapeDtypeStruct((b.num_prompts,), jnp.int32), r.response_tokens_BxN,
                     r.response_valid_BxN, a["codes_PxG"], b.example_id_P, ~a["query_P"])
    gt_all = jnp.where(a["query_P"], a["gt_P"], rest)
    codes, valid = a["codes_PxG"], a["answer_valid_PxG"]
    has = valid.any(1)
    majority_right = has & (a["pseudo_P"] == gt_all)
    used_right = jnp.where(a["query_P"], a["gt_P"] == gt_all, majority_right)
    m = {"rlavr/labels_used": a["query_P"].sum().astype(jnp.float32),
         "rlavr/label_acc_used": used_right.mean(dtype=jnp.float32),
         "rlavr/pseudo_label_acc": majority_right.mean(dtype=jnp.float32),
         "rlavr/agreement": L.binary_rewards(codes, valid, a["pseudo_P"]).mean(),   # samples = majority
         "rlavr/true_acc": L.binary_rewards(codes, valid, gt_all).mean(),          # samples = ground truth
         "rlavr/confident_wrong_frac": (has & ~majority_right & (a["x_P"] >= 0.75 * self.group_size)).mean(dtype=jnp.float32),
         "rlavr/answer_entropy": L.answer_entropy(codes, valid).mean()}
    if self.selection == "care":
      true_cag = L.cag(L.binary_rewards(codes, valid, a["pseudo_P"]), L.binary_rewards(codes, valid, gt_all))
      k = max(1, math.ceil(self.p * b.num_prompts))
      oracle_top = L.top_k_mask(true_cag, k)
      m["rlavr/recall_at_p"] = (oracle_top & a["query_P"]).sum() / k
      m["rlavr/stage1_auroc"] = _auroc(a["p1_P"], majority_right, has)
    return record.replace(metrics={**record.metrics, **m})

  def advantages(self, rollout, rewards: Rewards, step, algo_state=None) -> TokenTerms:
    terms = super().advantages(rollout, rewards, step, algo_state)
    coeff_Bx1 = rewards.parts["adv_coeff_B"][:, None]
    return terms.replace(adv_BxS=terms.adv_BxS * coeff_Bx1)

  # -- algorithm state: budget and probes -------------------------------------------------------

  def probe_tx(self) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(self.probe_lr, weight_decay=0.0))

  def init_state(self, key, model):
    # labels_spent: every query is paid (released behaviour); labelled_E: prompts ever labelled, for
    # the spec's cached accounting (§7 "Budget": a repeat would not cost again), logged side by side.
    state = {"labels_spent": jnp.zeros((), jnp.int32), "labelled_E": jnp.zeros((max(self.num_records, 1),), bool)}
    if self.selection != "care":
      return state
    g, d = self.group_size, model.cfg.d_model
    params = nnx.state(probes_lib.CareProbes(d, g, rngs=nnx.Rngs(params=key)))
    f = probes_lib.ProbeFeatures(h_prompt_BxD=jnp.zeros((1, d)), h_resp_BxNxD=jnp.zeros((1, g, d)),
                                 feat_BxF=jnp.zeros((1, 1 + g)), len_BxN=jnp.zeros((1, g)),
                                 valid_BxN=jnp.zeros((1, g), bool), other_BxN=jnp.zeros((1, g), bool),
                                 feasible_BxC=jnp.zeros((1, g + 1), bool))
    t = probes_lib.ProbeTargets(z1_B=jnp.zeros((1,), jnp.int32), z2_B=jnp.zeros((1,), jnp.int32),
                                resp_correct_BxN=jnp.zeros((1, g), jnp.int32), weight_B=jnp.zeros((1,)))
    return {**state, "probe_params": params, "probe_opt": self.probe_tx().init(params),
            "buffer": probes_lib.empty_buffer(f, t, self.replay_size), "rng": jax.random.fold_in(key, 1)}

  def after_update(self, algo_state, record, step):
    a = record.aux
    spent = algo_state["labels_spent"] + a["query_P"].sum().astype(jnp.int32)
    eid = record.batch.example_id_P
    labelled = algo_state["labelled_E"].at[eid].max(a["query_P"], mode="drop")
    metrics = {"rlavr/labels_spent": spent, "rlavr/labels_unique": labelled.sum().astype(jnp.int32)}
    algo_state = {**algo_state, "labels_spent": spent, "labelled_E": labelled}
    if self.selection != "care":
      return algo_state, metrics
    z1, z2, resp = L.probe_targets(a["codes_PxG"], a["answer_valid_PxG"], a["gt_P"], a["pseudo_P"])
    f = self.features(a)
    t = probes_lib.ProbeTargets(z1_B=z1, z2_B=z2, resp_correct_BxN=resp, weight_B=a["query_P"].astype(jnp.float32))
    buf = probes_lib.push(algo_state["buffer"], f, t)
    params, tx = algo_state["probe_params"], self.probe_tx()
    gd = _probe_graphdef(a["h_prompt_PxD"].shape[-1], self.group_size)
    cat = lambda u, v: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), u, v)  # noqa: E731
    rng, key = jax.random.split(algo_state["rng"])

    def probe_step(carry, k):
      params, opt = carry
      uniform = probes_lib.sample(buf, jax.random.fold_in(k, 0), self.replay_batch)
      stratified = probes_lib.sample(buf, jax.random.fold_in(k, 1), self.replay_batch, stratify_by_z2=True)

      def loss_fn(p):
        model = nnx.merge(gd, p)
        _, mu = probes_lib.probe_loss(model, *cat((f, t), uniform), aux_weight=self.aux_weight)
        _, ms = probes_lib.probe_loss(model, *cat((f, t), stratified), aux_weight=self.aux_weight)
        parts = {"probe/stage1_ce": mu["probe/stage1_ce"], "probe/aux_ce": mu["probe/aux_ce"],
                 "probe/stage2_ce": ms["probe/stage2_ce"]}
        return parts["probe/stage1_ce"] + self.aux_weight * parts["probe/aux_ce"] + parts["probe/stage2_ce"], parts

      (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      # No queried prompt yet (empty buffer and weight 0): the gradient is 0; skip the update anyway.
      updates, new_opt = tx.update(grads, opt, params)
      live = (t.weight_B.sum() + buf.size) > 0
      keep = lambda n, o: jax.tree.map(lambda x, y: jnp.where(live, x, y), n, o)  # noqa: E731
      return (keep(optax.apply_updates(params, updates), params), keep(new_opt, opt)), parts

    (params, opt), parts = jax.lax.scan(probe_step, (params, algo_state["probe_opt"]),
                                        jax.random.split(key, self.probe_steps))
    metrics.update({k: v[-1] for k, v in parts.items()})
    return {**algo_state, "probe_params": params, "probe_opt": opt, "buffer": buf, "rng": rng}, metrics

  def host_counters(self) -> dict[str, int]:
    out = {f"cluster/{k}": v for k, v in self.coder.clusterer.all_counters.items()} if self.coder else {}
    out.update(super().host_counters())
    return out


def _probe_graphdef(d_model: int, group_size: int):
  """The probes' static graph (rebuilt at trace time from static sizes; parameters live in the state)."""
  return nnx.graphdef(nnx.eval_shape(lambda: probes_lib.CareProbes(d_model, group_size, rngs=nnx.Rngs(0))))


def _auroc(score_P, label_P, mask_P):
  """P(score of a random positive > score of a random negative) over masked rows (ties count 1/2)."""
  pos = mask_P & label_P
  neg = mask_P & ~label_P
  diff = score_P[:, None] - score_P[None, :]
  wins = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
  pairs = pos[:, None] & neg[None, :]
  return jnp.where(pairs.any(), (wins * pairs).sum() / jnp.maximum(pairs.sum(), 1), 0.5)


def _build(cfg, tokenizer, reward_fn, sampling, records=None) -> RLAVR:
  r = cfg.rlavr
  clusterer = AnswerClusterer(r.equivalence, timeout_s=r.verify_timeout_s)
  coder = AnswerCoder(tokenizer, clusterer, r.answer_style, cfg.rl.group_size)
  oracle = LabelOracle(records, coder) if records is not None else None
  return RLAVR(sampling=sampling, group_size=cfg.rl.group_size, advantage=cfg.rl.advantage, kl_coef=cfg.rl.kl_coef,
               reward_fn=reward_fn, selection=r.selection, p=r.p, p2=r.p2, warmup=r.warmup, kappa=r.kappa,
               adv_mode=r.adv_mode, score=r.score, mask_non_gt=r.mask_non_gt, probe_lr=r.probe_lr, probe_steps=r.probe_steps,
               replay_size=r.replay_size, replay_batch=r.replay_batch, aux_weight=r.aux_weight,
               num_records=len(records) if records is not None else 0, coder=coder,
               oracle=oracle)


def _validate(cfg, check) -> None:
  from selfrl_jax.algos.grpo import ALGORITHM as GRPO_SPEC
  GRPO_SPEC.validate(cfg, check)
  rlavr_config.validate(cfg, check)


ALGORITHM = AlgorithmSpec(name="rlavr", build=_build, default_config=rlavr_config.default_config, validate=_validate)
