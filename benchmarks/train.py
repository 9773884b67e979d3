"""SFT train-step throughput: our jitted `TrainStep` vs `transformers` + torch, same weights.

One command, one run, every number measured here and now:

  python benchmarks/train.py            # full: random Qwen3 config and SmolLM2-135M
  python benchmarks/train.py --quick    # fewer steps, shorter SmolLM2 rows (a smoke run)

Both sides run the same SFT step on the same CPU: float32, the same model (ours is saved with
`hf_io.save_pretrained` and torch loads that directory with `AutoModelForCausalLM`, so both
compute the same function), the same batch (one segment per row spanning the whole row,
positions 0..T-1, loss on the second half of each row, the "response"), the masked mean
cross-entropy over those tokens (ours: `LossConfig(kind="sft")`, token-mean; torch: the
model's own loss with `labels = -100` off the mask), backward, global-norm clipping to 1.0
and one AdamW update with the same hyper-parameters (constant lr 1e-5, betas 0.9 / 0.999,
eps 1e-8, weight decay 0.01; torch's `foreach` implementation by default). Torch runs in
eval mode (no dropout; gradients still flow) with `torch.set_num_threads` = cores and no
gradient checkpointing; XLA uses every core.

Ours is timed twice: with `remat=True` (`LossConfig`'s default, what training uses: each
layer is recomputed in the backward pass) and with `remat=False` (torch's setting: the
like-for-like row and the headline ratio). Compile time is reported apart and never timed:
each side first runs two untimed steps (step 0 and step 1), then `--steps` timed steps; the
median is reported. tokens/s = batch x sequence / step time (every token is processed,
whether in the loss or not).

The machine may be shared, so the sides are timed *interleaved*: torch runs in a worker
process (which never imports JAX) that executes one operation per request, and each round
times one step of every side in turn (rotating who goes first), so a change of load hits
all sides alike instead of whichever happened to run then. Each side times its own
operation (the request round trip is not counted).

The step-0 losses of both sides must agree (same function, same weights, same batch): the
difference is printed, and so is the step-1 difference (after one AdamW update on each side).

Memory: ours is XLA's own accounting of the compiled step
(`jit(...).lower(...).compile().memory_analysis()`): argument + output + temp bytes, minus the
output bytes aliased to donated arguments (the state is donated, so the new state reuses the
old state's buffers). Torch's is the worker's peak RSS (`VmHWM` of /proc/self/status, reset
through /proc/self/clear_refs once the model is loaded, read after the timed steps: the peak
during the steps), whole and minus the RSS the worker had right after
`import torch, transformers` (the runtime's own footprint): the figure comparable to XLA's.

A profile section times the parts of a step alone, interleaved the same way: forward (the
loss only), forward + backward (loss and gradients), and the update (global-norm clipping +
AdamW on given gradients), and prints the achieved GFLOP/s of the step against its model
FLOPs (3 x forward: projections, causal attention, output head).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compile_clock import CLOCK  # noqa: E402  (beside this script)

# Optimizer hyper-parameters shared by both sides (constant learning rate: end_lr_ratio = 1).
LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 1e-5, (0.9, 0.999), 1e-8, 0.01, 1.0

# A random Qwen3 model of 5.2M parameters (2.1M of them in the embedding and the head).
RANDOM_QWEN3 = dict(family="qwen3", vocab_size=4096, hidden_size=256, intermediate_size=768,
                    num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=10_000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096)

OPS = ("step", "forward", "forward_backward", "update")
_REPLY = "@@train-bench "  # prefix of the worker's reply lines (anything else is passed on)


# ----------------------------------------------------------------------------- shared helpers


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """One segment per row: random ids, positions 0..T-1, loss on the second half."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (batch, seq), dtype=np.int32)  # [B, T]
  positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()  # [B, T]
  segment_ids = np.ones((batch, seq), np.int32)  # [B, T]
  loss_mask = np.zeros((batch, seq), np.float32)  # [B, T]
  loss_mask[:, seq // 2:] = 1.0
  return dict(tokens=tokens, positions=positions, segment_ids=segment_ids, loss_mask=loss_mask)


def step_flops(hf_config: dict[str, Any], batch: int, seq: int) -> float:
  """Model FLOPs of one training step: 3 x the forward's matmuls (projections, causal
  attention scores and values counted on the lower triangle, output head)."""
  d, f = hf_config["hidden_size"], hf_config["intermediate_size"]
  n_layers, h, k = (hf_config["num_hidden_layers"], hf_config["num_attention_heads"],
                    hf_config["num_key_value_heads"])
  dh = hf_config.get("head_dim") or d // h
  per_token = 2 * n_layers * (d * (h + 2 * k) * dh + h * dh * d + 3 * d * f) \
      + 2 * d * hf_config["vocab_size"]
  attention = 2 * n_layers * h * dh * seq * (seq + 1)  # QK^T and PV over j <= i, per row
  return 3.0 * batch * (per_token * seq + attention)


def rss_kib(field: str) -> int:
  """`VmRSS` / `VmHWM` of this process, KiB."""
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


class Side(Protocol):
  name: str

  def run(self, op: str) -> float:
    """Seconds of one `op` (one of OPS), timed by the side itself."""


def interleaved(sides: Sequence[Side], op: str, rounds: int) -> dict[str, list[float]]:
  """Seconds of `op` per side in each of `rounds` rounds; every round runs each side once,
  rotating which goes first, so load changes on a shared machine hit all sides alike."""
  times: dict[str, list[float]] = {s.name: [] for s in sides}
  for i in range(rounds):
    for s in sides[i % len(sides):] + sides[:i % len(sides)]:
      times[s.name].append(s.run(op))
  return times


# ----------------------------------------------------------------------------- torch side


def _reply(obj: dict[str, Any]) -> None:
  sys.stdout.write(_REPLY + json.dumps(obj) + "\n")
  sys.stdout.flush()


def torch_worker(spec_path: str) -> None:
  """The torch side, in its own process (no JAX in it): loads the HF directory, then runs
  one operation per line read from stdin and replies with its seconds (and loss)."""
  import torch
  import transformers

  spec = json.loads(Path(spec_path).read_text())
  rss_runtime = rss_kib("VmRSS")  # python + torch + transformers, no model yet
  torch.set_num_threads(spec["threads"])
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
  model.eval()  # no dropout; autograd is unaffected
  data = np.load(spec["batch"])
  ids = torch.from_numpy(data["tokens"].astype(np.int64))  # [B, T]
  positions = torch.from_numpy(data["positions"].astype(np.int64))  # [B, T]
  labels = torch.where(torch.from_numpy(data["loss_mask"]) > 0, ids, -100)  # [B, T]
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                          **spec["adamw_kwargs"])

  def loss_fn() -> torch.Tensor:
    return model(input_ids=ids, position_ids=positions, labels=labels).loss

  def forward() -> float:
    with torch.no_grad():
      return float(loss_fn())

  def forward_backward() -> float:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return float(loss.detach())

  def update() -> None:  # on the gradients the last backward left in place
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()

  def step() -> float:
    loss = forward_backward()
    update()
    return loss

  ops: dict[str, Callable[[], float | None]] = dict(
      step=step, forward=forward, forward_backward=forward_backward, update=update)
  Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on: the steps only
  _reply(dict(rss_runtime_kib=rss_runtime, rss_loaded_kib=rss_kib("VmRSS")))
  for line in sys.stdin:
    op = line.strip()
    if op == "quit":
      return
    if op == "peak_rss":
      _reply(dict(peak_rss_kib=rss_kib("VmHWM")))
      continue
    if op not in ops:
      raise ValueError(f"torch worker: unknown op {op!r}, expected one of {sorted(ops)}")
    t0 = time.perf_counter()
    loss = ops[op]()
    _reply(dict(seconds=time.perf_counter() - t0, loss=loss))


class TorchSide:
  """The torch worker process, driven one operation at a time."""

  name = "torch"

  def __init__(self, hf_dir: Path, batch: dict[str, np.ndarray], tmp: Path, *, threads: int,
               adamw_kwargs: dict[str, Any]):
    np.savez(tmp / "batch.npz", **batch)
    spec = dict(hf_dir=str(hf_dir), batch=str(tmp / "batch.npz"), threads=threads,
                adamw_kwargs=adamw_kwargs)
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    self.proc = subprocess.Popen([sys.executable, __file__, "--torch-worker", str(tmp / "spec.json")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._read()  # runtime and loaded RSS
    self.losses = [self.request("step")["loss"] for _ in range(2)]  # steps 0 and 1, untimed

  def _read(self) -> dict[str, Any]:
    for line in self.proc.stdout:
      if line.startswith(_REPLY):
        return json.loads(line[len(_REPLY):])
      sys.stderr.write(line)
    raise RuntimeError(f"torch worker exited with status {self.proc.wait()} before replying")

  def request(self, op: str) -> dict[str, Any]:
    self.proc.stdin.write(op + "\n")
    self.proc.stdin.flush()
    return self._read()

  def run(self, op: str) -> float:
    return self.request(op)["seconds"]

  def close(self) -> None:
    self.proc.stdin.write("quit\n")
    self.proc.stdin.close()
    if self.proc.wait() != 0:
      raise RuntimeError(f"torch worker exited with status {self.proc.returncode}")


# ----------------------------------------------------------------------------- our side



class OursSide:
  """Our `TrainStep` on one batch, plus the parts of the step jitted alone for the profile."""

  def __init__(self, config, params, batch: dict[str, np.ndarray], *, remat: bool):
    import jax
    import jax.numpy as jnp
    from atommem_jax.training import step as step_lib

    self.remat = remat
    self.name = f"ours remat {'on' if remat else 'off'}"
    optim = step_lib.OptimConfig(learning_rate=LR, b1=BETAS[0], b2=BETAS[1], eps=EPS,
                                 weight_decay=WEIGHT_DECAY, clip_norm=CLIP, end_lr_ratio=1.0)
    self.tx = step_lib.make_optimizer(optim)
    self.loss = step_lib.LossConfig(kind="sft", max_segments=1, remat=remat)
    self.config = config
    self.train = step_lib.TrainStep(config, self.loss, self.tx)
    self.state = step_lib.init_state(jax.tree.map(jnp.array, params), self.tx)  # a copy: donated
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}

    compiled_before = CLOCK.seconds
    self.losses = [float(self._step()) for _ in range(2)]  # steps 0 (compiles) and 1, untimed
    self.compile_s = CLOCK.seconds - compiled_before
    analysis = self.train.lower(self.state, self.batch).compile().memory_analysis()
    self.memory = dict(argument=analysis.argument_size_in_bytes,
                       output=analysis.output_size_in_bytes,
                       alias=analysis.alias_size_in_bytes, temp=analysis.temp_size_in_bytes)
    self._parts: dict[str, Callable[[], Any]] | None = None

  @property
  def peak_bytes(self) -> int:
    m = self.memory
    return m["argument"] + m["output"] - m["alias"] + m["temp"]

  def _step(self):
    import jax
    self.state, metrics = self.train(self.state, self.batch)
    return jax.block_until_ready(metrics["loss"])

  def _build_parts(self) -> dict[str, Callable[[], Any]]:
    """forward, forward_backward and update jitted alone (the update donates the state)."""
    import jax
    import optax
    from atommem_jax.training import step as step_lib

    fn = functools.partial(step_lib.loss_fn, model_config=self.config, loss=self.loss)
    forward = jax.jit(lambda p, b: fn(p, b)[0])
    forward_backward = jax.jit(jax.value_and_grad(fn, has_aux=True))
    tx = self.tx

    @functools.partial(jax.jit, donate_argnums=0)
    def update(state, grads):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return state.replace(params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state), optax.global_norm(grads)

    (_, _), grads = jax.block_until_ready(forward_backward(self.state.params, self.batch))

    def run_update():
      self.state, norm = update(self.state, grads)
      return jax.block_until_ready(norm)

    parts = dict(forward=lambda: jax.block_until_ready(forward(self.state.params, self.batch)),
                 forward_backward=lambda: jax.block_until_ready(
                     forward_backward(self.state.params, self.batch)),
                 update=run_update)
    for part in parts.values():  # compile and warm up
      part()
    return parts

  def run(self, op: str) -> float:
    if op == "step":
      fn = self._step
    else:
      if self._parts is None:
        self._parts = self._build_parts()
      fn = self._parts[op]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

  def check_no_recompiles(self) -> None:
    if self.train.compiles != 1:
      raise RuntimeError(f"{self.name}: TrainStep traced {self.train.compiles} times for one "
                         "batch shape")


# ----------------------------------------------------------------------------- SFT section


@dataclasses.dataclass
class Row:
  model: str
  params_m: float
  batch: int
  seq: int
  flops: float  # model FLOPs of one step
  seconds: dict[str, dict[str, float]]  # op -> side name -> median seconds
  losses: dict[str, list[float]]  # side name -> [step 0 loss, step 1 loss]
  torch_memory: dict[str, int]  # KiB: rss_runtime_kib, rss_loaded_kib, peak_rss_kib
  ours_memory: dict[str, dict[str, int]]  # side name -> XLA memory_analysis bytes (+ "peak")
  compile_s: dict[str, float]  # side name -> compile seconds

  @property
  def tokens(self) -> int:
    return self.batch * self.seq

  def ratio(self, side: str = "ours remat off", op: str = "step") -> float:
    return self.seconds[op]["torch"] / self.seconds[op][side]


def bench_model(name: str, config, params, *, batch: int, seq: int, steps: int, profile: bool,
                threads: int, adamw_kwargs: dict[str, Any]) -> Row:
  """Both sides on one model: warm-up, interleaved timed steps, memory, the profile."""
  import jax
  from atommem_jax.models import hf_io

  data = make_batch(batch, seq, config.vocab_size)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    hf_dir = hf_io.save_pretrained(config, params, tmp / "hf")
    hf_config = json.loads((hf_dir / "config.json").read_text())
    torch_side = TorchSide(hf_dir, data, tmp, threads=threads, adamw_kwargs=adamw_kwargs)
    ours = [OursSide(config, params, data, remat=r) for r in (True, False)]
    sides: list[Side] = [*ours, torch_side]
    times = interleaved(sides, "step", steps)
    for o in ours:
      o.check_no_recompiles()
    torch_memory = dict(torch_side.info, **torch_side.request("peak_rss"))
    print(f"  {name} {batch}x{seq}, s/step in each round: " + "; ".join(
        f"{k} {' '.join(f'{t:.3f}' for t in ts)}" for k, ts in times.items()), flush=True)
    seconds = {"step": times}
    if profile:
      for op in OPS[1:]:
        seconds[op] = interleaved(sides, op, steps)
    seconds = {op: {k: statistics.median(ts) for k, ts in by_side.items()}
               for op, by_side in seconds.items()}
    torch_side.close()
  return Row(name, n_params / 1e6, batch, seq, step_flops(hf_config, batch, seq), seconds,
             {s.name: s.losses for s in sides}, torch_memory,
             {o.name: dict(o.memory, peak=o.peak_bytes) for o in ours},
             {o.name: o.compile_s for o in ours})


def _table(cols: Sequence[str], lines: list[Sequence[Any]]) -> None:
  print("| " + " | ".join(cols) + " |")
  print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
  for cells in lines:
    print("| " + " | ".join(str(c).rjust(len(h)) for c, h in zip(cells, cols)) + " |")


def print_tables(rows: list[Row]) -> None:
  print("\nSFT train step (forward + backward + clip + AdamW), float32, median step time, "
        "sides interleaved")
  lines = []
  for r in rows:
    t = r.seconds["step"]["torch"]
    for side in r.ours_memory:
      s = r.seconds["step"][side]
      lines.append((r.model, f"{r.params_m:.1f}M", f"{r.batch}x{r.seq}", side.split()[-1],
                    f"{r.tokens / t:,.0f}", f"{r.tokens / s:,.0f}", f"{t / s:.2f}x",
                    f"{r.compile_s[side]:.1f}"))
  _table(("model", "params", "batch x seq", "our remat", "torch tok/s", "ours tok/s",
          "ours/torch", "our compile s"), lines)

  print("\nSame function: the losses of both sides (step 0 = the initial weights, step 1 = "
        "after one update)")
  lines = []
  for r in rows:
    t, o = r.losses["torch"], r.losses["ours remat off"]
    lines.append((r.model, f"{t[0]:.6f}", f"{o[0]:.6f}", f"{abs(o[0] - t[0]):.2e}",
                  f"{t[1]:.6f}", f"{o[1]:.6f}", f"{abs(o[1] - t[1]):.2e}"))
  _table(("model", "torch loss 0", "ours loss 0", "|diff| 0", "torch loss 1", "ours loss 1",
          "|diff| 1"), lines)

  print("\nPeak memory of a step: ours = XLA memory_analysis (argument + output - aliased + "
        "temp); torch = the worker's peak RSS during the steps, and that minus its RSS "
        "after importing torch and transformers")
  lines = []
  mib = 2.0 ** 20
  for r in rows:
    tm = r.torch_memory
    for side, m in r.ours_memory.items():
      lines.append((r.model, side.split()[-1], f"{m['argument'] / mib:,.0f}",
                    f"{m['output'] / mib:,.0f}", f"{m['alias'] / mib:,.0f}",
                    f"{m['temp'] / mib:,.0f}", f"{m['peak'] / mib:,.0f}",
                    f"{tm['peak_rss_kib'] / 1024:,.0f}",
                    f"{(tm['peak_rss_kib'] - tm['rss_runtime_kib']) / 1024:,.0f}"))
  _table(("model", "our remat", "arg MiB", "out MiB", "aliased MiB", "temp MiB", "ours MiB",
          "torch peak RSS MiB", "torch minus runtime MiB"), lines)

  if all("update" in r.seconds for r in rows):
    print("\nProfile, median seconds of each part run alone (interleaved): forward = the loss "
          "only; fwd+bwd = loss and gradients; update = clipping + AdamW on given gradients; "
          "GFLOP/s = model FLOPs of a step (3 x forward) / step time")
    lines = []
    for r in rows:
      for side in r.seconds["step"]:
        fwd, fb, upd, step = (r.seconds[op][side] for op in OPS[1:] + OPS[:1])
        lines.append((r.model, side, f"{fwd:.3f}", f"{fb:.3f}", f"{(fb - fwd) / fwd:.2f}",
                      f"{upd:.3f}", f"{step:.3f}", f"{r.flops / 1e9:.1f}",
                      f"{r.flops / step / 1e9:.0f}"))
    _table(("model", "side", "forward s", "fwd+bwd s", "bwd / fwd", "update s", "step s",
            "step GFLOP", "GFLOP/s"), lines)


def sft_section(args: argparse.Namespace, threads: int) -> list[Row]:
  """The SFT step on the random Qwen3 model and on SmolLM2-135M; prints the tables."""
  import jax
  from atommem_jax.models import config as config_lib
  from atommem_jax.models.gguf_io import from_gguf
  from atommem_jax.models.tokenizer import smollm2_gguf_path
  from atommem_jax.models.transformer import init_params

  adamw_kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True},
                  "for-loop": {"foreach": False}}[args.torch_adamw]
  steps = 2 if args.quick else args.steps
  common = dict(profile=not args.no_profile, threads=threads, adamw_kwargs=adamw_kwargs)
  rows = []
  if not args.skip_random:
    config = config_lib.ModelConfig(**RANDOM_QWEN3)
    rows.append(bench_model("random Qwen3", config, init_params(config, seed=0), batch=8,
                            seq=256, steps=3 * steps, **common))
  if not args.skip_smollm2:
    config, params = from_gguf(smollm2_gguf_path())
    rows.append(bench_model("SmolLM2-135M", config, params, batch=args.smollm2_batch,
                            seq=128 if args.quick else args.smollm2_seq, steps=steps, **common))
    del params
  jax.clear_caches()
  print_tables(rows)
  return rows


# ----------------------------------------------------------------------------- GRPO


def grpo_section(iterations: int) -> None:
  """Where one GRPO step's time goes: sampling the rollouts (the rollout engine + sampler),
  the trainer's recomputation of old (and reference) log-probs, and the update, from the
  learner's own per-iteration timings on the tiny CPU config (2 questions x 4 rollouts)."""
  import tempfile

  import numpy as np

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from configs import tiny_cpu_grpo

  from atommem_jax.training import grpo, logs

  with tempfile.TemporaryDirectory() as tmp:
    c = tiny_cpu_grpo.get_config()
    c.output_dir, c.warm_start.sft_steps = tmp, 0
    c.grpo.questions_per_step, c.grpo.group_size = 2, 4
    c.batch.rows, c.batch.seq_len, c.checkpoint_every = 64, 768, 10_000  # <= 64 turns: 1 minibatch
    c.sampling.max_new_tokens, c.sampling.max_answer_tokens, c.env.max_calls = 32, 8, 6
    c.steps, c.export_hf = iterations, False  # one minibatch, one epoch: a step per iteration
    grpo.train(c, echo=lambda s: None)
    records = logs.read_metrics(pathlib.Path(tmp) / "metrics.jsonl")
  last = {r["iteration"]: r for r in records}  # an iteration's last step: its cumulative times
  per_iteration = [last[i] for i in sorted(last)]
  warm = per_iteration[1:] or per_iteration  # the first iteration compiles sampler and step
  parts = {k: float(np.median([r[k] for r in warm]))
           for k in ("sampling_seconds", "logprob_seconds", "update_seconds")}
  total = sum(parts.values())
  print(f"\nGRPO step (tiny CPU config, 2 questions x 4 rollouts, {records[-1]['rollout_rows']} "
        f"turns; median of {len(warm)} iterations after the first, which compiles)")
  print("| part | seconds | share |\n|------|---------|-------|")
  for k, v in parts.items():
    print(f"| {k.replace('_seconds', '')} | {v:7.2f} | {v / total:6.1%} |")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="2 timed steps (random model: 6), SmolLM2 rows of 128 tokens")
  ap.add_argument("--steps", type=int, default=3,
                  help="timed steps per side for SmolLM2 (the random model: 3x as many)")
  ap.add_argument("--smollm2-batch", type=int, default=2)
  ap.add_argument("--smollm2-seq", type=int, default=512)
  ap.add_argument("--skip-random", action="store_true")
  ap.add_argument("--skip-smollm2", action="store_true")
  ap.add_argument("--no-profile", action="store_true", help="skip the forward / backward split")
  ap.add_argument("--skip-grpo", action="store_true", help="skip the GRPO step time split")
  ap.add_argument("--torch-adamw", default="foreach", choices=("foreach", "fused", "for-loop"),
                  help="torch.optim.AdamW implementation")
  ap.add_argument("--torch-worker", metavar="SPEC", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.torch_worker:
    torch_worker(args.torch_worker)
    return
  if args.steps <= 0:
    raise SystemExit(f"--steps must be positive, got {args.steps}")

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  CLOCK.install()
  threads = os.cpu_count() or 1
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {version('torch')}, "
        f"transformers {version('transformers')}, {threads} CPU threads, float32, "
        f"load average {os.getloadavg()[0]:.1f}", flush=True)
  rows = sft_section(args, threads)
  if not args.skip_grpo:
    grpo_section(iterations=2 if args.quick else 4)
  print(f"load average at the end: {os.getloadavg()[0]:.1f} on {threads} cores")
  smol = next((r for r in rows if r.model == "SmolLM2-135M"), None)
  if smol is not None:
    print(f"sft train ratio (ours/torch, SmolLM2-135M): {smol.ratio():.2f}")


if __name__ == "__main__":
  main()
