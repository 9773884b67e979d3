"""The training package end to end on a micro model: CLI, metrics, resume, GRPO learning."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from atommem_jax.training import logs

REPO = pathlib.Path(__file__).resolve().parents[1]
MICRO = ["--config.model.tiny.hidden_size=32", "--config.model.tiny.intermediate_size=64",
         "--config.model.tiny.num_layers=2", "--config.model.tiny.num_heads=2",
         "--config.model.tiny.num_kv_heads=1", "--config.model.tiny.head_dim=16",
         "--config.data.num_examples=4", "--config.batch.rows=8", "--config.optim.warmup_steps=0"]


def _micro_config(name: str, out: pathlib.Path, **over):
  import importlib

  c = importlib.import_module(f"configs.{name}").get_config()
  c.output_dir = str(out)
  c.model.tiny.update(dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                           num_kv_heads=1, head_dim=16))
  c.data.num_examples, c.batch.rows, c.optim.warmup_steps = 4, 8, 0  # rows: 8 fake devices
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for part in path:
      node = node[part]
    node[last] = v
  return c


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "atommem_jax.training", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=900)


def test_bad_config_fails_before_compute_naming_the_key(tmp_path):
  for flag, key in (("--config.batch.rows=0", "batch.rows"),
                    ("--config.loss.aggregation=median", "loss"),
                    ("--config.memory.overflow=bogus", "memory.overflow"),
                    ("--config.grpo.reward.answer_metric=sub_em", "grpo.reward")):
    config = "configs/tiny_cpu_grpo.py" if "grpo" in flag else "configs/tiny_cpu_sft.py"
    proc = _cli(f"--config={config}", f"--config.output_dir={tmp_path}/x", flag)
    assert proc.returncode != 0 and key in proc.stderr, (flag, proc.stderr[-500:])
  assert not (tmp_path / "x").exists()


def test_sft_cli_writes_metrics_and_resumes(tmp_path):
  out = tmp_path / "sft"
  args = ["--config=configs/tiny_cpu_sft.py", f"--config.output_dir={out}",
          "--config.checkpoint_every=2", *MICRO]
  proc = _cli(*args, "--config.steps=4")
  assert proc.returncode == 0, proc.stderr[-2000:]
  first = logs.read_metrics(out / "metrics.jsonl")
  assert [r["step"] for r in first] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) and r["compiles"] == 1 for r in first)
  proc = _cli(*args, "--config.steps=6")  # same directory: resumes at step 4
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "[resume]" in proc.stdout and "step 4" in proc.stdout
  records = logs.read_metrics(out / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert records[:4] == first
  for name in ("training.png", "hf/config.json", "model/config.json", "config.json"):
    assert (out / name).exists(), name


def test_trained_run_loads_as_an_eval_policy(tmp_path):
  """`model.source=orbax:<run>` and `hf:<run>/hf` give the same trained parameters."""
  from atommem_jax.agent import build
  from atommem_jax.training import sft

  c = _micro_config("tiny_cpu_sft", tmp_path / "run", steps=2, checkpoint_every=2)
  summary = sft.train(c, echo=lambda s: None)
  assert summary["step"] == 2 and not summary["stopped"]
  from configs import common

  e = common.base()
  e.model.source = f"orbax:{tmp_path / 'run'}"
  build.check_agent_config(e, ("atommem",))  # the orbax source passes the config checks
  m1 = build.load_model(e, tmp_path)
  e.model.source = f"hf:{tmp_path / 'run' / 'hf'}"
  m2 = build.load_model(e, tmp_path)
  for a, b in zip(jax.tree.leaves(m1.params), jax.tree.leaves(m2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert m1.config.num_layers == 2 and len(m1.tokenizer) == len(m2.tokenizer)


def test_grpo_raises_reward_on_a_trivial_task(tmp_path):
  """A reward any policy can move (the share of response tokens with an id below 256: half
  the vocabulary, about 0.5 for the random policy) rises within a couple dozen GRPO steps:
  advantages, packing, old log-probs and the clipped update push probability mass the
  right way through the real rollout engine."""
  from atommem_jax.training import grpo

  target = set(range(256))

  def reward_fn(t):
    ids = [i for s in t.steps for i in s.response_ids]
    share = sum(i in target for i in ids) / max(len(ids), 1)
    return share, {"answer": share, "untagged_answer_frac": 0.0}

  # One minibatch per iteration (28 turns cut to 256 tokens: the prompts lose their head),
  # two epochs over it.
  c = _micro_config("tiny_cpu_grpo", tmp_path / "grpo", steps=20, checkpoint_every=100,
                    **{"warm_start.sft_steps": 0, "optim.learning_rate": 3e-2,
                       "grpo.questions_per_step": 2, "grpo.group_size": 4, "grpo.epochs": 2,
                       "sampling.max_new_tokens": 12, "sampling.max_answer_tokens": 6,
                       "env.max_calls": 3, "loss.kl_coef": 0.0, "batch.rows": 32,
                       "batch.seq_len": 256})
  grpo.train(c, echo=lambda s: None, reward_fn=reward_fn)
  records = logs.read_metrics(tmp_path / "grpo" / "metrics.jsonl")
  rewards = {}
  for r in records:
    rewards[r["iteration"]] = r["reward"]
  its = sorted(rewards)
  assert len(its) >= 8 and records[-1]["step"] == 20
  early, late = np.mean([rewards[i] for i in its[:2]]), np.mean([rewards[i] for i in its[-2:]])
  assert late > early + 0.1, rewards
  assert all(r["compiles"] == 1 for r in records)  # no recompiles across steps
  for key in ("kl", "clip_frac", "entropy", "response_tokens", "turns_per_episode",
              "ops_per_turn/create", "parse_error_rate", "sampling_seconds", "logprob_seconds"):
    assert key in records[-1], key
  assert (tmp_path / "grpo" / "ops.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config,steps,every", [("configs/tiny_cpu_sft.py", 10, 3),
                                               ("configs/tiny_cpu_grpo.py", 8, 2)])
def test_kill9_then_resume_is_bit_exact(config, steps, every):
  sys.path.insert(0, str(REPO / "launch"))
  import resume_check

  extra = MICRO + (["--config.warm_start.sft_steps=0", "--config.grpo.questions_per_step=2",
                    "--config.grpo.group_size=2", "--config.sampling.max_new_tokens=16",
                    "--config.env.max_calls=4"] if "grpo" in config else [])
  assert resume_check.check(config, steps, every, extra) == 0.0


def test_real_training_episodes_come_from_train_splits_in_a_seeded_order():
  from configs import common

  from atommem_jax.training import config as cfg_lib
  from atommem_jax.training import data as data_lib

  c = common.train_base()
  c.data.source, c.data.datasets, c.data.max_records = "real", "hotpotqa,musique", 5
  c.model.source, c.embedder = "tiny", "hashing"
  c.sampling.max_prompt_tokens, c.env.chunk_size, c.env.overlap = 3000, 512, 0
  cfg_lib.validate(c)
  pool = data_lib.real_train_episodes(c)
  assert len(pool) == 10 and {e.meta["dataset"] for e in pool} == {"hotpotqa", "musique"}
  assert all(e.meta["supporting"] for e in pool)  # the teacher's labels
  first = data_lib.training_episodes(c, 12, start=0)
  assert [e.episode_id for e in first] == [e.episode_id for e in
                                           data_lib.training_episodes(c, 12, start=0)]
  assert {e.episode_id for e in first[:10]} == {e.episode_id for e in pool}  # one epoch each
  assert [e.episode_id for e in data_lib.training_episodes(c, 2, start=10)] == \
      [e.episode_id for e in first[10:]]
  c.method = "memagent"  # the MemAgent-style teacher plays it, within a scratchpad budget
  c.max_memory_chars = 20
  with pytest.raises(cfg_lib.ConfigError, match="max_memory_chars"):
    cfg_lib.validate(c)


def test_answer_repeats_weights_the_answering_turns():
  """`data.answer_repeats`: each answering-phase turn is packed that many times (reading
  turns once); steps without ids (scripted) are skipped either way; bad values fail."""
  from atommem_jax.agent.trajectory import StepRecord, Trajectory
  from atommem_jax.agent.build import ConfigError
  from atommem_jax.training import config as cfg_lib
  from atommem_jax.training import data as data_lib

  def step(i, phase, ids=True):
    return StepRecord(index=i, phase=phase, chunk=0, question=0, prompt_text="p",
                      response_text="r", prompt_ids=[1, 2] if ids else [],
                      response_ids=[3 + i] if ids else [])

  t = Trajectory(episode_id="e", method="atommem", questions=["q"], golds=[["a"]],
                 answers=["a"], steps=[step(0, "reading"), step(1, "reading"),
                                       step(2, "answering"), step(3, "answering", ids=False)])
  once, _ = data_lib.turns_of([t], vocab_size=16)
  thrice, stats = data_lib.turns_of([t], vocab_size=16, answer_repeats=3)
  assert [r for _, r in once] == [[3], [4], [5]]
  assert [r for _, r in thrice] == [[3], [4], [5], [5], [5]] and stats.turns == 5
  with pytest.raises(ValueError, match="answer_repeats"):
    data_lib.turns_of([t], vocab_size=16, answer_repeats=0)
  c = _micro_config("tiny_cpu_sft", pathlib.Path("/tmp/unused"), **{"data.answer_repeats": 0})
  with pytest.raises(ConfigError, match="^data.answer_repeats"):
    cfg_lib.validate(c)


def test_synthetic_vary_draws_the_training_stream_below_the_knobs():
  """`data.synthetic_vary`: the SFT/GRPO stream's tasks draw their own difficulty at or
  below the data.synthetic_* knobs (so held-out evaluation stays harder); bad values fail."""
  from atommem_jax.agent.build import ConfigError
  from atommem_jax.training import config as cfg_lib
  from atommem_jax.training import data as data_lib

  c = _micro_config("tiny_cpu_sft", pathlib.Path("/tmp/unused"),
                    **{"data.synthetic_vary": True, "data.synthetic_chunks": 7})
  cfg_lib.validate(c)
  eps = data_lib.training_episodes(c, 24)
  sections = {len(e.sections) for e in eps}
  assert sections <= set(range(4, 8)) and len(sections) > 1
  assert all(e.meta["config"]["corrections"] <= 1 for e in eps)
  c.data.synthetic_vary = False
  assert {len(e.sections) for e in data_lib.training_episodes(c, 4)} == {7}
  with c.ignore_type():
    c.data.synthetic_vary = "yes"
  with pytest.raises(ConfigError, match="^data.synthetic_vary"):
    cfg_lib.validate(c)


def test_grpo_plots_one_point_per_rollout_batch(tmp_path):
  """GRPO's rollout statistics repeat on every optimizer step of their iteration; the plots
  take one point per iteration (older records without `iteration` count one each)."""
  recs = [dict(step=s, loss=0.1 * s, reward=float(s > 2), accuracy=0.5, iteration=int(s > 2),
               **{f"ops_per_turn/{op}": 0.1 for op in logs.OPS}) for s in (1, 2, 3, 4, 5)]
  points = logs._per_iteration(recs)
  assert [i for i, _ in points] == [0, 1] and [r["step"] for _, r in points] == [1, 3]
  assert [i for i, _ in logs._per_iteration([{"step": 1}, {"step": 2}])] == [0, 1]
  mixed = [{"step": 1}, {"step": 2}, {"step": 3, "iteration": 0}, {"step": 4, "iteration": 1}]
  assert [(i, r["step"]) for i, r in logs._per_iteration(mixed)] == [(0, 3), (1, 4)]
  paths = logs.plot_training(recs, tmp_path)
  assert [p.name for p in paths] == ["training.png", "ops.png"]
  assert all(p.stat().st_size > 0 for p in paths)
  assert [p.name for p in logs.plot_training([dict(step=1, loss=1.0)], tmp_path)] == [
      "training.png"]
  # SFT that switched on loss.prompt_weight mid-run: response_nll from then on, its own line
  import matplotlib.pyplot as plt

  lines = []
  orig = plt.Figure.savefig
  plt.Figure.savefig = lambda fig, *a, **k: lines.append(
      [ln.get_label() for ln in fig.axes[0].get_lines()])
  try:
    logs.plot_training([dict(step=1, loss=1.0), dict(step=2, loss=0.9, response_nll=0.5)],
                       tmp_path)
  finally:
    plt.Figure.savefig = orig
  assert lines == [["loss", "response NLL"]]


def test_prompt_weight_config_is_validated():
  """loss.prompt_weight: in [0, 1]; on GRPO only with a warm-start SFT (where it applies)."""
  from atommem_jax.agent.build import ConfigError
  from atommem_jax.training import config as cfg_lib

  c = _micro_config("tiny_cpu_sft", pathlib.Path("/tmp/unused"), **{"loss.prompt_weight": 0.1})
  cfg_lib.validate(c)
  assert cfg_lib.loss_config(c).prompt_weight == 0.1
  c.loss.prompt_weight = 2.0
  with pytest.raises(ConfigError, match=r"^loss: prompt_weight must be in \[0, 1\]"):
    cfg_lib.validate(c)
  g = _micro_config("tiny_cpu_grpo", pathlib.Path("/tmp/unused"), **{"loss.prompt_weight": 0.1})
  cfg_lib.validate(g)  # applies to its warm-start SFT
  assert cfg_lib.loss_config(g).prompt_weight == 0.0  # the GRPO loss itself
  g.loss.prompt_weight = 2.0  # out of range for the warm start, caught before it runs
  with pytest.raises(ConfigError, match=r"^loss.prompt_weight must be in \[0, 1\]"):
    cfg_lib.validate(g)
  g.loss.prompt_weight = 0.1
  g.warm_start.sft_steps = 0
  with pytest.raises(ConfigError, match="^loss.prompt_weight"):
    cfg_lib.validate(g)


def test_sft_refuses_or_drops_responses_longer_than_the_sampling_budget():
  """A teacher turn longer than its phase's budget is one the policy could never finish (cut
  at the budget in evaluation and GRPO): data.overlong="error" names the budget, "drop"
  leaves the turn out and counts it."""
  from atommem_jax.agent.build import ConfigError
  from atommem_jax.agent.trajectory import StepRecord, Trajectory
  from atommem_jax.training import config as cfg_lib
  from atommem_jax.training import data as data_lib

  def step(i, phase, n):
    return StepRecord(index=i, phase=phase, chunk=i, question=0, prompt_text="p",
                      response_text="r", prompt_ids=[1, 2], response_ids=[3] * n)

  t = Trajectory(episode_id="e", method="atommem", questions=["q"], golds=[["a"]],
                 answers=["a"], steps=[step(0, "reading", 5), step(1, "reading", 9),
                                       step(2, "answering", 4), step(3, "answering", 7)])
  assert data_lib.response_overruns([t], {"reading": 8, "answering": 8}) == {
      "reading": (1, 2, 9)}
  with pytest.raises(ValueError, match=r"1 of 2 answering turns exceed "
                     r"sampling.max_answer_tokens=6 \(longest 7 tokens\)"):
    data_lib.check_response_budgets([t], {"reading": 9, "answering": 6})
  data_lib.check_response_budgets([t], {"reading": 9, "answering": 7})  # fits exactly
  turns, stats = data_lib.turns_of([t], vocab_size=16,
                                   budgets={"reading": 8, "answering": 6})
  assert [len(r) for _, r in turns] == [5, 4] and stats.overlong_dropped == 2
  c = _micro_config("tiny_cpu_sft", pathlib.Path("/tmp/unused"), **{"data.overlong": "trim"})
  with pytest.raises(ConfigError, match="^data.overlong"):
    cfg_lib.validate(c)


def test_task_tokenizer_trains_with_the_run_and_loads_with_it(tmp_path):
  """model.tiny_tokenizer_vocab: a BPE trained on the training stream's tasks, saved with the
  run (model/), and the one an evaluation of the run tokenizes with."""
  from atommem_jax.agent import build
  from atommem_jax.data import synthetic
  from atommem_jax.training import sft
  from configs import common

  c = _micro_config("tiny_cpu_sft", tmp_path / "run", steps=1, checkpoint_every=1)
  # 512: with 600 the 8-fake-device train step deadlocked in an XLA:CPU all-gather (see
  # conftest.py); a single-device run trains with any size.
  c.model.tiny_tokenizer_vocab = 512
  before = build.policy_tokenizer(c)  # the config checks' tokenizer, before any model
  assert len(before) == 512
  sft.train(c, echo=lambda s: None)
  e = common.base()
  e.model.source = f"orbax:{tmp_path / 'run'}"
  tok = build.policy_tokenizer(e)
  assert tok.get_vocab() == before.get_vocab()
  model = build.load_model(e, tmp_path)
  assert model.config.vocab_size == 512 and model.tokenizer.get_vocab() == before.get_vocab()
  sentence = synthetic.generate(synthetic.SyntheticConfig(), 0, 0).chunks[0]
  c.model.tiny_tokenizer_vocab = 0
  letters = build.policy_tokenizer(c)
  assert len(tok.encode(sentence)) < 0.6 * len(letters.encode(sentence))  # held-out text too
  # GRPO from the run: with another tokenizer it fails before any compute, with the run's
  # own (its model/ dir) it passes.
  from atommem_jax.training import config as cfg_lib

  g = _micro_config("tiny_cpu_grpo", tmp_path / "grpo", init_from=str(tmp_path / "run"))
  g.warm_start.sft_steps = 0
  with pytest.raises(build.ConfigError, match="init_from: .* another tokenizer"):
    cfg_lib.validate(g)
  g.model.tokenizer = str(tmp_path / "run" / "model")
  cfg_lib.validate(g)
  # An SFT stage continued from the run (a curriculum): the same tokenizer check, and it
  # starts from the run's parameters with a fresh optimizer at step 0.
  from atommem_jax.training import trainer

  s2 = _micro_config("tiny_cpu_sft", tmp_path / "stage2", steps=1, checkpoint_every=1,
                     init_from=str(tmp_path / "run"))
  with pytest.raises(build.ConfigError, match="init_from: .* another tokenizer"):
    cfg_lib.validate(s2)
  s2.model.tokenizer, s2.model.tiny_tokenizer_vocab = str(tmp_path / "run" / "model"), 0
  s2.optim.learning_rate = 1e-12  # the step leaves the params (all but) as they started
  said: list[str] = []
  sft.train(s2, echo=said.append)
  assert any("[init] params from" in line for line in said), said
  stage2 = trainer.setup(s2, echo=lambda s: None)
  assert stage2.step == 1
  c.model.tiny_tokenizer_vocab = 512
  first = trainer.setup(c, echo=lambda s: None)  # the run itself, resumed at its step 1
  assert first.step == 1
  for a, b in zip(jax.tree.leaves(first.state.params), jax.tree.leaves(stage2.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-8)
  for source, vocab in (("smollm2", 600), ("tiny", 100)):
    c.model.source, c.model.tiny_tokenizer_vocab = source, vocab
    with pytest.raises(build.ConfigError, match="model.tiny_tokenizer_vocab"):
      build.check_agent_config(c, ("atommem",))


def test_copy_turns_ask_for_the_section_and_answer_with_it(test_tokenizer):
  from atommem_jax.training import data as data_lib
  from configs import tiny_cpu_sft

  c = tiny_cpu_sft.get_config()
  sections = data_lib.copy_sections(c, 9)
  assert len(sections) == 9 and len(set(sections)) == 9
  trained = {s for ep in data_lib.synthetic_episodes(c, c.data.num_examples) for s in ep.sections}
  assert not trained & set(sections)  # the tasks after the SFT episodes': fresh names
  turns = data_lib.copy_turns(test_tokenizer, sections, max_prompt_tokens=1024)
  for section, (prompt, response) in zip(sections, turns):
    assert section in test_tokenizer.decode(prompt)
    assert data_lib.COPY_INSTRUCTION in test_tokenizer.decode(prompt)
    assert response[-1] == test_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert test_tokenizer.decode(response[:-1]) == section


def test_copy_examples_join_the_sft_data(tmp_path):
  from atommem_jax.training import config as cfg_lib
  from atommem_jax.training import sft, trainer

  c = _micro_config("tiny_cpu_sft", tmp_path / "run", steps=1)
  base = sft.sft_turns(trainer.setup(c, lambda s: None))[1]
  c.data.copy_examples = 5
  turns, stats = sft.sft_turns(trainer.setup(c, lambda s: None))
  assert stats.turns == base.turns + 5 == len(turns) and stats.copy_turns == 5
  assert stats.response_tokens > base.response_tokens
  c.data.copy_examples = -1
  with pytest.raises(cfg_lib.ConfigError, match="data.copy_examples"):
    cfg_lib.validate(c)
