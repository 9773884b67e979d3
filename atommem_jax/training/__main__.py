"""Training CLI (SFT or GRPO, by `algorithm` in the config).

  python -m atommem_jax.training --config=configs/tiny_cpu_sft.py --config.output_dir=DIR
      [--config.steps=N --config.checkpoint_every=K --config.seed=S
       --config.mesh.data=A --config.mesh.fsdp=B --config.mesh.tensor=C ...]

Rerunning the same command into the same DIR resumes from its latest checkpoint. A bad
config value exits non-zero naming its key before anything is loaded or compiled. Writes
the run directory described in atommem_jax/training/trainer.py.
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                          lock_config=True)


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from atommem_jax.training import config as cfg_lib

  c = _CONFIG.value
  if c is None:
    raise app.UsageError("--config=configs/<name>.py is required")
  try:
    cfg_lib.validate(c)  # fails in seconds, before JAX compiles or a model loads
    if c.algorithm == "sft":
      from atommem_jax.training import sft

      sft.train(c)
    else:
      from atommem_jax.training import grpo

      grpo.train(c)
  except cfg_lib.ConfigError as e:
    raise app.UsageError(f"bad config: {e}") from None


if __name__ == "__main__":
  app.run(main)
