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

On several processes (`training/distributed.py`) each process samples its block of the
iteration's questions (`questions_per_step / processes`, all G rollouts of a question on
one process) with its own chips and a process-local copy of the current parameters, with
its own sampler stream (process 0's is the single-process one). The rewards and every
model turn's token ids are then gathered, so every process computes the same advantages,
packs the same rows and feeds its block of each minibatch to the one global train step:
given the same rollouts, the update equals the single-process update.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from atommem_jax.agent import build
from atommem_jax.agent.environment import Episode
from atommem_jax.agent.rollout import RolloutEngine
from atommem_jax.agent.trajectory import Trajectory
from atommem_jax.data import metrics as metrics_lib
from atommem_jax.training import config as cfg_lib
from atommem_jax.training import data as data_lib
from atommem_jax.training import distributed, losses, packing, rewards, sharding
from atommem_jax.training import step as step_lib
from atommem_jax.training import trainer

RewardFn = Callable[[Trajectory], tuple[float, dict[str, float]]]
# (iteration, this process's episodes) -> their group_size rollouts each, in episode order.
RolloutsFn = Callable[[int, list[Episode]], list[Trajectory]]
OPS = ("create", "read", "update", "delete")


def iteration_seed(seed: int, iteration: int, share: int = 0) -> int:
  """The sampler seed of an iteration's `share` (the process sampling it): independent
  streams per (seed, iteration, share); share 0 is the single-process stream."""
  key = [seed, iteration] + ([share] if share else [])
  return int(np.random.SeedSequence(key).generate_state(1)[0] & 0x7FFFFFFF)


def model_turns(trajectories: Sequence[Trajectory]) -> tuple[list[packing.Turn], list[int]]:
  """Every sampled turn (prompt ids, response ids) and the index of its episode."""
  turns, owner = [], []
  for e, t in enumerate(trajectories):
    for s in t.steps:
      if s.prompt_ids and s.response_ids:
        turns.append((list(s.prompt_ids), list(s.response_ids)))
        owner.append(e)
  return turns, owner


def gather_turns(turns: Sequence[packing.Turn], owner: Sequence[int]
                 ) -> tuple[list[packing.Turn], list[int]]:
  """Every process's turns and their (global) episode indices, in process order."""
  if jax.process_count() == 1:
    return list(turns), list(owner)
  prompts = distributed.allgather_ragged([p for p, _ in turns])
  responses = distributed.allgather_ragged([r for _, r in turns])
  owners = np.concatenate(distributed.allgather_ragged([np.asarray(owner, np.int32)]))
  return [(p.tolist(), r.tolist()) for p, r in zip(prompts, responses)], owners.tolist()


def rollout_counts(trajectories: Sequence[Trajectory], components: Sequence[dict[str, float]]
                   ) -> dict[str, float]:
  """Sums over the rollouts that `rollout_stats` divides (they add up across processes)."""
  model_steps = [s for t in trajectories for s in t.steps if s.response_ids]
  ops = collections.Counter(o["kind"] for s in model_steps for o in s.ops)
  out = {
      "episodes": float(len(trajectories)),
      "turns": float(len(model_steps)),
      "answer": float(sum(c["answer"] for c in components)),
      "untagged_answer": float(sum(c["untagged_answer_frac"] for c in components)),
      "response_tokens": float(sum(len(s.response_ids) for s in model_steps)),
      "parse_error_turns": float(sum(bool(s.parse_errors) for s in model_steps)),
      "op_errors": float(sum(len(s.op_errors) for s in model_steps)),
      "ops": float(sum(ops[k] for k in OPS) + ops["scratchpad"]),
      "memory_entries": float(sum(len(t.final_memory.get("entries", []))
                                  for t in trajectories)),
  }
  out.update({f"op/{k}": float(ops[k]) for k in OPS})
  return out


def stats_of(counts: dict[str, float]) -> dict[str, float]:
  """Per-iteration statistics of the rollouts (the paper's training dynamics)."""
  episodes, turns = max(counts["episodes"], 1.0), max(counts["turns"], 1.0)
  out = {
      "accuracy": counts["answer"] / episodes,
      "turns_per_episode": counts["turns"] / episodes,
      "response_tokens": counts["response_tokens"] / turns,
      "parse_error_rate": counts["parse_error_turns"] / turns,
      "op_error_rate": counts["op_errors"] / max(counts["ops"], 1.0),
      "untagged_answer_rate": counts["untagged_answer"] / episodes,
      "memory_entries": counts["memory_entries"] / episodes,
  }
  for k in OPS:
    out[f"ops_per_turn/{k}"] = counts[f"op/{k}"] / turns
    out[f"ops_per_episode/{k}"] = counts[f"op/{k}"] / episodes
  return out


def rollout_stats(trajectories: Sequence[Trajectory], components: Sequence[dict[str, float]]
                  ) -> dict[str, float]:
  """Per-iteration statistics of these rollouts (one process's; `train` sums the counts of
  every process first)."""
  return stats_of(rollout_counts(trajectories, components))


def _global_counts(counts: dict[str, float]) -> dict[str, float]:
  keys = sorted(counts)
  total = distributed.allgather(np.asarray([counts[k] for k in keys], np.float32)).sum(0)
  return {k: float(v) for k, v in zip(keys, total)}


def sft_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The warm-start SFT run of a GRPO config (its own directory, steps and learning rate)."""
  s = ml_collections.ConfigDict(c.to_dict())
  s.algorithm = "sft"
  s.steps = c.warm_start.sft_steps
  s.output_dir = trainer.join(c.output_dir, "sft")
  s.optim.learning_rate = c.warm_start.learning_rate or c.optim.learning_rate
  s.optim.decay_steps = 0
  s.optim.warmup_steps = min(c.optim.warmup_steps, s.steps)
  s.warm_start.sft_steps = 0
  return s


def warm_start(c: ml_collections.ConfigDict, echo: Callable[[str], None]) -> str:
  """Runs (or resumes, or finds finished) the warm-start SFT; returns its output_dir, whose
  final parameters GRPO starts from (and is KL-regularised towards)."""
  from atommem_jax.training import sft

  s = sft_config(c)
  echo(f"[warm start] SFT for {s.steps} steps in {s.output_dir}")
  sft.train(s, echo)
  return str(s.output_dir)


def train(c: ml_collections.ConfigDict, echo: Callable[[str], None] = print,
          reward_fn: RewardFn | None = None, rollouts_fn: RolloutsFn | None = None) -> dict:
  """Runs (or resumes) GRPO to `c.steps` optimizer steps; returns a summary.

  reward_fn: an episode reward other than the configured one (tests, custom tasks).
  rollouts_fn: rollouts other than the policy's own samples (replaying logged rollouts;
  tests give one process the rollouts several processes sampled)."""
  from tqdm.auto import tqdm

  init_from = warm_start(c, echo) if c.warm_start.sft_steps else (str(c.init_from) or None)
  run = trainer.setup(c, echo, init_from=init_from, keep_initial=bool(c.loss.kl_coef))
  model, g = run.model, c.grpo
  if g.questions_per_step % jax.process_count():
    raise cfg_lib.ConfigError(f"grpo.questions_per_step={g.questions_per_step} must be "
                              f"divisible by the {jax.process_count()} processes")
  share = distributed.process_rows(g.questions_per_step)  # this process's questions
  policy = build.make_policy(c.method, model, c, c.seed)
  reward_cfg = cfg_lib.reward_config(c)
  reward_fn = reward_fn or (lambda t: rewards.episode_reward(t, reward_cfg))
  advantage_fn = losses.get_advantage_estimator(g.advantage)
  b_sh = sharding.batch_sharding(run.mesh, run.rules)
  p_sh = run.policy_shardings
  logprob_fn = step_lib.make_logprob_fn(model.config, chunk_size=c.loss.chunk_size,
                                        param_shardings=p_sh, batch_sharding=b_sh,
                                        mesh=run.mesh, rules=run.rules)
  # The frozen reference: the starting policy (None: no KL); under LoRA, the base merged
  # with the starting adapters.
  ref_params = None if run.initial_params is None else run.policy_params(run.initial_params)
  run.initial_params = None
  fields = run.train_step.loss.fields
  pad = model.tokenizer.pad_token_id or 0
  run.checkpointer.install_signal_handlers()
  iteration = int(run.meta.get("iteration", 0))
  stopped = False
  bar = tqdm(total=c.steps, initial=min(run.step, c.steps), desc="grpo", unit="step",
             disable=not distributed.is_main())
  while run.step < c.steps and not stopped:
    # 1. sample this process's questions (a process-local copy of the current params)
    t0 = time.perf_counter()
    episodes = data_lib.training_episodes(c, share.stop - share.start,
                                           start=iteration * g.questions_per_step + share.start)
    if rollouts_fn is not None:
      trajs = rollouts_fn(iteration, episodes)
    else:
      params = run.local_params(run.policy_params())
      policy.lm.seed, policy.lm.calls = iteration_seed(c.seed, iteration,
                                                       jax.process_index()), 0
      # The engine per iteration: a policy embedder embeds with the current parameters.
      embed_fn, dim = build.build_embedder(c, model, params=params)
      engine = RolloutEngine(build.rollout_config(c, c.method, dim), model.tokenizer, embed_fn,
                             metrics_lib.score_all)
      trajs = engine.run(episodes, policy, group_size=g.group_size, params=params).trajectories
      del params
    if len(trajs) != len(episodes) * g.group_size:
      raise RuntimeError(f"iteration {iteration}: {len(trajs)} rollouts for {len(episodes)} "
                         f"questions x group_size {g.group_size}")
    sampling_s = time.perf_counter() - t0
    # 2. score; every process's rewards give the same advantages everywhere
    scored = [reward_fn(t) for t in trajs]
    local_reward = np.asarray([r for r, _ in scored], np.float32)  # [q * G]
    reward = distributed.allgather(local_reward).reshape(g.questions_per_step, g.group_size)
    adv = np.asarray(advantage_fn(jnp.asarray(reward), normalize_std=g.normalize_std)).reshape(-1)
    # 3. every process's turns, packed alike everywhere; old / reference log-probs
    t1 = time.perf_counter()
    turns, owner = model_turns(trajs)
    turns, owner = gather_turns(turns, [share.start * g.group_size + e for e in owner])
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
    arrays["advantages"] = np.where(episode >= 0, adv[np.maximum(episode, 0)], 0.0).astype(
        np.float32) * arrays["loss_mask"]
    mine = distributed.process_rows(c.batch.rows)  # this process's block of each minibatch
    batches = []
    current = run.policy_params()  # the policy that sampled these rollouts
    for m in range(minibatches):
      lo = m * c.batch.rows
      batch = run.shard_batch({k: arrays[k][lo + mine.start:lo + mine.stop]
                               for k in fields if k in arrays})
      batch["old_logprobs"] = logprob_fn(current, batch)  # [B, T], on device
      if ref_params is not None:
        batch["ref_logprobs"] = logprob_fn(ref_params, batch)
      batches.append(batch)
    del current
    jax.block_until_ready(batches)  # dispatch is asynchronous: time the computation itself
    logprob_s = time.perf_counter() - t1
    stats = stats_of(_global_counts(rollout_counts(trajs, [comp for _, comp in scored])))
    stats.update(reward=float(reward.mean()), reward_std=float(reward.std()),
                 advantage_abs=float(np.abs(adv).mean()), sampling_seconds=sampling_s,
                 logprob_seconds=logprob_s, iteration=iteration, rollout_rows=rows_needed)
    # 4. update
    t2 = time.perf_counter()
    start_step = run.step
    for _ in range(g.epochs):
      for batch in batches:
        if run.step >= c.steps:
          break
        run.state, m = run.train_step(run.state, batch)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        record = dict(step=run.step, **m, **stats, update_seconds=time.perf_counter() - t2,
                      compiles=run.train_step.compiles)
        if run.step % c.log_every == 0 or run.step >= c.steps:
          run.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", reward=f"{stats['reward']:.3f}", refresh=False)
    iteration += 1
    if run.step // c.checkpoint_every > start_step // c.checkpoint_every:
      run.save({"iteration": iteration, "algorithm": "grpo"}, force=True)
    stopped = distributed.any_process(run.checkpointer.should_stop(run.step))
  bar.close()
  return trainer.finish(run, {"iteration": iteration, "algorithm": "grpo"}, stopped)
