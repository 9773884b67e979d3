"""launch/aot.py: compiles the real steps for a TPU topology on this CPU host (needs libtpu).

The tool's CLI runs once on a tiny config (table + `fits:` line, exit 0); a config too big for
its topology returns 1 with the numbers; a bad key, value or topology returns 2 before any
compile. The loop-weighted cost is checked against XLA's own count of the same program
with its loops unrolled (which XLA counts exactly).
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

from atommem_jax.training import tpu_specs

ROOT = pathlib.Path(__file__).resolve().parents[1]
AOT = ROOT / "launch" / "aot.py"
FITS = re.compile(r"^fits: (yes|no), est\. MFU: \d+\.\d%$")
# A tiny SFT run on a 4-chip v5e slice: seconds to compile.
TINY = dict(seq_len=256, rows=8, chunk=128)


def _has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


needs_libtpu = pytest.mark.skipif(not _has_libtpu(), reason="libtpu not installed (pip install "
                                  "-e .[tpu]); AOT compiles for TPU need it")


@pytest.fixture(scope="module")
def aot():
  spec = importlib.util.spec_from_file_location("aot_tool", AOT)
  module = importlib.util.module_from_spec(spec)
  sys.modules["aot_tool"] = module  # its dataclasses resolve annotations through it
  spec.loader.exec_module(module)
  return module


def _tiny_sft(**over):
  from configs import tiny_cpu_sft

  c = tiny_cpu_sft.get_config()
  c.batch.seq_len, c.batch.rows, c.loss.chunk_size = TINY["seq_len"], TINY["rows"], TINY["chunk"]
  c.model.tiny = dict(c.model.tiny, num_layers=2)
  for key, value in over.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


def test_tpu_specs_cite_their_source_and_scale_per_device():
  for name, spec in tpu_specs.SPECS.items():
    assert spec.name == name
    assert spec.source.startswith("https://cloud.google.com/tpu/docs/"), name
    assert spec.hbm_bytes > 0 and spec.peak_bf16_flops > 0 and spec.hbm_bandwidth > 0
  assert {"v4", "v5e", "v5p", "v6e"} <= set(tpu_specs.SPECS)
  v4_core = tpu_specs.SPECS["v4"].per_device(1)  # a v4 topology lists each TensorCore
  assert v4_core.peak_bf16_flops == 275e12 / 2 and v4_core.hbm_bytes == 16 * 2**30
  assert tpu_specs.parse_topology("v5p:4x4x4")[1] == "4x4x4"
  assert tpu_specs.generation("TPU v5 lite").name == "v5e"
  with pytest.raises(ValueError, match="no TPU generation has device kind 'TPU v9'"):
    tpu_specs.generation("TPU v9")
  with pytest.raises(ValueError, match="unknown TPU generation 'v9z'"):
    tpu_specs.parse_topology("v9z:2x2")
  with pytest.raises(ValueError, match="generation:shape"):
    tpu_specs.parse_topology("v5p")


def test_target_platform_picks_the_tpu_layouts_on_a_cpu_host():
  """The model picks layouts per platform when traced; the AOT compile traces for TPU."""
  from atommem_jax.models import partitioning, sampler, transformer

  assert partitioning.platform() == "cpu"
  assert sampler._unstack_weights()  # noqa: SLF001  (CPU: one per-layer copy before decode)
  assert transformer._attention_rows_per_pass(64, 32, 8192, 8192) < 64  # noqa: SLF001
  with partitioning.target_platform("tpu"):
    assert partitioning.platform() == "tpu"
    assert not sampler._unstack_weights()  # noqa: SLF001
    assert transformer._attention_rows_per_pass(64, 32, 8192, 8192) == 64  # noqa: SLF001
  assert partitioning.platform() == "cpu"


@needs_libtpu
def test_loop_weighted_cost_counts_every_trip(aot):
  """Nested scans (3 x 4 matmul layers, forward + backward) cost what the same program
  unrolled costs in XLA's own analysis; XLA's raw count of the looped one is far lower."""
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies
  from jax.sharding import NamedSharding, PartitionSpec

  devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
  mesh = jax.make_mesh((4,), ("x",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))

  def loss(w, x, unroll):
    def layer(h, wl):
      return jnp.tanh(h @ wl), None

    def block(h, _):
      return jax.lax.scan(layer, h, w, unroll=unroll)[0], None

    return jax.lax.scan(block, x, None, length=3, unroll=unroll)[0].sum()

  w = jax.ShapeDtypeStruct((4, 256, 256), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec()))
  x = jax.ShapeDtypeStruct((1024, 256), jnp.bfloat16,
                           sharding=NamedSharding(mesh, PartitionSpec("x")))
  looped = jax.jit(jax.grad(lambda w, x: loss(w, x, 1))).lower(w, x).compile()
  unrolled = jax.jit(jax.grad(lambda w, x: loss(w, x, True))).lower(w, x).compile()
  exact = unrolled.cost_analysis()["flops"]
  matmuls = 3 * 4 * 3 * 2 * (1024 // 4) * 256 * 256  # fwd + 2 bwd matmuls per layer, per device
  assert 0.98 < exact / matmuls < 1.1
  cost = aot.loop_weighted_cost(aot._module_text(looped))  # noqa: SLF001
  # Within a few %: unrolled, XLA drops the first layer's unused input gradient, which a
  # loop body computes on every trip.
  assert cost.flops == pytest.approx(exact, rel=0.05)
  assert cost.flops == pytest.approx(matmuls, rel=0.05)
  assert looped.cost_analysis()["flops"] < exact / 4  # what the raw count would report
  assert any("3 trips (exact)" in loop for loop in cost.loops), cost.loops
  assert any("4 trips (exact)" in loop for loop in cost.loops), cost.loops


@needs_libtpu
def test_cli_tiny_sft_prints_table_and_fits_line():
  t = TINY
  out = subprocess.run(
      [sys.executable, str(AOT), f"--config={ROOT / 'configs' / 'tiny_cpu_sft.py'}",
       "--topology=v5e:2x2", f"--config.batch.seq_len={t['seq_len']}",
       f"--config.batch.rows={t['rows']}", f"--config.loss.chunk_size={t['chunk']}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  lines = out.stdout.strip().splitlines()
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  assert FITS.match(lines[-1]) and lines[-1].startswith("fits: yes"), lines[-1]
  assert any(line.startswith("per device") and "total GB" in line for line in lines)
  row = next(line for line in lines if line.startswith("train_step (sft)"))
  args, out_, temp, total, hbm_pct, tflop, gb_accessed, ms = map(float, row.split()[2:10])
  assert total > 0 and gb_accessed > 0 and ms > 0
  assert "mesh data/fsdp/tensor=(1, 4, 1)" in out.stdout
  assert "https://cloud.google.com/tpu/docs/v5e" in out.stdout


@needs_libtpu
def test_config_too_big_for_the_topology_returns_1_with_numbers(aot):
  # ~8.6B parameters (float32 weights, two Adam moments, gradients) on 4 v5e chips of 16 GB.
  c = _tiny_sft(**{"model.tiny": dict(hidden_size=8192, intermediate_size=32768, num_layers=8,
                                       num_heads=4, num_kv_heads=2, head_dim=32)})
  lines: list[str] = []
  assert aot.run(c, "v5e:2x2", echo=lines.append) == 1
  assert FITS.match(lines[-1]) and lines[-1].startswith("fits: no"), lines[-1]
  verdict = next(line for line in lines if "DOES NOT FIT" in line)
  used = float(re.search(r"(\d+\.\d+) GB of 16\.00 GB", verdict).group(1))
  assert used > 16.0, verdict


@pytest.mark.parametrize("over, topology, message, on_devices", [
    ({"batch.micro_batches": 3}, "v5e:2x2", "batch.rows=8 must be divisible by "
     "batch.micro_batches=3", False),
    ({"loss.chunk_size": 0}, "v5e:2x2", "loss.chunk_size must be positive", False),
    ({}, "v9z:2x2", "unknown TPU generation 'v9z'", False),
    ({"model.architecture": "qwen9"}, "v5e:2x2", "model.architecture must be one of", False),
    # checked against the topology's devices
    ({"batch.rows": 6}, "v5e:2x2", "batch.rows=6 must be divisible by mesh data*fsdp (4)", True),
    ({"mesh.tensor": 3}, "v5e:2x2", "mesh: 4 devices do not split", True),
    # a tensor axis of 2 does not map onto the 8x8 torus (jax.make_mesh splits no axis)
    ({"mesh.tensor": 2, "batch.rows": 64}, "v6e:8x8", "mesh data/fsdp/tensor=(1, 32, 2) on "
     "v6e:8x8", True),
])
def test_bad_config_fails_before_compiling(aot, over, topology, message, on_devices):
  if on_devices and not _has_libtpu():
    pytest.skip("needs the topology's devices (libtpu)")
  lines: list[str] = []
  c = _tiny_sft(**over)
  assert aot.run(c, topology, echo=lines.append) == 2
  assert any(line.startswith("config error:") and message in line for line in lines), lines
  assert not any(line.startswith("compiling") for line in lines)


@needs_libtpu
def test_grpo_questions_must_split_over_the_hosts(aot):
  """Each host samples whole questions (training/grpo.py): v5e:4x4 has 4 hosts."""
  from configs import tiny_cpu_grpo

  c = tiny_cpu_grpo.get_config()
  c.grpo.questions_per_step, c.batch.rows = 2, 16
  lines: list[str] = []
  assert aot.run(c, "v5e:4x4", echo=lines.append) == 2
  assert any("grpo.questions_per_step=2 must be divisible by the 4 hosts" in line
             for line in lines), lines


def test_architecture_must_match_a_local_checkpoint(aot, tmp_path, test_tokenizer_dir):
  """model.architecture stands in for a checkpoint that is not on this host; when it is,
  the two must agree (else the compile would describe another model)."""
  import json
  import shutil

  from atommem_jax.models import config as model_config
  from atommem_jax.models.hf_io import config_to_hf

  for f in pathlib.Path(test_tokenizer_dir).iterdir():
    shutil.copy(f, tmp_path / f.name)
  tiny = model_config.tiny("qwen3", max_position_embeddings=8192)
  (tmp_path / "config.json").write_text(json.dumps(config_to_hf(tiny)))
  c = _tiny_sft(**{"model.source": f"hf:{tmp_path}", "model.architecture": "qwen3_8b"})
  lines: list[str] = []
  assert aot.run(c, "v5e:2x2", echo=lines.append) == 2
  assert any("model.architecture=qwen3_8b does not describe the checkpoint" in line
             for line in lines), lines
  c.model.architecture = ""
  assert aot.model_config(c).hidden_size == tiny.hidden_size


def test_cli_rejects_an_unknown_key_before_compiling():
  out = subprocess.run(
      [sys.executable, str(AOT), f"--config={ROOT / 'configs' / 'tiny_cpu_sft.py'}",
       "--topology=v5e:2x2", "--config.batch.no_such_key=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "no_such_key" in out.stderr
  assert "compiling" not in out.stdout


@needs_libtpu
def test_tiny_grpo_compiles_reference_and_sampler(aot):
  from configs import tiny_cpu_grpo

  c = tiny_cpu_grpo.get_config()
  c.batch.seq_len, c.loss.chunk_size = TINY["seq_len"], TINY["chunk"]
  c.sampling.max_prompt_tokens, c.sampling.max_new_tokens = 512, 32
  lines: list[str] = []
  assert aot.run(c, "v5e:2x2", echo=lines.append) == 0, "\n".join(lines)
  for name in ("train_step (grpo)", "logprobs (ref / old)", "prefill (16x512)",
               "decode (16 rows x 31 steps)"):
    assert any(line.startswith(name) for line in lines), name
  assert any("tokens/s per chip" in line for line in lines)
  assert any(line.startswith("resident: train step + reference params") for line in lines)
  assert any("31 trips (bound" in line for line in lines)  # the decode loop, at its bound
  assert FITS.match(lines[-1]), lines[-1]


def test_splash_kernel_cost_from_its_hlo_line(aot):
  """A fused backward (dq, dk, dv written) of 2 rows x 4 query heads over one 512 block."""
  # As libtpu compiles it: scratch buffers, then dQ as per-key-block partials
  # [blocks, rows, heads, T, Dh], dK and dV.
  line = ("  %splash_mha_dkv_segmented_no_residuals.3 = (f32[512,128]{1,0}, "
          "bf16[1,2,4,512,128]{4,3,2,1,0}, bf16[2,2,512,128]{3,2,1,0}, "
          "bf16[2,2,512,128]{3,2,1,0}) custom-call(%p0, %p1), "
          "custom_call_target=\"tpu_custom_call\"")
  cost = aot.splash_kernel_cost(line, 512, 128)
  assert cost.flops == 5 * 2 * 512 * 512 * 128 * 8  # 5 matmuls per block pair, 8 heads
  assert cost.bytes_accessed == 8 * 2 * 512 * 128 * 2  # Q and dO blocks streamed, bf16
  # The forward at T=1024: blocks of 512, 2 x 3 / 2 = 3 causal block pairs; the output and
  # the lane-wide log-sum-exp [rows, heads, T, 128].
  fwd = ("  %splash_mha_fwd_segmented_residuals.2 = (f32[512,128]{1,0}, "
         "bf16[2,4,1024,128]{3,2,1,0}, f32[2,4,1024,128]{3,2,1,0}) custom-call(%p0), "
         "custom_call_target=\"tpu_custom_call\"")
  assert aot.splash_kernel_cost(fwd, 1024, 128).flops == 2 * 2 * 512 * 512 * 128 * 8 * 3
  assert aot.splash_kernel_cost("  %fusion.1 = f32[8]{0} fusion(%a), kind=kLoop", 512, 128) is None


@needs_libtpu
def test_splash_step_compiles_for_tpu_and_its_kernels_are_priced(aot):
  """With model.attention=splash the train step compiles for TPU with the Pallas kernels.
  XLA prices them at zero FLOPs; priced from their grid, the step costs about what the XLA
  attention step costs (at T = one block both compute every score; the fused backward adds
  one recomputed matmul), and its bytes accessed drop (no scores in HBM)."""
  rows = {}
  for attention in ("xla", "splash"):
    c = _tiny_sft(**{"model.attention": attention,
                     "model.tiny": dict(_tiny_sft().model.tiny, head_dim=128)})
    lines: list[str] = []
    assert aot.run(c, "v5e:2x2", echo=lines.append) == 0, "\n".join(lines)
    row = next(line for line in lines if line.startswith("train_step (sft)"))
    rows[attention] = dict(zip(("tflop", "gb"), map(float, row.split()[7:9])))
  assert rows["splash"]["tflop"] == pytest.approx(rows["xla"]["tflop"], rel=0.15), rows
  assert rows["splash"]["gb"] < rows["xla"]["gb"], rows
