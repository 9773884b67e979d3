"""Evaluation: runner, baselines, reports, the trajectory viewer. CLI: python -m atommem_jax.eval."""
