"""Supervised fine-tuning on trajectories: teacher episodes (or logged JSONL) -> packed turns
-> cross-entropy on the policy-written tokens only, one jitted sharded step per batch.

Data: `data.source="synthetic"` runs the method's scripted teacher (`training/data.py`
TEACHERS) on `data.num_examples` seeded synthetic tasks through the rollout engine, rendered
with the trained policy's own prompts; `data.source="real"` runs the privileged teacher
(`agent/teacher.py`) on the train splits of `data.datasets` (never the dev files), plus the
oracle on `data.synthetic_examples` synthetic tasks when that is > 0;
`data.source="jsonl"` reads trajectories (a teacher's, or logged rollouts filtered by
`data.min_score`). Turns are packed once; batch `step` is a
pure function of the step, so a run killed at any point resumes on the same batches and
ends with the same parameters.

On several processes every process builds the same packed turns and loads only its rows of
each batch (`SFTBatches.batch(step, part, parts)`); the global batch, and so the run, is
the same whatever the number of processes.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import ml_collections

from atommem_jax.agent import build
from atommem_jax.agent.rollout import RolloutEngine
from atommem_jax.training import data as data_lib
from atommem_jax.training import distributed
from atommem_jax.training import trainer


def _budgets(c: ml_collections.ConfigDict, trajs) -> dict[str, int] | None:
  """data.overlong="error": raise if a response overruns its phase's sampling budget;
  "drop": the budgets for `turns_of` to leave such turns out."""
  budgets = data_lib.phase_budgets(c.sampling)
  if c.data.get("overlong", "error") == "drop":
    return budgets
  try:
    data_lib.check_response_budgets(trajs, budgets)
  except ValueError as e:
    raise build.ConfigError(f"data.overlong: {e}") from None
  return None


def sft_turns(run: trainer.Run):
  """(turns, stats) of the configured SFT data, rendered for the trained policy."""
  c, model = run.c, run.model
  vocab = model.config.vocab_size
  if c.data.source == "jsonl":
    paths = [p.strip() for p in str(c.data.jsonl).split(",") if p.strip()]
    trajs = data_lib.read_trajectories(paths)
    min_score = c.data.min_score if c.data.min_score >= 0 else None
    budgets = _budgets(c, data_lib.scoring_at_least(trajs, min_score))  # the episodes trained on
    return data_lib.turns_of(trajs, vocab, min_score=min_score,
                             answer_repeats=c.data.answer_repeats, budgets=budgets)
  # A policy embedder embeds with the initial params (the same on a resumed run), a
  # process-local copy of them: each process runs the teacher episodes on its own.
  params = (None if run.initial_params is None
            else run.local_params(run.policy_params(run.initial_params)))
  embed_fn, dim = build.build_embedder(c, model, params=params)
  engine = RolloutEngine(build.rollout_config(c, c.method, dim), model.tokenizer, embed_fn)
  student = build.make_policy(c.method, model, c, c.seed)
  if c.data.source == "real":
    # The first num_examples of the seeded shuffle (every dataset represented), or all.
    n = c.data.num_examples or len(data_lib.real_train_episodes(c))
    episodes = data_lib.training_episodes(c, n)
  else:
    episodes = data_lib.synthetic_episodes(c, c.data.num_examples)
  trajs = data_lib.teacher_trajectories(engine, student, c.method, episodes,
                                        source=c.data.source,
                                        max_memory_chars=c.max_memory_chars)
  if c.data.source == "real" and c.data.synthetic_examples:
    # Mixed in: the scripted oracle's synthetic CRUD tasks (every op, corrections, deletions).
    trajs += data_lib.teacher_trajectories(
        engine, student, c.method, data_lib.synthetic_episodes(c, c.data.synthetic_examples))
  turns, stats = data_lib.turns_of(trajs, vocab, answer_repeats=c.data.answer_repeats,
                                   budgets=_budgets(c, trajs))
  n_copy = int(c.data.get("copy_examples", 0) or 0)
  if n_copy:
    copies = data_lib.copy_turns(model.tokenizer, data_lib.copy_sections(c, n_copy),
                                 c.sampling.max_prompt_tokens)
    turns += copies
    stats = dataclasses.replace(
        stats, turns=stats.turns + n_copy, copy_turns=n_copy,
        prompt_tokens=stats.prompt_tokens + sum(len(p) for p, _ in copies),
        response_tokens=stats.response_tokens + sum(len(r) for _, r in copies))
  return turns, stats


def train(c: ml_collections.ConfigDict, echo: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) SFT to `c.steps` optimizer steps; returns a summary."""
  from tqdm.auto import tqdm

  # init_from: continue from another run's latest parameters with a fresh optimizer and
  # schedule on this config's data (a curriculum stage), rather than from model.source.
  run = trainer.setup(c, echo, init_from=str(c.get("init_from") or "") or None,
                      keep_initial=c.embedder == "policy")
  t0 = time.perf_counter()
  turns, stats = sft_turns(run)
  run.initial_params = None  # only the teacher episodes' policy embedder needed them
  pad = run.model.tokenizer.pad_token_id or 0
  batches = data_lib.SFTBatches(turns, rows=c.batch.rows, seq_len=c.batch.seq_len, seed=c.seed,
                                max_segments=c.loss.max_segments,
                                truncate=c.batch.truncate or None, pad_id=pad)
  copies = f", {stats.copy_turns} of them copy turns" if stats.copy_turns else ""
  run.echo(f"[data] {stats.kept_episodes} of {stats.episodes} episodes, {stats.turns} turns{copies} "
       f"({stats.prompt_tokens} prompt + {stats.response_tokens} response tokens) packed into "
       f"{batches.num_rows} rows of {c.batch.seq_len}: {batches.batches_per_epoch} batches per "
       f"epoch; {stats.overlong_dropped} turns longer than their sampling budget left out; "
       f"{batches.truncated_prompt_tokens} prompt tokens cut to fit "
       f"({time.perf_counter() - t0:.1f}s)")
  run.checkpointer.install_signal_handlers()
  stopped = False
  bar = tqdm(total=c.steps, initial=min(run.step, c.steps), desc="sft", unit="step",
             disable=not distributed.is_main())
  part, parts = jax.process_index(), jax.process_count()
  while run.step < c.steps:
    step = run.step
    start = time.perf_counter()
    host = batches.batch(step, part, parts)  # this process's rows
    run.state, metrics = run.train_step(run.state, run.shard_batch(host))
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    seconds = time.perf_counter() - start
    record = dict(step=step + 1, **metrics, **batches.position(step), seconds=seconds,
                  tokens_per_second=batches.tokens(step) / seconds,
                  compiles=run.train_step.compiles)
    if (step + 1) % c.log_every == 0 or step + 1 == c.steps:
      run.log(record)
    bar.update(1)
    bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
    meta = {"data": batches.position(step + 1), "algorithm": "sft"}
    run.save(meta)
    if distributed.any_process(run.checkpointer.should_stop(run.step)):
      stopped = True
      break
  bar.close()
  return trainer.finish(run, {"data": batches.position(run.step), "algorithm": "sft"}, stopped)
