#!/usr/bin/env bash
# The README's main job on CPU: prompted SmolLM2-135M-Instruct as an AtomMem agent and the
# baselines on real HotpotQA questions (configs/default.py). Extra args are config overrides,
# e.g. `bash launch/run_local.sh --config.max_examples=50`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec python -m atommem_jax.eval --config=configs/default.py "$@"
