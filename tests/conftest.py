"""Shared pytest setup: 8 fake CPU devices for sharding tests, a --runslow switch."""
import os

# Must be set before JAX initialises its backends: multi-device code is tested on CPU, on 8
# fake devices. The second flag works around an XLA:CPU deadlock: with its default
# concurrency-optimised scheduler, the devices of one sharded train step were seen waiting
# in different collectives (some at an all-reduce, their partners at an earlier all-gather)
# until the rendezvous aborted the process ("Fatal Python error: Aborted" in
# test_train_step). Under CPU load a loop of those steps deadlocked 3 times in 3 runs within
# ~140 s; with the flag, 2 runs of 300 s (84 sharded steps each) never did
# (`python benchmarks/cpu_collectives.py`; docs/benchmarks.md, "CPU collectives"). It is a
# workaround for these tests' programs, not a guarantee: test_multiprocess.py's workers run
# without it (with it they failed in gloo). Flags already in XLA_FLAGS are kept.
CPU_TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8",
                      "--xla_cpu_enable_concurrency_optimized_scheduler=false")
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in CPU_TEST_XLA_FLAGS:
  if _flag.split("=")[0] not in _flags:
    _flags = f"{_flags} {_flag}".strip()
os.environ["XLA_FLAGS"] = _flags
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
