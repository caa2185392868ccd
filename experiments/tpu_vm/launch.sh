#!/usr/bin/env bash
# Run one experiment config on a Cloud TPU VM or a multi-host TPU pod slice.
#
#   bash experiments/tpu_vm/launch.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#
# WORKDIR must be visible to every host (a gs:// bucket or a shared filesystem): orbax writes one
# checkpoint from all hosts and auto-resume reads it back. The same command runs on every worker;
# jax.distributed.initialize() (called by selfrl_jax.parallel.distributed.maybe_initialize_distributed)
# auto-detects the pod, each host reads its own slice of the data (PromptIterator shard_index /
# shard_count = process index / count) and shard_batch assembles the global batch — the code path
# tests/test_parallel_train_step.py exercises with two local CPU processes.
set -euo pipefail
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_URL=${REPO_URL:?set REPO_URL to the git URL of your selfrl_jax checkout}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d selfrl_jax ] || git clone -q $REPO_URL selfrl_jax
  cd selfrl_jax && git pull -q
  SELFRL_MINIMAL=1 bash scripts/setup.sh
  .venv/bin/pip install -q 'jax[tpu]==0.10.2'
  nohup .venv/bin/python experiments/train.py --config=$CONFIG --workdir=$WORKDIR \
      --config.model.param_dtype=bfloat16 --config.model.compute_dtype=bfloat16 $* > train.log 2>&1 &
"
