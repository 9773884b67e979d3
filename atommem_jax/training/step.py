"""The train step: one `jax.jit` over a Mesh, the same function for SFT and GRPO losses.

`TrainState` holds float32 master weights, the optax state and the step counter. A step
takes a batch of packed rows (`[B, T]` arrays, see `training/packing.py`), splits it into
`micro_batches` slices scanned one after another (gradient accumulation without keeping
more than one slice's activations), scores every token with the differentiable forward
(`models/scoring.token_logprobs`), applies the loss registered under `loss.kind`
(`training/losses.py`) with the whole batch's denominator (so accumulated gradients equal the
whole-batch gradient), and updates once. Compute runs in the model config's dtype
(bfloat16 by config) while the master weights stay float32.

The jitted step is built with `in_shardings` / `out_shardings` (today's pjit) and donates the
state; each distinct batch shape compiles once, and `TrainStep.compiles` counts the traces
so a loop can log (and tests can assert) that steps do not recompile.

LoRA (`lora=`, `models/lora.py`): the state's params are the adapters alone; the frozen
base weights are a third, non-donated argument held by the step (`frozen`), merged with the
adapters inside the differentiated function, so gradients and optimizer state exist only for
the adapters.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from atommem_jax.models import lora as lora_lib
from atommem_jax.models import partitioning, scoring, transformer
from atommem_jax.models.config import ModelConfig
from atommem_jax.training import losses

Batch = Mapping[str, jax.Array]
SFT_FIELDS = ("tokens", "positions", "segment_ids", "loss_mask")
GRPO_FIELDS = SFT_FIELDS + ("old_logprobs", "advantages")  # + "ref_logprobs" with a KL term


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], optimizer steps taken
  params: Any  # nnx.State, float32 master weights
  opt_state: Any  # optax state


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warmup then cosine decay, global-norm clipping."""

  learning_rate: float = 1e-5
  warmup_steps: int = 0
  decay_steps: int = 1000  # total steps of the schedule (warmup included)
  end_lr_ratio: float = 0.1  # final lr = end_lr_ratio * learning_rate
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float = 1.0  # 0 = no clipping

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate}")
    if self.warmup_steps < 0 or self.decay_steps <= 0 or self.warmup_steps > self.decay_steps:
      raise ValueError(f"optim: need 0 <= warmup_steps <= decay_steps and decay_steps > 0, got "
                       f"{self.warmup_steps}, {self.decay_steps}")
    if not 0 <= self.end_lr_ratio <= 1 or self.clip_norm < 0 or self.weight_decay < 0:
      raise ValueError("optim: end_lr_ratio must be in [0, 1], clip_norm and weight_decay >= 0")


def schedule(cfg: OptimConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if cfg.warmup_steps else cfg.learning_rate, peak_value=cfg.learning_rate,
      warmup_steps=cfg.warmup_steps, decay_steps=cfg.decay_steps,
      end_value=cfg.learning_rate * cfg.end_lr_ratio)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  adam = optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adam) if cfg.clip_norm else adam


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which registered loss, and its settings (static under jit)."""

  kind: str = "sft"  # "sft" or a policy loss registered in losses.py ("grpo")
  aggregation: str = "token-mean"
  max_segments: int = 64  # segments per packed row (static bound for per-segment sums)
  clip_low: float = 0.2
  clip_high: float = 0.28
  kl_coef: float = 0.001  # 0 = no reference policy term
  chunk_size: int = scoring.DEFAULT_CHUNK_SIZE  # sequence positions per output-head chunk
  remat: bool = True
  # SFT only: weight of the prompt tokens' next-token loss (0 = responses only). A policy
  # trained from scratch learns to copy names from its prompt far sooner with it.
  prompt_weight: float = 0.0

  def __post_init__(self):
    if self.kind != "sft":
      losses.get_policy_loss(self.kind)  # raises naming the known losses
      if self.prompt_weight:
        raise ValueError(f"prompt_weight is an SFT option; the {self.kind!r} policy loss "
                         f"trains on the policy's own tokens only, got {self.prompt_weight}")
    if not 0.0 <= self.prompt_weight <= 1.0:
      raise ValueError(f"prompt_weight must be in [0, 1], got {self.prompt_weight}")
    losses.get_aggregation(self.aggregation)
    if self.max_segments <= 0:
      raise ValueError(f"loss.max_segments must be positive, got {self.max_segments}")

  @property
  def fields(self) -> tuple[str, ...]:
    if self.kind == "sft":
      return SFT_FIELDS
    return GRPO_FIELDS + (("ref_logprobs",) if self.kl_coef else ())


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state around float32 master weights."""
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def loss_weights(loss_mask: jax.Array, segment_ids: jax.Array, prompt_weight: float = 0.0
                 ) -> jax.Array:
  """Per-token loss weights `[B, T]`: the response mask on scored tokens, plus
  `prompt_weight` on the prompt tokens (SFT's `loss.prompt_weight`)."""
  return losses.prompt_weighted_mask(loss_mask.astype(jnp.float32), prompt_weight
                                     ) * scoring.scored_mask(segment_ids)


def loss_fn(params: Any, batch: Batch, *, model_config: ModelConfig, loss: LossConfig,
            denominator: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The registered loss of one (micro-)batch; entropy and token counts as metrics."""
  logprobs, entropy = scoring.token_logprobs(
      model_config, params, batch["tokens"], batch["positions"], batch["segment_ids"],
      remat=loss.remat, chunk_size=loss.chunk_size, return_entropy=True)  # [B, T] each
  mask = loss_weights(batch["loss_mask"], batch["segment_ids"], loss.prompt_weight)  # [B, T]
  agg = dict(aggregation=loss.aggregation, max_segments=loss.max_segments, denominator=denominator)
  if loss.kind == "sft":
    value, metrics = losses.sft_loss(logprobs, mask, batch["segment_ids"], **agg)
  else:
    ref = batch.get("ref_logprobs") if loss.kl_coef else None
    value, metrics = losses.get_policy_loss(loss.kind)(
        logprobs, batch["old_logprobs"], batch["advantages"], mask, batch["segment_ids"],
        ref_logprobs=ref, clip_low=loss.clip_low, clip_high=loss.clip_high,
        kl_coef=loss.kl_coef, **agg)
  response = mask
  if loss.prompt_weight:  # the responses' own NLL, comparable with runs without prompt loss
    response = loss_weights(batch["loss_mask"], batch["segment_ids"])
    metrics["response_nll"] = losses.masked_mean(-logprobs, response)
  # The policy's entropy on the tokens it writes (the prompt's, under prompt_weight, is not).
  metrics = dict(metrics, entropy=losses.masked_mean(jax.lax.stop_gradient(entropy), response),
                 loss_tokens=jnp.sum(mask))
  return value, metrics


class TrainStep:
  """`state, metrics = step(state, batch)`: jitted with shardings, donating the state."""

  def __init__(self, model_config: ModelConfig, loss: LossConfig, tx: optax.GradientTransformation,
               *, micro_batches: int = 1, state_shardings: Any = None, batch_sharding: Any = None,
               mesh: jax.sharding.Mesh | None = None, rules: Mapping | None = None,
               lr_schedule: optax.Schedule | None = None,
               lora: lora_lib.LoraConfig | None = None, frozen: Any = None,
               frozen_shardings: Any = None):
    if micro_batches <= 0:
      raise ValueError(f"micro_batches must be positive, got {micro_batches}")
    self.model_config, self.loss, self.tx = model_config, loss, tx
    self.micro_batches = micro_batches
    self.mesh, self.rules = mesh, rules
    self.lr_schedule = lr_schedule
    if (lora is None) != (frozen is None):
      raise ValueError("LoRA needs both `lora` (the adapters' config) and `frozen` (the base "
                       "weights the adapters apply to)")
    self.lora, self.frozen = lora, frozen
    self.compiles = 0
    # The module structure is built (and cached) outside the mesh context the step traces
    # in: NNX would otherwise try to resolve the params' logical names against that mesh.
    transformer.abstract_params(model_config)
    transformer._graphdef(model_config)  # noqa: SLF001
    jit_kw: dict[str, Any] = dict(donate_argnums=0)
    if state_shardings is not None:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      jit_kw.update(in_shardings=(state_shardings, batch_sharding, frozen_shardings),
                    out_shardings=(state_shardings, replicated))
    self._step = jax.jit(self._traced, **jit_kw)

  def policy_params(self, params: Any, frozen: Any = None) -> Any:
    """The model's parameters for the trainable `params`: merged with the frozen base under
    LoRA (traceable), `params` themselves otherwise."""
    if self.lora is None:
      return params
    return lora_lib.merge(self.frozen if frozen is None else frozen, params, self.lora)

  def _traced(self, state: TrainState, batch: Batch, frozen: Any
              ) -> tuple[TrainState, dict[str, jax.Array]]:
    self.compiles += 1  # runs once per trace: counts compilations
    loss = self.loss
    missing = [f for f in loss.fields if f not in batch]
    if missing:
      raise ValueError(f"train step ({loss.kind}): batch lacks {missing}")
    batch = {k: batch[k] for k in loss.fields}
    mask = loss_weights(batch["loss_mask"], batch["segment_ids"], loss.prompt_weight)  # [B, T]
    denominator = losses.aggregation_denominator(mask, batch["segment_ids"], loss.aggregation,
                                                 max_segments=loss.max_segments)
    a = self.micro_batches
    rows = batch["tokens"].shape[0]
    if rows % a:
      raise ValueError(f"batch of {rows} rows does not split into {a} micro-batches")
    micro = {k: v.reshape((a, rows // a) + v.shape[1:]) for k, v in batch.items()}
    base_loss = functools.partial(loss_fn, model_config=self.model_config, loss=loss,
                                  denominator=denominator)

    def loss_of(trainable, mb):  # LoRA: differentiate the adapters, the base stays frozen
      return base_loss(self.policy_params(trainable, frozen), mb)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def accumulate(carry, mb):
      grads, total = carry
      (value, metrics), g = grad_fn(state.params, mb)
      return (jax.tree.map(jnp.add, grads, g), total + value), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, value), metrics = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)), micro)
    metrics = jax.tree.map(jnp.mean, metrics)  # means of the micro-batches' metrics
    metrics["loss_tokens"] = metrics["loss_tokens"] * a  # a count: the sum, not the mean
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=value, grad_norm=optax.global_norm(grads))
    if self.lr_schedule is not None:
      metrics["learning_rate"] = self.lr_schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _rules(self) -> contextlib.AbstractContextManager[None]:
    if self.mesh is not None and self.rules is not None:
      return partitioning.activation_rules(self.mesh, self.rules)
    return contextlib.nullcontext()

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    with self._rules():
      return self._step(state, batch, self.frozen)

  def lower(self, state: Any, batch: Batch, frozen: Any = None) -> jax.stages.Lowered:
    """The step lowered (not run) for `state` / `batch` (and LoRA's `frozen` base), which may
    be `jax.ShapeDtypeStruct`s with shardings: launch/aot.py compiles it for a TPU topology."""
    with self._rules():
      return self._step.lower(state, batch, self.frozen if frozen is None else frozen)


def make_logprob_fn(model_config: ModelConfig, *, chunk_size: int = scoring.DEFAULT_CHUNK_SIZE,
                    param_shardings: Any = None, batch_sharding: Any = None,
                    mesh: jax.sharding.Mesh | None = None, rules: Mapping | None = None):
  """Jitted `(params, batch) -> logprobs [B, T]` without gradients: the trainer's own
  recomputation of the old policy's and the reference policy's log-probs (GRPO).

  mesh + rules: trace under the activation sharding rules, as `TrainStep` does. Without them
  XLA chooses the activations' layout itself; for Qwen3-8B on 64 v5p chips (2 layers
  compiled by launch/aot.py) that kept 6x the temporaries and moved 9x the bytes."""

  def fn(params, tokens, positions, segment_ids):
    return scoring.token_logprobs(model_config, params, tokens, positions, segment_ids,
                                  remat=False, chunk_size=chunk_size)

  kw = {}
  if param_shardings is not None:
    kw = dict(in_shardings=(param_shardings, batch_sharding, batch_sharding, batch_sharding),
              out_shardings=batch_sharding)
  jitted = jax.jit(fn, **kw)

  def context() -> contextlib.AbstractContextManager[None]:
    if mesh is not None and rules is not None:
      return partitioning.activation_rules(mesh, rules)
    return contextlib.nullcontext()

  def call(params, b):
    with context():
      return jitted(params, b["tokens"], b["positions"], b["segment_ids"])

  def lower(params, b):
    with context():
      return jitted.lower(params, b["tokens"], b["positions"], b["segment_ids"])

  call.lower = lower  # launch/aot.py compiles the same function for a TPU topology
  return call
