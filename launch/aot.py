"""Ahead-of-time compile a training config's steps for a TPU topology, on a CPU host.

  python launch/aot.py --config=configs/qwen3_8b_sft.py --topology=v5p:4x4x4 [--config.key=value]

Needs libtpu (`pip install -e .[tpu]`); no TPU, no checkpoint and no weights: every input is a
`jax.ShapeDtypeStruct` carrying the config's sharding over the topology's devices
(`jax.experimental.topologies`). The config is validated first (a bad key fails before any
compile, naming the key); then the real functions a run jits are compiled:

* the train step (`training.step.TrainStep`: SFT or GRPO loss, optimizer, micro-batches) on
  the float32 master weights + optimizer state, with the config's mesh, rules and batch;
* GRPO also: the frozen reference policy's log-prob function (`step.make_logprob_fn`; its
  float32 params stay resident beside the train state, and they are counted), and the
  sampler's prefill and decode loop (`models.sampler._prefill` / `_decode`) as one host runs
  them in `training/grpo.py`: its questions_per_step / hosts questions x group_size rows, on
  a copy of the params over its own chips (`distributed.local_replica`; compiled on those
  chips as a topology of their own, e.g. v5p:2x2x1), prompts of sampling.max_prompt_tokens
  and a cache for prompt + sampling.max_new_tokens.

Per device it prints, for each function, XLA's memory analysis (argument, output, temporary
and total bytes, against the chip's HBM), the FLOPs and bytes accessed per call, a roofline
time estimate max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth), and for the train step
the estimated MFU = model FLOPs / (chips x peak x estimated time), where

  model FLOPs = 6 N tokens + 6 L rows T^2 H Dh

(N: the weights of every matmul, LM head included, embedding lookup not; tokens = rows x T
of the packed batch, padding included; the second term is causal attention over whole rows
of length T, H query heads of size Dh, L layers; forward + backward = 3 x forward). The
estimate ignores communication and assumes compute and memory traffic overlap per step, so it
is an upper bound of what a run measures. The last line is

  fits: yes|no, est. MFU: NN.N%

and the exit status is 0 when every phase fits (what is resident together: the train step,
plus for GRPO the reference params, and during sampling / log-prob passes the train state),
1 when one does not (or the TPU compiler refuses a function for lack of HBM: its message and
the bytes it asked for are printed), 2 for a bad config or topology.

XLA's `cost_analysis()` counts a while loop's body once, whatever its trip count (a scan over
36 layers costs as much as one layer there). `loop_weighted_cost` therefore takes the compiled
per-device HLO module, has XLA's own cost analysis price each computation, and weights each
loop body by its trip count read from the loop condition (`i < N`); a data-dependent loop
(the decode `while_loop`) is counted at its bound (every row generates max_new_tokens).
"""
from __future__ import annotations

import os
import sys

# Compile for TPU on this host; never touch a local accelerator. Several AOT processes (and
# any other JAX process that loads libtpu) may run at once: none of them owns a TPU.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["TPU_SKIP_MDS_QUERY"] = "1"
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from atommem_jax.agent.build import ConfigError  # noqa: E402
from atommem_jax.models import config as model_config_lib  # noqa: E402
from atommem_jax.models import partitioning, sampler, transformer  # noqa: E402
from atommem_jax.models.config import ModelConfig  # noqa: E402
from atommem_jax.training import config as cfg_lib  # noqa: E402
from atommem_jax.training import sharding, tpu_specs  # noqa: E402
from atommem_jax.training import step as step_lib  # noqa: E402

# Architectures a config may name in `model.architecture` (the checkpoint's shape, for
# compiling without the checkpoint).
ARCHITECTURES: dict[str, Callable[[], ModelConfig]] = {
    "qwen3_8b": model_config_lib.qwen3_8b,
    "smollm2_135m": model_config_lib.smollm2_135m,
}


# ============================================================================ loop-weighted cost


@dataclasses.dataclass(frozen=True)
class Cost:
  """Per-device cost of one call of a compiled function (loops weighted by trip count)."""

  flops: float
  bytes_accessed: float
  transcendentals: float
  loops: tuple[str, ...] = ()  # "name: N trips (exact | bound | unknown, counted once)"

  def __add__(self, o: "Cost") -> "Cost":
    return Cost(self.flops + o.flops, self.bytes_accessed + o.bytes_accessed,
                self.transcendentals + o.transcendentals, self.loops + o.loops)

  def __sub__(self, o: "Cost") -> "Cost":
    return Cost(self.flops - o.flops, self.bytes_accessed - o.bytes_accessed,
                self.transcendentals - o.transcendentals, self.loops)

  def scaled(self, n: float) -> "Cost":
    return Cost(self.flops * n, self.bytes_accessed * n, self.transcendentals * n, self.loops)


ZERO = Cost(0.0, 0.0, 0.0)

_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) \(.*\) -> .* \{$")
_NAME = re.compile(r"^\s*(ROOT )?%([\w.\-]+) = ")
_REF = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"\b(?:calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")


@dataclasses.dataclass
class _Instr:
  name: str
  opcode: str
  operands: list[str]
  literal: str  # the text between the parentheses (a constant's value)
  attrs: str


@dataclasses.dataclass
class _Computation:
  name: str
  lines: list[str]
  instrs: dict[str, _Instr]
  root: str = ""


def _parse_instr(line: str) -> tuple[bool, _Instr] | None:
  m = _NAME.match(line)
  if not m:
    return None
  rest = line[m.end():]
  if rest.startswith("("):  # a tuple shape
    depth = 0
    for i, ch in enumerate(rest):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        break
    rest = rest[i + 1:].lstrip()
  else:
    rest = rest.split(" ", 1)[1]
  opcode, rest = rest.split("(", 1)
  depth, i = 1, 0
  while depth and i < len(rest):
    depth += (rest[i] in "({") - (rest[i] in ")}")
    i += 1
  args, attrs = rest[:i - 1], rest[i:]
  return bool(m.group(1)), _Instr(m.group(2), opcode.strip(), _REF.findall(args), args, attrs)


def parse_hlo(text: str) -> tuple[dict[str, _Computation], str]:
  """Computations of an HLO module's text by name, and the entry computation's name."""
  comps: dict[str, _Computation] = {}
  entry, cur = "", None
  for line in text.splitlines():
    h = _HEADER.match(line)
    if h:
      cur = _Computation(h.group(2), [line], {})
      comps[cur.name] = cur
      entry = cur.name if h.group(1) else entry
      continue
    if cur is None:
      continue
    cur.lines.append(line)
    if line.strip() == "}":
      cur = None
      continue
    parsed = _parse_instr(line)
    if parsed:
      is_root, ins = parsed
      cur.instrs[ins.name] = ins
      if is_root:
        cur.root = ins.name
  if not entry:
    raise ValueError("HLO module text has no ENTRY computation")
  return comps, entry


def _callees(ins: _Instr) -> list[str]:
  """Computations an instruction runs inline (fusions, calls, conditionals), not loops."""
  out = _CALLED.findall(ins.attrs)
  for group in _BRANCHES.findall(ins.attrs):
    out += _REF.findall(group)
  return out


# Pallas splash-attention kernels (models/splash.py) are custom calls, opaque to XLA's cost
# analysis (it counts their operands' bytes and no FLOPs). Each is priced from its grid:
# per (query block, key block) pair computed and per query head, `_SPLASH_MATMULS` matmuls of
# 2 b^2 Dh FLOPs (fwd: QK^T, PV; dq: QK^T, dO V^T, dS K; dkv: QK^T, dO V^T, P^T dO, dS^T Q,
# plus dS K when it also writes dQ, the fused backward); causal rows of nb = T / b blocks
# compute nb (nb + 1) / 2 pairs. Bytes: each pair streams two b x Dh blocks (K and V; for
# dkv, Q and dO) beyond the operands XLA already counts once.
_SPLASH = re.compile(r"^splash_(?:mha|mqa)_(fwd|dq|dkv)")
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_FLOAT_SHAPE = re.compile(r"\b(bf16|f16|f32)\[([\d,]+)\]")
_ITEMSIZE = {"bf16": 2, "f16": 2, "f32": 4}


def splash_kernel_cost(line: str, seq_len: int, head_dim: int) -> Cost | None:
  """The cost of one splash kernel call from its HLO line (None: not a splash kernel)."""
  from atommem_jax.models import splash

  m = _NAME.match(line)
  phase = _SPLASH.match(m.group(2)) if m else None
  if phase is None or " custom-call(" not in line:
    return None
  result = line[m.end():line.index(" custom-call(")]
  outs = [(dt, tuple(int(d) for d in dims.split(","))) for dt, dims in _FLOAT_SHAPE.findall(result)]
  outs = [(dt, sh) for dt, sh in outs if len(sh) >= 3 and sh[-2:] == (seq_len, head_dim)]
  if not outs:
    raise ValueError(f"{m.group(2)}: no [..., {seq_len}, {head_dim}] output in {result[:200]}")
  b = splash.block_size(seq_len)
  nb = seq_len // b
  fused = phase.group(1) == "dkv" and len(outs) == 3
  if fused:  # (dQ as per-key-block partials [nb, heads..., T, Dh], dK, dV)
    heads = math.prod(outs[0][1][1:-2])
  else:  # the output (and, fwd, the lane-wide log-sum-exp) [heads..., T, Dh]
    heads = max(math.prod(sh[:-2]) for _, sh in outs)  # query heads x rows of the call
  matmuls = _SPLASH_MATMULS[phase.group(1)] + fused
  pairs = heads * nb * (nb + 1) // 2
  return Cost(flops=float(matmuls * 2 * b * b * head_dim * pairs),
              bytes_accessed=float(pairs * 2 * b * head_dim * _ITEMSIZE[outs[0][0]]),
              transcendentals=float(pairs * b * b))  # one exp per score, every phase


class _LoopCounter:
  """Trip counts of while loops from their condition computations (`i < N`, i from its
  initial value in steps of the body's increment)."""

  def __init__(self, comps: dict[str, _Computation]):
    self.comps = comps
    # fused computation -> (caller computation, the fusion instruction), to follow a value
    # from a fusion's parameter to the operand it was given
    self.caller: dict[str, tuple[str, _Instr]] = {}
    for c in comps.values():
      for ins in c.instrs.values():
        for callee in _callees(ins):
          self.caller.setdefault(callee, (c.name, ins))

  def resolve(self, comp: str, name: str, depth: int = 0) -> tuple[str, int] | None:
    """("const", value) or ("iv", tuple index of the loop state) for a value, else None."""
    ins = self.comps[comp].instrs.get(name)
    if ins is None or depth > 16:
      return None
    if ins.opcode == "constant":
      try:
        return ("const", int(ins.literal.strip()))
      except ValueError:
        return None
    if ins.opcode in ("copy", "bitcast", "convert", "reshape") and ins.operands:
      return self.resolve(comp, ins.operands[0], depth + 1)
    if ins.opcode == "get-tuple-element" and ins.operands:
      src = self.comps[comp].instrs.get(ins.operands[0])
      m = re.search(r"index=(\d+)", ins.attrs)
      if src is not None and src.opcode == "parameter" and m and comp not in self.caller:
        return ("iv", int(m.group(1)))  # an element of the loop state
      return None
    if ins.opcode == "parameter" and comp in self.caller:
      caller, fusion = self.caller[comp]
      idx = int(ins.literal.strip())
      if idx < len(fusion.operands):
        return self.resolve(caller, fusion.operands[idx], depth + 1)
    return None

  def _compares(self, comp: str, seen: set[str]) -> list[tuple[str, _Instr]]:
    if comp in seen:
      return []
    seen.add(comp)
    out = []
    for ins in self.comps[comp].instrs.values():
      if ins.opcode == "compare":
        out.append((comp, ins))
      for callee in _callees(ins):
        out += self._compares(callee, seen)
    return out

  def trips(self, caller: str, loop: _Instr) -> tuple[int, str]:
    """(trip count, "exact" | "bound" | "unknown") of a while instruction in `caller`."""
    cond = re.search(r"condition=%([\w.\-]+)", loop.attrs).group(1)
    body = re.search(r"body=%([\w.\-]+)", loop.attrs).group(1)
    found = []
    for comp, cmp in self._compares(cond, set()):
      if len(cmp.operands) != 2:
        continue
      a, b = (self.resolve(comp, o) for o in cmp.operands)
      direction = re.search(r"direction=(\w+)", cmp.attrs).group(1)
      if a and b and a[0] == "iv" and b[0] == "const":
        found.append((a[1], b[1], direction, cmp.name))
      elif a and b and a[0] == "const" and b[0] == "iv":
        flip = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE"}.get(direction, direction)
        found.append((b[1], a[1], flip, cmp.name))
    if len({f[:3] for f in found}) != 1:
      return 1, "unknown"
    index, limit, direction, cmp_name = found[0]
    init = self._init(caller, loop, index)
    step = self._step(body, index)
    if step == 0:
      return 1, "unknown"
    if direction in ("LT", "NE") and step > 0:
      n = -(-(limit - init) // step)
    elif direction == "LE" and step > 0:
      n = (limit - init) // step + 1
    elif direction == "GT" and step < 0:
      n = -(-(init - limit) // -step)
    elif direction == "GE" and step < 0:
      n = (init - limit) // -step + 1
    else:
      return 1, "unknown"
    root = self.comps[cond].instrs.get(self.comps[cond].root)
    exact = root is not None and (root.name == cmp_name or (
        root.opcode == "fusion" and any(cmp_name in self.comps[c].instrs for c in _callees(root))
        and sum(i.opcode == "compare" for c in _callees(root)
                for i in self.comps[c].instrs.values()) == 1))
    return max(0, n), "exact" if exact else "bound"

  def _init(self, caller: str, loop: _Instr, index: int) -> int:
    tup = self.comps[caller].instrs.get(loop.operands[0]) if loop.operands else None
    if tup is not None and tup.opcode == "tuple" and index < len(tup.operands):
      v = self.resolve(caller, tup.operands[index])
      if v and v[0] == "const":
        return v[1]
    return 0  # scans count from 0

  def _step(self, body: str, index: int) -> int:
    comp = self.comps[body]
    root = comp.instrs.get(comp.root)
    if root is None or root.opcode != "tuple" or index >= len(root.operands):
      return 1
    upd = comp.instrs.get(root.operands[index])
    if upd is not None and upd.opcode in ("add", "subtract") and len(upd.operands) == 2:
      a, b = (self.resolve(body, o) for o in upd.operands)
      sign = 1 if upd.opcode == "add" else -1
      if a and b and a == ("iv", index) and b[0] == "const":
        return sign * b[1]
      if a and b and b == ("iv", index) and a[0] == "const" and sign == 1:
        return a[1]
    return 1


def _module_text(compiled: Any) -> str:
  from jaxlib import _hlo

  modules = compiled.runtime_executable().hlo_modules()
  if len(modules) != 1:
    raise ValueError(f"expected one HLO module per compiled function, got {len(modules)}")
  opts = _hlo.HloPrintOptions()
  opts.print_metadata = False  # stack frame ids would not resolve in a re-parsed part
  opts.print_backend_config = False
  return modules[0].to_string(opts)


def loop_weighted_cost(hlo_text: str, unknown_trips: tuple[int, str] | None = None,
                       splash_shape: tuple[int, int] | None = None) -> Cost:
  """The per-device cost of one call of a compiled HLO module, with every while loop's body
  and condition weighted by its trip count (see the module docstring).

  unknown_trips: (count, why) for loops whose condition does not give their trip count (a
  data-dependent `while_loop`: the caller knows its bound); without it they count once.
  splash_shape: (T, Dh) of the splash-attention kernels the module runs, which XLA does not
  price: `splash_kernel_cost` adds each one, under the same loop weighting.

  Each computation is priced by XLA's HloCostAnalysis (`hlo_module_cost_analysis` on this
  host's client) as the entry of a copy of the module; a loop's body then replaces the one
  pass XLA counted with its trip count's worth, recursively for nested loops.
  """
  from jax._src import xla_bridge
  from jax._src.lib import _jax
  from jaxlib import _hlo

  comps, entry = parse_hlo(hlo_text)
  counter = _LoopCounter(comps)
  client = xla_bridge.get_backend("cpu")
  inclusive: dict[str, Cost] = {}

  def priced(name: str) -> Cost:
    """XLA's cost of `name` as the entry (its loops' bodies counted once)."""
    if name not in inclusive:
      parts = ["HloModule aot_part"]
      for c in comps.values():
        head = c.lines[0][len("ENTRY "):] if c.lines[0].startswith("ENTRY ") else c.lines[0]
        parts.append("\n".join([("ENTRY " if c.name == name else "") + head] + c.lines[1:]))
      d = _jax.hlo_module_cost_analysis(client, _hlo.hlo_module_from_text("\n\n".join(parts)))
      inclusive[name] = Cost(float(d.get("flops", 0.0)), float(d.get("bytes accessed", 0.0)),
                             float(d.get("transcendentals", 0.0))) + kernels_under(name)
    return inclusive[name]

  direct: dict[str, Cost] = {}  # computation -> its own splash kernels' cost
  if splash_shape is not None:
    for comp in comps.values():
      for line in comp.lines:
        k = splash_kernel_cost(line, *splash_shape)
        if k is not None:
          direct[comp.name] = direct.get(comp.name, ZERO) + k

  def kernels_under(name: str) -> Cost:
    """The kernels `name` runs, counted as XLA counts an entry: every computation it reaches
    (loop bodies and conditions included) once."""
    if not direct:
      return ZERO
    seen, todo, total = set(), [name], ZERO
    while todo:
      n = todo.pop()
      if n in seen or n not in comps:
        continue
      seen.add(n)
      total = total + direct.get(n, ZERO)
      for ins in comps[n].instrs.values():
        todo += _callees(ins) + re.findall(r"(?:body|condition)=%([\w.\-]+)", ins.attrs)
    return Cost(total.flops, total.bytes_accessed, total.transcendentals)

  def loops_in(name: str, seen: set[str]) -> list[tuple[str, _Instr]]:
    """While instructions run by `name` or by computations it runs inline."""
    if name in seen:
      return []
    seen.add(name)
    out = []
    for ins in comps[name].instrs.values():
      if ins.opcode == "while":
        out.append((name, ins))
      for callee in _callees(ins):
        out += loops_in(callee, seen)
    return out

  def weighted(name: str, depth: int = 0) -> Cost:
    if depth > 32:
      raise ValueError(f"HLO loops nested deeper than 32 at {name}")
    total = priced(name)
    for caller, loop in loops_in(name, set()):
      body = re.search(r"body=%([\w.\-]+)", loop.attrs).group(1)
      cond = re.search(r"condition=%([\w.\-]+)", loop.attrs).group(1)
      n, kind = counter.trips(caller, loop)
      if kind == "unknown" and unknown_trips is not None:
        n, kind = unknown_trips
      note = (f"{loop.name}: {n} trips ({kind})" if kind != "unknown"
              else f"{loop.name}: trip count unknown, counted once")
      total = total - priced(body) - priced(cond)
      total = total + weighted(body, depth + 1).scaled(n) + weighted(cond, depth + 1).scaled(n + 1)
      total = dataclasses.replace(total, loops=total.loops + (note,))
    return total

  return weighted(entry)


# ============================================================================ config and model


def _local_model_dir(c: ml_collections.ConfigDict) -> pathlib.Path | None:
  """The directory holding the checkpoint's config.json, when it is on this host."""
  src = str(c.model.source)
  if src.startswith("hf:"):
    path = pathlib.Path(src[3:])
  elif src.startswith("orbax:"):
    path = pathlib.Path(src[6:]) / "model"
  else:
    return None
  return path if (path / "config.json").is_file() else None


def _source_is_local(c: ml_collections.ConfigDict) -> bool:
  src = str(c.model.source)
  if src in ("tiny", "smollm2", "none"):
    return True
  if src.startswith("gguf:"):
    return pathlib.Path(src[5:]).is_file()
  return _local_model_dir(c) is not None


def validate(c: ml_collections.ConfigDict) -> list[str]:
  """`training.config.validate`, before anything compiles; returns notes to print.

  A checkpoint is rarely on the host that compiles. When `model.source` is not here and the
  config names `model.architecture`, the config is checked against a stand-in model directory
  (that architecture's config.json and the project's test tokenizer): every key is checked,
  and the prompt-length checks count tokens with the test tokenizer instead of the model's."""
  arch = str(c.model.get("architecture", "") or "")
  if arch and arch not in ARCHITECTURES:
    raise ConfigError(f"model.architecture must be one of {sorted(ARCHITECTURES)} or '', got "
                      f"{arch!r}")
  if _source_is_local(c) or not arch:
    cfg_lib.validate(c)  # names model.source if it is missing and no architecture is given
    return []
  from atommem_jax.models import hf_io
  from atommem_jax.models.tokenizer import build_test_tokenizer

  with tempfile.TemporaryDirectory() as d:
    stand_in = pathlib.Path(d)
    build_test_tokenizer(stand_in)
    (stand_in / "config.json").write_text(json.dumps(hf_io.config_to_hf(ARCHITECTURES[arch]())))
    v = ml_collections.ConfigDict(c.to_dict())
    v.model.source = f"hf:{stand_in}"
    v.model.tokenizer = ""
    cfg_lib.validate(v)
  return [f"model.source={c.model.source} is not on this host: validated with "
          f"model.architecture={arch} (its config.json; prompt lengths counted with the test "
          "tokenizer)"]


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
  """The policy's architecture without its weights, with the run's dtypes (float32 master
  weights, compute in model.dtype) as `trainer.setup` builds it."""
  arch = str(c.model.get("architecture", "") or "")
  src = str(c.model.source)
  local = _local_model_dir(c)
  if local is not None:
    from atommem_jax.models import hf_io

    mc = hf_io.config_from_hf(json.loads((local / "config.json").read_text()))
    shape = lambda m: (m.family, m.vocab_size, m.hidden_size, m.intermediate_size,  # noqa: E731
                       m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim,
                       m.tie_word_embeddings)
    if arch and shape(mc) != shape(ARCHITECTURES[arch]()):
      raise ConfigError(f"model.architecture={arch} does not describe the checkpoint of "
                        f"model.source={src} ({local / 'config.json'})")
  elif arch:
    mc = ARCHITECTURES[arch]()
  elif src == "tiny":
    from atommem_jax.agent import build

    built: dict[str, ModelConfig] = {}

    def shapes():  # the training loader itself, traced abstractly: no weights are made
      model = build.load_model(c, pathlib.Path(d))
      built["config"] = model.config
      return model.params

    with tempfile.TemporaryDirectory() as d:
      jax.eval_shape(shapes)
    mc = built["config"]
  elif src == "smollm2" or src.startswith("gguf:"):
    from atommem_jax.models import gguf_io
    from atommem_jax.models.tokenizer import smollm2_gguf_path

    path = smollm2_gguf_path() if src == "smollm2" else pathlib.Path(src[5:])
    mc = gguf_io.config_from_gguf_reader(gguf_io.open_gguf(path))
  else:
    raise ConfigError(f"model.source={src}: no config.json on this host; set "
                      f"model.architecture to one of {sorted(ARCHITECTURES)}")
  return mc.replace(param_dtype="float32", dtype=c.model.dtype,
                    attention=c.model.get("attention", "xla"))


def matmul_params(mc: ModelConfig) -> int:
  """Weights that take part in a matmul per token: attention, MLP and the LM head."""
  d, h, k, dh, f = mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.head_dim, mc.intermediate_size
  per_layer = d * (h + 2 * k) * dh + h * dh * d + 3 * d * f
  return mc.num_layers * per_layer + d * mc.vocab_size


def train_model_flops(mc: ModelConfig, rows: int, seq_len: int) -> float:
  """6 N tokens + 6 L rows T^2 H Dh (see the module docstring)."""
  tokens = rows * seq_len
  attention = 6 * mc.num_layers * rows * seq_len**2 * mc.num_heads * mc.head_dim
  return 6.0 * matmul_params(mc) * tokens + attention


# ============================================================================ compiling


@dataclasses.dataclass
class Row:
  """One compiled function, per device."""

  name: str
  argument: int
  output: int
  alias: int
  temp: int
  cost: Cost
  compile_s: float
  model_flops: float = 0.0  # per call, all chips (train step only)
  tokens: int = 0  # tokens processed per call (sampler only)
  chips: float = 0.0  # chips the call runs on (sampler: one host's)
  refused: str = ""  # the TPU compiler's out-of-memory message, when it refused to compile

  @property
  def total(self) -> int:
    """Bytes live at the peak of one call: arguments + outputs not aliased to them + temps."""
    return self.argument + self.output - self.alias + self.temp


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _refused(name: str, error: Exception, seconds: float, argument: int, **kw) -> Row:
  """A row for a function the TPU compiler refused for lack of HBM: its message says how
  much the temporaries need; the arguments are counted from their shapes."""
  message = str(error).strip().splitlines()[0]
  m = re.search(r"HLO temporaries \((\d+(?:\.\d+)?)([KMGT]?)\)", message)
  temp = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
  return Row(name, argument, 0, 0, temp, ZERO, seconds, refused=message, **kw)


def compile_row(name: str, lower: Callable[[], Any], args: Any,
                unknown_trips: tuple[int, str] | None = None,
                splash_shape: tuple[int, int] | None = None, **kw) -> tuple[Row, Any]:
  """Compiles one function (`lower()`, whose arguments are the abstract `args`); a row with
  `refused` set when the TPU compiler runs out of HBM. splash_shape: see `loop_weighted_cost`."""
  t0 = time.perf_counter()
  try:
    compiled = lower().compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return _refused(name, e, time.perf_counter() - t0, device_bytes(args), **kw), None
  mem = compiled.memory_analysis()
  cost = loop_weighted_cost(_module_text(compiled), unknown_trips, splash_shape)
  row = Row(name, int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes),
            int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes), cost,
            time.perf_counter() - t0, **kw)
  return row, compiled


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def device_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded `jax.ShapeDtypeStruct`s."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class Phase:
  """What is live together on a device during one part of a step."""

  name: str
  bytes: int
  refused: str = ""  # the compiler refused its function for lack of HBM

  def fits(self, hbm: int) -> bool:
    return not self.refused and self.bytes <= hbm


@dataclasses.dataclass
class Plan:
  """What one config compiles to on one topology."""

  rows: list[Row]
  resident: list[Phase]


def compile_all(c: ml_collections.ConfigDict, mc: ModelConfig, mesh: jax.sharding.Mesh,
                echo: Callable[[str], None]) -> Plan:
  rules = sharding.get_rules(c.sharding_rules)
  loss = cfg_lib.loss_config(c)
  tx = step_lib.make_optimizer(cfg_lib.optim_config(c))
  abstract_params = transformer.abstract_params(mc)
  p_sh = sharding.param_shardings(mc, mesh, rules)
  state_sh = step_lib.TrainState(step=sharding.replicated(mesh), params=p_sh,
                                 opt_state=sharding.opt_state_shardings(tx, abstract_params, p_sh))
  state = _abstract(jax.eval_shape(lambda p: step_lib.init_state(p, tx), abstract_params),
                    state_sh)
  b_sh = sharding.batch_sharding(mesh, rules)
  rows, seq = c.batch.rows, c.batch.seq_len
  floats = ("old_logprobs", "ref_logprobs", "advantages")
  batch = {k: jax.ShapeDtypeStruct((rows, seq), jnp.float32 if k in floats else jnp.int32,
                                   sharding=b_sh) for k in loss.fields}
  train = step_lib.TrainStep(mc, loss, tx, micro_batches=c.batch.micro_batches,
                             state_shardings=state_sh, batch_sharding=b_sh, mesh=mesh, rules=rules)
  out: list[Row] = []
  with partitioning.target_platform("tpu"):
    echo(f"compiling train_step ({c.algorithm}, {rows} rows x {seq} tokens, "
         f"{c.batch.micro_batches} micro-batches) ...")
    kernels = (seq, mc.head_dim) if mc.attention == "splash" else None
    row, _ = compile_row(f"train_step ({c.algorithm})", lambda: train.lower(state, batch),
                         (state, batch), splash_shape=kernels,
                         model_flops=train_model_flops(mc, rows, seq))
    out.append(row)
    state_bytes = device_bytes(state)
    params_bytes = device_bytes(state.params)
    resident = [Phase("train step", row.total, row.refused)]
    ref_bytes = 0
    if c.algorithm == "grpo":
      ref_bytes = params_bytes if c.loss.kl_coef else 0
      resident[0] = Phase("train step + reference params", row.total + ref_bytes, row.refused)
      logprob = step_lib.make_logprob_fn(mc, chunk_size=c.loss.chunk_size, param_shardings=p_sh,
                                         batch_sharding=b_sh, mesh=mesh, rules=rules)
      core = {k: batch[k] for k in ("tokens", "positions", "segment_ids")}
      echo("compiling logprobs (old / reference policy) ...")
      row, _ = compile_row("logprobs (ref / old)", lambda: logprob.lower(state.params, core),
                           (state.params, core), splash_shape=kernels)
      out.append(row)
      # Its params argument is the reference (or the state's own params): the train state
      # and the reference stay resident beside it.
      resident.append(Phase("log-prob pass + train state",
                            row.total + state_bytes + ref_bytes - params_bytes, row.refused))
      for r in _compile_sampler(c, mc, list(mesh.devices.flat), rules, echo):
        out.append(r)  # a host's params copy is its argument; the state stays resident
        resident.append(Phase(f"{r.name.split(' ')[0]} + train state + reference params",
                              r.total + state_bytes + ref_bytes, r.refused))
  return Plan(out, resident)


def _host_devices(devices: list[Any]) -> list[Any]:
  """One host's chips as a slice of their own (e.g. v5p:2x2x1 of v5p:4x4x4): libtpu will
  not compile for a few devices picked out of a bigger topology (device ids must be 0..n-1),
  and a host's chips are such a slice."""
  from jax.experimental import topologies

  mine = [d for d in devices if d.process_index == 0]
  coords = [tuple(d.coords) for d in mine]
  dims = [max(c[i] for c in coords) - min(c[i] for c in coords) + 1 for i in range(3)]
  gen = tpu_specs.generation(mine[0].device_kind)
  shape = dims if gen.three_d else dims[:2]
  name = f"{gen.name}:{'x'.join(map(str, shape))}"
  host = list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  if len(host) != len(mine):
    raise ValueError(f"a host of {len(mine)} devices makes topology {name} of {len(host)}")
  return host


def _compile_sampler(c: ml_collections.ConfigDict, mc: ModelConfig, devices: list[Any],
                     rules: Any, echo: Callable[[str], None]) -> list[Row]:
  """The sampler's prefill and decode loop as one host samples in a GRPO run
  (`training/grpo.py`): its block of questions_per_step / hosts questions x group_size
  rollouts, with a copy of the float32 params on its own chips only
  (`distributed.local_replica`: a mesh (1, local chips, 1), rows split over them)."""
  s, g = c.sampling, c.grpo
  hosts = len({d.process_index for d in devices})
  local = sharding.make_mesh(1, -1, 1, devices=_host_devices(devices))
  batch = sampler.batch_bucket(g.questions_per_step // hosts * g.group_size)
  plen = sampler.bucket_length(s.max_prompt_tokens, sampler.DEFAULT_BUCKETS)
  new = s.max_new_tokens
  rep = sharding.replicated(local)
  rows_sh = sharding.batch_sharding(local, rules) if batch % local.size == 0 else rep
  params = _abstract(transformer.abstract_params(mc), sharding.param_shardings(mc, local, rules))
  opts = sampler._Sampling(greedy=s.temperature == 0.0,  # noqa: SLF001
                           top_k=(s.top_k or None) if s.temperature else None,
                           use_top_p=s.temperature != 0.0 and s.top_p < 1.0)
  key = jax.eval_shape(lambda: jax.random.key(0, impl="rbg"))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
  scalars = dict(
      temperature=jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
      top_p=jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
      stop_ids=jax.ShapeDtypeStruct((2,), jnp.int32, sharding=rep),
      stop_tables=None, stop_lens=None)
  per_row = lambda: jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows_sh)  # noqa: E731
  tokens = jax.ShapeDtypeStruct((batch, plen), jnp.int32, sharding=rows_sh)
  where = f"one host's {local.size} devices"
  with sharding.activation_rules(local, rules):
    echo(f"compiling prefill ({batch} rows x {plen} prompt tokens, cache {plen + new}, {where}) ...")
    prefill, compiled = compile_row(
        f"prefill ({batch}x{plen})",
        lambda: sampler._prefill.lower(  # noqa: SLF001
            mc, params, tokens, per_row(), key, max_new_tokens=new, opts=opts, pad_id=0,
            **scalars),
        (params, tokens), tokens=batch * plen, chips=local.size)
    if compiled is None:  # refused: no cache layout to decode from
      return [prefill]
    state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                         compiled.out_info, compiled.output_shardings)
    echo(f"compiling decode ({batch} rows, up to {new - 1} steps, {where}) ...")
    decode, _ = compile_row(
        f"decode ({batch} rows x {new - 1} steps)",
        lambda: sampler._decode.lower(  # noqa: SLF001
            mc, params, state, jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), per_row(),
            per_row(), opts=opts, pad_id=0, **scalars),
        (params, state), unknown_trips=(new - 1, "bound: every row generates sampling.max_new_tokens"),
        tokens=batch * (new - 1), chips=local.size)
  return [prefill, decode]


# ============================================================================ report


@dataclasses.dataclass(frozen=True)
class Estimate:
  seconds: float
  bound: str  # "compute" | "memory"


def estimate(cost: Cost, dev: tpu_specs.TpuSpec) -> Estimate:
  compute = cost.flops / dev.peak_bf16_flops
  memory = cost.bytes_accessed / dev.hbm_bandwidth
  return Estimate(max(compute, memory), "compute" if compute >= memory else "memory")


def _gb(n: float) -> str:
  return f"{n / 1e9:.2f}"


def report(plan: Plan, dev: tpu_specs.TpuSpec, chips: float, n_devices: int,
           echo: Callable[[str], None]) -> tuple[bool, float]:
  """Prints the table; returns (fits, the train step's estimated MFU)."""
  hbm = dev.hbm_bytes
  head = (f"{'per device':<34}{'args GB':>9}{'out GB':>8}{'temp GB':>9}{'total GB':>10}{'HBM %':>7}"
          f"{'TFLOP':>9}{'GB acc.':>9}{'est. ms':>10}  bound")
  echo(head)
  echo("-" * len(head))
  mfu = 0.0
  for r in plan.rows:
    if r.refused:
      echo(f"{r.name:<34}{_gb(r.argument):>9}{'?':>8}{_gb(r.temp):>9}{_gb(r.total):>10}"
           f"{100 * r.total / hbm:>7.1f}  refused by the compiler: out of HBM")
      continue
    est = estimate(r.cost, dev)
    echo(f"{r.name:<34}{_gb(r.argument):>9}{_gb(r.output - r.alias):>8}{_gb(r.temp):>9}"
         f"{_gb(r.total):>10}{100 * r.total / hbm:>7.1f}{r.cost.flops / 1e12:>9.2f}"
         f"{r.cost.bytes_accessed / 1e9:>9.2f}{1e3 * est.seconds:>10.2f}  {est.bound}")
  echo("")
  for r in plan.rows:
    if r.refused:
      continue
    est = estimate(r.cost, dev)
    if r.model_flops:
      hw = r.cost.flops * n_devices
      mfu = r.model_flops / (chips * _chip_peak(dev) * est.seconds)
      echo(f"{r.name}: model {r.model_flops / 1e12:.1f} TFLOP/step, XLA {hw / 1e12:.1f} TFLOP/step "
           f"on all devices (model/XLA {r.model_flops / hw:.2f}); est. step {est.seconds:.3f} s, "
           f"est. MFU {100 * mfu:.1f}%")
    if r.tokens:
      echo(f"{r.name}: {r.tokens / est.seconds / r.chips:,.0f} tokens/s per chip on "
           f"{r.chips:g} chips (est. {1e3 * est.seconds:.1f} ms per call)")
    if r.cost.loops:
      echo(f"  loops in {r.name}: {'; '.join(r.cost.loops)}")
  echo("")
  fits = True
  for phase in plan.resident:
    ok = phase.fits(hbm)
    fits &= ok
    need = "at least " if phase.refused else ""
    echo(f"resident: {phase.name:<52} {need}{_gb(phase.bytes):>7} GB of {_gb(hbm)} GB  "
         f"{'ok' if ok else 'DOES NOT FIT'}")
    if phase.refused:
      echo(f"  the TPU compiler refused it: {phase.refused}")
  return fits, mfu


def _chip_peak(dev: tpu_specs.TpuSpec) -> float:
  """Peak FLOP/s of a whole chip (dev may be a per-device share of one)."""
  return tpu_specs.SPECS[dev.name].peak_bf16_flops


# ============================================================================ main

def run(c: ml_collections.ConfigDict, topology: str, echo: Callable[[str], None] = print) -> int:
  """Validates, compiles and reports; returns the exit status (0 fits, 1 does not, 2 bad
  config or topology)."""
  try:
    spec, _ = tpu_specs.parse_topology(topology)
    notes = validate(c)
    mc = model_config(c)
  except (ConfigError, ValueError) as e:
    echo(f"config error: {e}")
    return 2
  from jax.experimental import topologies

  try:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  except Exception as e:  # noqa: BLE001  (libtpu raises XlaRuntimeError / RuntimeError)
    echo(f"config error: topology {topology!r}: {e}")
    return 2
  devices = list(topo.devices)
  kind = devices[0].device_kind
  if kind != spec.device_kind:
    echo(f"config error: topology {topology!r} has {kind} devices, the {spec.name} entry of "
         f"tpu_specs says {spec.device_kind}")
    return 2
  cores = int(getattr(devices[0], "num_cores", 0) or 1)
  dev = spec.per_device(cores)
  chips = len(devices) * cores / spec.cores_per_chip
  try:
    shape = cfg_lib.mesh_shape(c, len(devices))
    ways = shape[0] * shape[1] * c.batch.micro_batches
    if c.batch.rows % ways:
      raise ConfigError(f"batch.rows={c.batch.rows} must be divisible by mesh data*fsdp "
                        f"({shape[0] * shape[1]}) times batch.micro_batches "
                        f"({c.batch.micro_batches}) on {topology}")
    hosts = len({d.process_index for d in devices})
    if c.batch.rows % hosts:  # each host feeds its block of rows (distributed.process_rows)
      raise ConfigError(f"batch.rows={c.batch.rows} must be divisible by the {hosts} hosts of "
                        f"{topology}")
    if c.algorithm == "grpo" and c.grpo.questions_per_step % hosts:
      raise ConfigError(f"grpo.questions_per_step={c.grpo.questions_per_step} must be "
                        f"divisible by the {hosts} hosts of {topology}: each host samples "
                        "its block of the questions (training/grpo.py)")
    mesh = sharding.make_mesh(*shape, devices=devices)
  except (ConfigError, ValueError) as e:
    echo(f"config error: {e}")
    return 2
  except NotImplementedError as e:  # jax.make_mesh: the shape does not map onto the torus
    echo(f"config error: mesh data/fsdp/tensor={shape} on {topology}: {e}")
    return 2
  for note in notes:
    echo(f"note: {note}")
  echo(f"topology {topology}: {len(devices)} devices ({kind}, {cores} TensorCore(s) each), "
       f"{chips:g} chips, {hosts} host(s); mesh data/fsdp/tensor={shape}, rules "
       f"{c.sharding_rules}")
  echo(f"per device: HBM {_gb(dev.hbm_bytes)} GB, peak {dev.peak_bf16_flops / 1e12:.1f} TFLOP/s "
       f"bf16, {dev.hbm_bandwidth / 1e9:.0f} GB/s ({spec.source})")
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(transformer.abstract_params(mc)))
  echo(f"model: {mc.family} {n_params / 1e9:.2f}B params ({matmul_params(mc) / 1e9:.2f}B in "
       f"matmuls), compute {mc.dtype}, master weights float32; remat={c.loss.remat}, "
       f"loss.chunk_size={c.loss.chunk_size}")
  try:
    plan = compile_all(c, mc, mesh, echo)
  except ValueError as e:  # a sharding the mesh cannot split, named by the rules
    echo(f"config error: {e}")
    return 2
  echo(f"compiled in {sum(r.compile_s for r in plan.rows):.0f} s; estimated time = "
       "max(FLOPs / peak, bytes accessed / HBM bandwidth) per device, loops weighted by trip "
       "count; MFU = (6 N tokens + 6 L rows T^2 H Dh) / (chips x peak x est. time)")
  echo("")
  fits, mfu = report(plan, dev, chips, len(devices), echo)
  echo(f"fits: {'yes' if fits else 'no'}, est. MFU: {100 * mfu:.1f}%")
  return 0 if fits else 1


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  sys.exit(run(flags.FLAGS.config, flags.FLAGS.topology, echo=lambda s: print(s, flush=True)))


if __name__ == "__main__":  # flags only here: importing this module (tests) defines none
  config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x4, v6e:8x8, v5e:16x16")
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
