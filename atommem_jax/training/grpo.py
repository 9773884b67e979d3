"""GRPO over multi-turn memory episodes: the learner only orchestrates.

One iteration:
  1. sample: `grpo.questions_per_step` questions x `grpo.group_size` rollouts from the current
     policy through the one `RolloutEngine` (the evaluation code path), temperature/top-p from
     `sampling`, seeded by (seed, iteration) so a resumed run samples the same episodes;
  2. score: an episode's reward (`training/rewards.py`: answer metric + format/op terms) gives
     one group-relative advantage (`losses`, registered estimator) that every turn of that
     episode shares;
  3. pack every model turn (prompt ids, response ids) into rows; the trainer recomputes the
     old policy's log-probs (never trusting the sampler's) and the frozen reference's;
  4. update: `grpo.epochs` passes over the rows in minibatches of `batch.rows`, each one
     optimizer step of the shared jitted train step with the registered policy loss.
Checkpoints are written at iteration boundaries (data position = the iteration), so a run
killed at any point resumes on exactly the same rollouts and ends with the same parameters.
"""
from __future__ import annotations

import collections
import pathlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from atommem_jax.agent import build
from atommem_jax.agent.rollout import RolloutEngine
from atommem_jax.agent.trajectory import Trajectory
from atommem_jax.data import metrics as metrics_lib
from atommem_jax.training import config as cfg_lib
from atommem_jax.training import data as data_lib
from atommem_jax.training import logs, losses, packing, rewards, sharding
from atommem_jax.training import step as step_lib
from atommem_jax.training import trainer

RewardFn = Callable[[Trajectory], tuple[float, dict[str, float]]]
OPS = ("create", "read", "update", "delete")


def iteration_seed(seed: int, iteration: int) -> int:
  """The sampler seed of an iteration (independent streams per (seed, iteration))."""
  return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0] & 0x7FFFFFFF)


def model_turns(trajectories: Sequence[Trajectory]) -> tuple[list[packing.Turn], list[int]]:
  """Every sampled turn (prompt ids, response ids) and the index of its episode."""
  turns, owner = [], []
  for e, t in enumerate(trajectories):
    for s in t.steps:
      if s.prompt_ids and s.response_ids:
        turns.append((list(s.prompt_ids), list(s.response_ids)))
        owner.append(e)
  return turns, owner


def rollout_stats(trajectories: Sequence[Trajectory], components: Sequence[dict[str, float]]
                  ) -> dict[str, float]:
  """Per-iteration statistics of the rollouts (the paper's training dynamics)."""
  model_steps = [s for t in trajectories for s in t.steps if s.response_ids]
  n_turns = max(len(model_steps), 1)
  ops = collections.Counter(o["kind"] for s in model_steps for o in s.ops)
  n_ops = sum(ops[k] for k in OPS) + ops["scratchpad"]
  out = {
      "accuracy": float(np.mean([c["answer"] for c in components])),
      "turns_per_episode": len(model_steps) / max(len(trajectories), 1),
      "response_tokens": float(np.mean([len(s.response_ids) for s in model_steps] or [0])),
      "parse_error_rate": sum(bool(s.parse_errors) for s in model_steps) / n_turns,
      "op_error_rate": sum(len(s.op_errors) for s in model_steps) / max(n_ops, 1),
      "untagged_answer_rate": float(np.mean([c["untagged_answer_frac"] for c in components])),
      "memory_entries": float(np.mean([len(t.final_memory.get("entries", []))
                                       for t in trajectories])),
  }
  for k in OPS:
    out[f"ops_per_turn/{k}"] = ops[k] / n_turns
    out[f"ops_per_episode/{k}"] = ops[k] / max(len(trajectories), 1)
  return out


def _pad_rows(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  n = arrays["tokens"].shape[0]
  if n == rows:
    return arrays
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)])
          for k, v in arrays.items()}


def sft_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The warm-start SFT run of a GRPO config (its own directory, steps and learning rate)."""
  s = ml_collections.ConfigDict(c.to_dict())
  s.algorithm = "sft"
  s.steps = c.warm_start.sft_steps
  s.output_dir = str(pathlib.Path(c.output_dir) / "sft")
  s.optim.learning_rate = c.warm_start.learning_rate or c.optim.learning_rate
  s.optim.decay_steps = 0
  s.optim.warmup_steps = min(c.optim.warmup_steps, s.steps)
  s.warm_start.sft_steps = 0
  return s


def warm_start(c: ml_collections.ConfigDict, echo: Callable[[str], None]
               ) -> ml_collections.ConfigDict:
  """Runs (or resumes, or finds finished) the warm-start SFT; returns the GRPO config that
  starts from its parameters."""
  from atommem_jax.training import sft

  s = sft_config(c)
  echo(f"[warm start] SFT for {s.steps} steps in {s.output_dir}")
  sft.train(s, echo)
  g = ml_collections.ConfigDict(c.to_dict())
  g.model.source = f"orbax:{s.output_dir}"
  g.model.tokenizer = ""
  g.warm_start.sft_steps = 0
  return g


def train(c: ml_collections.ConfigDict, echo: Callable[[str], None] = print,
          reward_fn: RewardFn | None = None) -> dict:
  """Runs (or resumes) GRPO to `c.steps` optimizer steps; returns a summary.

  reward_fn: an episode reward other than the configured one (tests, custom tasks)."""
  from tqdm.auto import tqdm

  if c.warm_start.sft_steps:
    c = warm_start(c, echo)
  run = trainer.setup(c, echo)
  model, g = run.model, c.grpo
  policy = build.make_policy(c.method, model, c, c.seed)
  reward_cfg = cfg_lib.reward_config(c)
  reward_fn = reward_fn or (lambda t: rewards.episode_reward(t, reward_cfg))
  advantage_fn = losses.get_advantage_estimator(g.advantage)
  b_sh = sharding.batch_sharding(run.mesh, run.rules)
  p_sh = run.state_shardings.params
  logprob_fn = step_lib.make_logprob_fn(model.config, chunk_size=c.loss.chunk_size,
                                        param_shardings=p_sh, batch_sharding=b_sh)
  # The frozen reference is the initial policy. A copy: the first state may share the
  # initial buffers, which the train step donates.
  ref_params = (jax.tree.map(lambda x: x.copy(), jax.device_put(model.params, p_sh))
                if c.loss.kl_coef else None)
  pad = model.tokenizer.pad_token_id or 0
  writer = logs.MetricsWriter(run.out, run.step)
  run.checkpointer.install_signal_handlers()
  iteration = int(run.meta.get("iteration", 0))
  stopped = False
  bar = tqdm(total=c.steps, initial=min(run.step, c.steps), desc="grpo", unit="step")
  while run.step < c.steps and not stopped:
    # 1. sample
    t0 = time.perf_counter()
    episodes = data_lib.synthetic_episodes(c, g.questions_per_step,
                                           start=iteration * g.questions_per_step)
    policy.lm.seed, policy.lm.calls = iteration_seed(c.seed, iteration), 0
    # The engine per iteration: a policy embedder embeds with the current parameters.
    embed_fn, dim = build.build_embedder(c, model, params=run.state.params)
    engine = RolloutEngine(build.rollout_config(c, c.method, dim), model.tokenizer, embed_fn,
                           metrics_lib.score_all)
    trajs = engine.run(episodes, policy, group_size=g.group_size,
                       params=run.state.params).trajectories
    sampling_s = time.perf_counter() - t0
    # 2. score
    scored = [reward_fn(t) for t in trajs]
    reward = np.asarray([r for r, _ in scored], np.float32).reshape(len(episodes), g.group_size)
    adv = np.asarray(advantage_fn(jnp.asarray(reward), normalize_std=g.normalize_std)).reshape(-1)
    # 3. pack and recompute old / reference log-probs
    t1 = time.perf_counter()
    turns, owner = model_turns(trajs)
    if not turns:
      raise RuntimeError(f"iteration {iteration}: the rollouts have no model turn to train on")
    rows_needed = packing.num_rows(turns, c.batch.seq_len, max_segments=c.loss.max_segments,
                                   truncate=c.batch.truncate or None)
    minibatches = -(-rows_needed // c.batch.rows)
    packed = packing.pack(turns, c.batch.seq_len, pad_id=pad, max_rows=minibatches * c.batch.rows,
                          max_segments=c.loss.max_segments, truncate=c.batch.truncate or None,
                          turn_values={"episode": owner})
    arrays = packed.arrays()
    episode = arrays.pop("episode")
    arrays.pop("token_turn")
    arrays["advantages"] = np.where(episode >= 0, adv[np.maximum(episode, 0)], 0.0).astype(
        np.float32) * arrays["loss_mask"]
    chunks = [{k: v[m * c.batch.rows:(m + 1) * c.batch.rows] for k, v in arrays.items()}
              for m in range(minibatches)]
    for ch in chunks:
      core = run.shard_batch({k: ch[k] for k in ("tokens", "positions", "segment_ids")})
      ch["old_logprobs"] = np.asarray(logprob_fn(run.state.params, core))
      if ref_params is not None:
        ch["ref_logprobs"] = np.asarray(logprob_fn(ref_params, core))
    logprob_s = time.perf_counter() - t1
    stats = rollout_stats(trajs, [comp for _, comp in scored])
    stats.update(reward=float(reward.mean()), reward_std=float(reward.std()),
                 advantage_abs=float(np.abs(adv).mean()), sampling_seconds=sampling_s,
                 logprob_seconds=logprob_s, iteration=iteration, rollout_rows=rows_needed)
    # 4. update
    t2 = time.perf_counter()
    start_step = run.step
    for _ in range(g.epochs):
      for ch in chunks:
        if run.step >= c.steps:
          break
        run.state, m = run.train_step(run.state, run.shard_batch(_pad_rows(ch, c.batch.rows)))
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        record = dict(step=run.step, **m, **stats, update_seconds=time.perf_counter() - t2,
                      compiles=run.train_step.compiles)
        if run.step % c.log_every == 0 or run.step >= c.steps:
          writer.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", reward=f"{stats['reward']:.3f}", refresh=False)
    iteration += 1
    if run.step // c.checkpoint_every > start_step // c.checkpoint_every:
      run.save({"iteration": iteration, "algorithm": "grpo"}, force=True)
    stopped = run.checkpointer.should_stop(run.step)
  bar.close()
  return trainer.finish(run, writer, {"iteration": iteration, "algorithm": "grpo"}, stopped)
