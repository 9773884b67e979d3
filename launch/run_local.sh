#!/usr/bin/env bash
# The README's main job on CPU: the shipped trained SmolLM2-135M AtomMem policy (LoRA adapter
# in atommem_jax/trained/) against the static memory workflows on held-out synthetic CRUD
# tasks (configs/default_synthetic.py), then against the baselines on held-out real HotpotQA
# dev questions (configs/default.py). Extra args are config overrides for both runs, e.g.
# `bash launch/run_local.sh --config.max_examples=16`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
start=$(date +%s)
python -m atommem_jax.eval --config=configs/default_synthetic.py "$@"
python -m atommem_jax.eval --config=configs/default.py "$@"
echo "[run_local] both runs finished in $(( $(date +%s) - start )) s: outputs/default_synthetic/ and outputs/default/ (summary.md, scores.png, ops.png, trajectories.html)"
