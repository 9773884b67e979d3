"""Evaluation CLI.

  python -m atommem_jax.eval --config=configs/default.py [--config.key=value ...]

Writes to `output_dir`: results.json, summary.md, scores.png, ops.png, trajectories.jsonl,
trajectories.html (see atommem_jax/eval/report.py for the results.json layout).
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Eval config file (configs/*.py).",
                                          lock_config=True)


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from atommem_jax.eval import config as cfg_lib

  c = _CONFIG.value
  if c is None:
    raise app.UsageError("--config=configs/<name>.py is required")
  try:
    cfg_lib.validate(c)  # fails in seconds, before the runner (and JAX) is even imported
    from atommem_jax.eval import runner

    runner.evaluate(c)  # raises ResumeMismatch (a ConfigError) before any compute too
  except cfg_lib.ConfigError as e:
    raise app.UsageError(f"bad config: {e}") from None


if __name__ == "__main__":
  app.run(main)
