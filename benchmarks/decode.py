"""Decode throughput: our jitted sampler vs `transformers` torch `generate`, same weights.

One command, one run, every number measured here and now:

  python benchmarks/decode.py            # full: random config at batch 1 and 16, SmolLM2 at 16
  python benchmarks/decode.py --quick    # fewer repeats and new tokens (a smoke run)

Two throughputs per side, medians over `--repeats` runs after one warm-up:
  end-to-end = B * N / time(prompt -> N new tokens), prefill included;
  decode     = B * (N - 1) / (time(N new tokens) - time(1 new token)), the per-step loop alone.
Our compile time (tracing + XLA compilation, from jax.monitoring events) is reported apart
and never counted in throughput. Both sides run float32 on the same CPU threads
(torch.set_num_threads = cores; XLA uses all cores), sample with temperature 1 and no
top-k / top-p, and never stop early (no EOS), so both produce exactly B * N tokens.

A roofline section then says how far either side is from what this machine allows, measured
in the same run: both prefills in GFLOP/s (the same FLOPs on both sides), and our decode
step's *matmul floor*, i.e. the time of one step's weight matmuls alone (every layer's
q/k/v, o, gate/up and down projections and the output head, as the decode loop runs them),
from which follows the best end-to-end ratio any sampler built on XLA:CPU's matmuls could
reach here: torch's time / (our prefill + N x floor).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from atommem_jax.models import sampler, transformer  # noqa: E402
from atommem_jax.models.hf_io import from_pretrained  # noqa: E402
from compile_clock import CLOCK  # noqa: E402

RANDOM_HF = dict(vocab_size=32_000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=64, intermediate_size=1536,
                 max_position_embeddings=4096, rope_theta=10_000.0, tie_word_embeddings=False)


CLOCK.install()


@dataclasses.dataclass
class Row:
  model: str
  batch: int
  prompt: int
  new: int
  torch_e2e: float  # new tokens / s, prefill included
  ours_e2e: float
  torch_decode: float  # new tokens / s of the decode loop alone
  ours_decode: float
  compile_s: float
  torch_prefill_s: float  # prompt -> 1 new token
  ours_prefill_s: float
  floor_step_s: float  # our decode step's weight matmuls alone
  prefill_gflop: float


def _median_time(fn, repeats: int) -> float:
  """Median wall time of `repeats` calls after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _torch_time(model, prompts: np.ndarray, new: int, repeats: int) -> float:
  ids = torch.from_numpy(prompts.astype(np.int64))
  mask = torch.ones_like(ids)

  def run():
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=None,
                           top_p=None, max_new_tokens=new, min_new_tokens=new,
                           eos_token_id=None, pad_token_id=0)
    assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape

  return _median_time(run, repeats)


def _ours_time(config, params, prompts: np.ndarray, new: int, repeats: int) -> float:
  rows = prompts.tolist()
  seeds = iter(range(10**6))

  def run():
    out = sampler.generate(config, params, rows, max_new_tokens=new, temperature=1.0,
                           stop_token_ids=None, seed=next(seeds), bucket_sizes=(prompts.shape[1],))
    assert (out.lengths == new).all()

  return _median_time(run, repeats)


def _bench(name, config, params, torch_model, batch, prompt_len, new, repeats) -> Row:
  rng = np.random.default_rng(batch)
  prompts = rng.integers(3, config.vocab_size, (batch, prompt_len))
  compiled_before = CLOCK.seconds
  ours_full = _ours_time(config, params, prompts, new, repeats)
  compile_s = CLOCK.seconds - compiled_before  # prefill + decode for this shape
  ours_first = _ours_time(config, params, prompts, 1, repeats)
  torch_full = _torch_time(torch_model, prompts, new, repeats)
  torch_first = _torch_time(torch_model, prompts, 1, repeats)
  decode = lambda full, first: batch * (new - 1) / max(full - first, 1e-9)
  row = Row(name, batch, prompt_len, new, batch * new / torch_full, batch * new / ours_full,
            decode(torch_full, torch_first), decode(ours_full, ours_first), compile_s,
            torch_first, ours_first, _matmul_floor(config, params, batch, repeats),
            _prefill_flops(config, batch, prompt_len) / 1e9)
  print(f"  {name} B={batch}: end-to-end torch {row.torch_e2e:.1f} / ours {row.ours_e2e:.1f} "
        f"tok/s; decode torch {row.torch_decode:.1f} / ours {row.ours_decode:.1f} tok/s; "
        f"our prefill {ours_first:.2f}s vs torch {torch_first:.2f}s; compile {compile_s:.1f}s",
        flush=True)
  return row


def _matmul_floor(config, params, batch: int, repeats: int) -> float:
  """Seconds of one decode step's weight matmuls alone, in the layout the decode loop uses
  (`transformer.decode_weights`, `_feature_major_matmul`), inputs passed in (no folding)."""
  w = transformer.decode_weights(config, params)
  dtype = config.jnp_dtype
  widths = {"qkv_t": config.hidden_size, "o_t": config.num_heads * config.head_dim,
            "gate_up_t": config.hidden_size, "down_t": config.intermediate_size}
  xs = {k: jnp.ones((batch, 1, d), dtype) for k, d in widths.items()}

  @jax.jit
  def step(w, xs):
    total = transformer._feature_major_matmul(xs["qkv_t"], w.head_t).sum()
    for layer in w.layers:
      for k, x in xs.items():
        total += transformer._feature_major_matmul(x, layer[k]).sum()
    return total

  return _median_time(lambda: step(w, xs).block_until_ready(), max(repeats, 10))


def _prefill_flops(config, batch: int, prompt_len: int) -> float:
  """Matmul FLOPs of a prefill: the layers' projections for every prompt token, full
  (unmasked) attention scores and values, the output head for the last token."""
  c = config
  per_token = 2 * c.num_layers * (
      c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim  # q, k, v
      + c.num_heads * c.head_dim * c.hidden_size  # o
      + 3 * c.hidden_size * c.intermediate_size)  # gate, up, down
  attention = 4 * c.num_layers * c.num_heads * c.head_dim * prompt_len * prompt_len
  return batch * (per_token * prompt_len + attention + 2 * c.hidden_size * c.vocab_size)


def _smollm2(dtype_name: str = "float32"):
  """Our params via from_gguf, torch via transformers' own GGUF loader, same file."""
  from atommem_jax.models.gguf_io import from_gguf
  from atommem_jax.models.tokenizer import smollm2_gguf_path

  path = Path(smollm2_gguf_path())
  config, params = from_gguf(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  return config, params, hf


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="1 repeat, 32 new tokens, short prompts")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--family", default="qwen3", choices=("qwen3", "llama"),
                  help="architecture of the random model")
  ap.add_argument("--skip-smollm2", action="store_true")
  ap.add_argument("--batches", default="1,16")
  args = ap.parse_args(argv)
  repeats = 1 if args.quick else args.repeats
  new = 32 if args.quick else 128
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {threads} CPU threads, float32, "
        f"median of {repeats}, load average {os.getloadavg()[0]:.1f}", flush=True)

  rows = []
  cls = {"qwen3": transformers.Qwen3Config, "llama": transformers.LlamaConfig}[args.family]
  torch.manual_seed(0)
  hf = transformers.AutoModelForCausalLM.from_config(cls(**RANDOM_HF)).eval()
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    config, params = from_pretrained(tmp)
  for batch in [int(b) for b in args.batches.split(",")]:
    rows.append(_bench(f"random-{args.family}", config, params, hf, batch, 256, new, repeats))
  del hf, params

  if not args.skip_smollm2:
    config, params, hf = _smollm2()
    rows.append(_bench("SmolLM2-135M", config, params, hf, 16, 128 if args.quick else 512, new,
                       repeats))

  print()
  cols = ("model", "batch", "prompt", "new", "torch e2e", "ours e2e", "ratio e2e",
          "torch decode", "ours decode", "ratio decode", "our compile s")
  print("| " + " | ".join(cols) + " |")
  print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
  for r in rows:
    cells = (r.model, r.batch, r.prompt, r.new, f"{r.torch_e2e:.1f}", f"{r.ours_e2e:.1f}",
             f"{r.ours_e2e / r.torch_e2e:.2f}x", f"{r.torch_decode:.1f}", f"{r.ours_decode:.1f}",
             f"{r.ours_decode / r.torch_decode:.2f}x", f"{r.compile_s:.1f}")
    print("| " + " | ".join(str(c).rjust(len(h)) for c, h in zip(cells, cols)) + " |")
  print("(tok/s = new tokens per second; e2e includes prefill; decode excludes it)")

  print("\nRoofline (same run): prefill GFLOP/s on both sides; our decode step vs its matmuls "
        "alone; the best e2e ratio with every non-matmul cost of decode at zero")
  cols = ("model", "batch", "prefill GFLOP", "torch GFLOP/s", "ours GFLOP/s", "our step ms",
          "matmul floor ms", "best e2e ratio", "measured e2e ratio")
  print("| " + " | ".join(cols) + " |")
  print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
  for r in rows:
    step_ms = 1e3 * r.batch / r.ours_decode
    torch_s = r.batch * r.new / r.torch_e2e
    best = torch_s / (r.ours_prefill_s + r.new * r.floor_step_s)
    cells = (r.model, r.batch, f"{r.prefill_gflop:.1f}", f"{r.prefill_gflop / r.torch_prefill_s:.0f}",
             f"{r.prefill_gflop / r.ours_prefill_s:.0f}", f"{step_ms:.1f}",
             f"{1e3 * r.floor_step_s:.1f}", f"{best:.2f}x", f"{r.ours_e2e / r.torch_e2e:.2f}x")
    print("| " + " | ".join(str(c).rjust(len(h)) for c, h in zip(cells, cols)) + " |")
  print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other processes on the machine skew both sides; torch's OpenMP suffers most)")

if __name__ == "__main__":
  main()
