#!/usr/bin/env bash
# The synthetic learning experiment on one accelerator, in four stages:
#   1. SFT of SmolLM2-135M (LoRA) on the scripted oracle's trajectories   configs/smollm2_synthetic_sft.py
#   2. held-out evaluation of the SFT policy and the static workflows     configs/eval_trained_synthetic.py
#   3. GRPO from the SFT adapters                                          configs/smollm2_synthetic_grpo.py
#   4. held-out evaluation of the SFT+GRPO policy
#
#   bash launch/accelerator_synthetic.sh                 # in an installed checkout
#
# Each training stage runs under a wall-clock cap (SFT_SECONDS, GRPO_SECONDS): at the cap
# the run is sent SIGTERM, finishes its step, checkpoints and writes its adapters, and the
# next stage goes on from them; rerunning the script resumes every stage where it stopped
# (checkpoints, the eval episode store). Held-out tasks: seed 0, EVAL_DOCS sections, two
# corrections and two retractions (training: seeds 1000 / 2000, 4-7 sections, at most one of each).
# Every stage uses the hashing embedder, so the evaluation must too (it is passed below).
#
# Environment (defaults in brackets): RUNS [outputs] output root; SFT_SECONDS [180];
# GRPO_SECONDS [180]; EVAL_SECONDS [600]; KILL_AFTER [90] (seconds from SIGTERM to
# SIGKILL); EVAL_EXAMPLES [32]; EVAL_DOCS [8]; SFT_FLAGS, GRPO_FLAGS, EVAL_FLAGS (more
# --config.key=value flags for each stage); JAX_COMPILATION_CACHE_DIR [RUNS/jax_cache];
# PYTHON [python]. Results: RUNS/eval_synthetic_{sft,grpo}/; docs/results.md, "Synthetic
# learning on one GPU", has the first run's figures.
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs}
SFT_SECONDS=${SFT_SECONDS:-180}
GRPO_SECONDS=${GRPO_SECONDS:-180}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-32}
EVAL_DOCS=${EVAL_DOCS:-8}
PY=${PYTHON:-python}
# Every stage compiles the sampler's prefill/decode shapes anew; a persistent compile cache
# lets later stages and reruns reuse them (with a cold cache on an H200, GRPO's first
# iteration took 157 s to sample 64 rollouts, a warm evaluation 25 s for 32).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$RUNS/jax_cache}
SFT_DIR=$RUNS/smollm2_synthetic_sft
GRPO_DIR=$RUNS/smollm2_synthetic_grpo

stage() {  # name, seconds, command...: runs the command under a cap; a stop at the cap is fine
  local name=$1 secs=$2
  shift 2
  echo "=== $name (cap ${secs}s): $*"
  local t0=$SECONDS rc=0
  timeout -s TERM -k "${KILL_AFTER:-90}" "$secs" "$@" || rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
  if [[ $rc -ne 0 && $rc -ne 124 ]]; then
    echo "=== $name failed (exit $rc); stopping" >&2
    exit "$rc"
  fi
}

evaluate() {  # output dir, methods, model source
  stage "eval $1" "${EVAL_SECONDS:-600}" "$PY" -m atommem_jax.eval \
    --config=configs/eval_trained_synthetic.py --config.embedder=hashing \
    --config.model.source="$3" --config.methods="$2" --config.method_models= \
    --config.max_examples="$EVAL_EXAMPLES" --config.data.num_docs="$EVAL_DOCS" \
    --config.sampling.batch_size="$EVAL_EXAMPLES" --config.output_dir="$1" ${EVAL_FLAGS:-}
}

stage sft "$SFT_SECONDS" "$PY" -m atommem_jax.training --config=configs/smollm2_synthetic_sft.py \
  --config.output_dir="$SFT_DIR" ${SFT_FLAGS:-}
evaluate "$RUNS/eval_synthetic_sft" atommem,scratchpad_only,create_all_read_once,oracle \
  "lora:$SFT_DIR/lora.safetensors"
stage grpo "$GRPO_SECONDS" "$PY" -m atommem_jax.training \
  --config=configs/smollm2_synthetic_grpo.py --config.init_from="$SFT_DIR" \
  --config.output_dir="$GRPO_DIR" ${GRPO_FLAGS:-}
evaluate "$RUNS/eval_synthetic_grpo" atommem "lora:$GRPO_DIR/lora.safetensors"
