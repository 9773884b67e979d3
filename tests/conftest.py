"""Shared pytest setup: 8 fake CPU devices for sharding tests, a --runslow switch."""
import os

# Must be set before JAX initialises its backends: multi-device code is tested on CPU. The 8
# fake devices share 2 cores in CI: a collective waits for all 8 device threads, and XLA's
# default 40 s before it aborts the whole process (without a message pytest's capture would
# keep) is too short on a loaded machine (the likely cause of one fresh-clone CI run that
# died "Aborted", with no message, in test_train_step's sharded step; rerun in isolation it
# passed); a real deadlock still ends, after 15 minutes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_warn_stuck_timeout_seconds=60 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=900")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: slow test, run with --runslow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip_slow = pytest.mark.skip(reason="slow: use --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def test_tokenizer_dir(tmp_path_factory):
  """A small byte-level BPE tokenizer with a ChatML template, trained locally (no download)."""
  from atommem_jax.models.tokenizer import build_test_tokenizer

  return build_test_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def test_tokenizer(test_tokenizer_dir):
  from atommem_jax.models.tokenizer import load_tokenizer

  return load_tokenizer(test_tokenizer_dir)
