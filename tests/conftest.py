"""Shared pytest setup: 8 fake CPU devices for sharding tests, a --runslow switch."""
import os

# Must be set before JAX initialises its backends: multi-device code is tested on CPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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
