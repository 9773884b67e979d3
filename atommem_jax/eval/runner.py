"""The evaluation runner: build model, embedder, data and policies from a config; run; report.

Side effects live here (loading checkpoints, reading data, writing files); the pieces it
wires together (rollout engine, policies, metrics, reports) are pure or nearly so.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable

import ml_collections
import numpy as np

from atommem_jax.agent import build
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent import policies as pol
from atommem_jax.agent.rollout import RolloutEngine
from atommem_jax.agent.trajectory import Trajectory, write_jsonl
from atommem_jax.eval import config as cfg_lib
from atommem_jax.eval import episodes as episodes_lib
from atommem_jax.eval import report
from atommem_jax.eval import resume as resume_lib
from atommem_jax.eval import viewer


def _print_steps(t: Trajectory, echo: Callable[[str], None]) -> None:
  echo(f"  [{t.method}] {t.episode_id}: {len(t.steps)} calls")
  for s in t.steps:
    ops = ", ".join(f"{o['kind']}{'' if o['id'] is None else ' #' + str(o['id'])}"
                    + (f"({o['text'][:40]!r})" if o['text'] else "") for o in s.ops)
    where = f"sec {s.chunk + 1}" if s.phase == env_lib.READING else f"Q{s.question + 1}"
    extra = f" -> answer {s.answer!r}" if s.answer is not None else ""
    errs = f"  !{len(s.parse_errors) + len(s.op_errors)} errors" if s.parse_errors or s.op_errors else ""
    echo(f"    step {s.index + 1:2d} {where:7s} {ops or '(no ops)'}{extra}{errs}")
  echo(f"    questions: {t.questions}\n    answers:   {t.answers}\n    gold:      {t.golds}")


def evaluate(c: ml_collections.ConfigDict, echo: Callable[[str], None] = print) -> dict:
  """Runs every method on every length; writes results.json, summary.md, plots, JSONL, HTML."""
  from tqdm.auto import tqdm

  from atommem_jax.data import metrics

  cfg_lib.validate(c)
  out = pathlib.Path(c.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  store = resume_lib.EpisodeStore(out, c)  # before any compute: a mismatch fails fast
  (out / "config.json").write_text(c.to_json_best_effort(indent=2))
  t0 = time.perf_counter()
  model = build.load_model(c, out)
  embed_fn, dim = build.build_embedder(c, model)
  # Models of `method@label` methods (method_models), each loaded once.
  models: dict[str | None, build.Model | None] = {None: model}
  for label in sorted({cfg_lib.split_method(n)[1] for n in cfg_lib.methods(c)} - {None}):
    models[label] = build.load_model(cfg_lib.labelled_config(c, label), out / f"model_{label}")
  labelled = "".join(f" {k}={cfg_lib.model_labels(c)[k]}" for k in models if k is not None)
  echo(f"[setup] model={c.model.source}{labelled} embedder={c.embedder} "
       f"({time.perf_counter() - t0:.1f}s)")
  # Sections are cut with the policy's tokenizer; without a model, with model.tokenizer.
  tokenizer = model.tokenizer if model else (build.policy_tokenizer(c) if c.model.tokenizer
                                             else None)
  runs: dict[str, dict[tuple[str, str], list[Trajectory]]] = {}
  timings: dict[tuple[str, str], float] = {}  # (method name, cell) -> seconds
  prompt_stats: dict[str, dict[str, int]] = {}
  provenance = {d: episodes_lib.provenance(c, d) for d in cfg_lib.datasets(c)}  # for the reports
  for dataset in cfg_lib.datasets(c):
    for length in cfg_lib.lengths(c):
      eps = episodes_lib.load(c, length, tokenizer, dataset=dataset)
      echo(f"[data] {dataset} length={length}: {len(eps)} episodes, "
           f"{np.mean([len(e.document) for e in eps]):.0f} chars on average")
      for name in cfg_lib.methods(c):  # "method" or "method@label" (another model)
        method, label = cfg_lib.split_method(name)
        mdl = models[label]
        cell = f"{name}:{dataset}/{length}" if label else f"{name}@{dataset}/{length}"
        policy = build.make_policy(method, mdl, c, c.seed)
        start = time.perf_counter()
        wanted = {e.episode_id for e in eps}
        done = [t for t in resume_lib.latest(store.load(name, dataset, str(length)))
                if t.episode_id in wanted]
        finished = resume_lib.finished_episodes(done, c.group_size)
        trajs: list[Trajectory] = [t for t in done if t.episode_id in finished]
        todo = [e for e in eps if e.episode_id not in finished]
        if finished:
          echo(f"[resume] {cell}: {len(finished)} of {len(eps)} episodes already finished in "
               f"{store.root}")
        bs = c.sampling.batch_size
        bar = tqdm(total=len(eps), initial=len(eps) - len(todo), desc=cell, unit="ep",
                   leave=False)
        for k in range(0, len(todo), bs):
          batch = todo[k:k + bs]
          if method == "full_context":
            new = pol.full_context(policy, batch, metrics.score_all,
                                   answer_template=c.prompts.answer, params=mdl.params)
          else:
            eng = RolloutEngine(build.rollout_config(c, method, dim), tokenizer,
                                embed_fn, metrics.score_all)
            new = eng.run(batch, policy, group_size=c.group_size,
                          params=mdl.params if mdl else None,
                          progress=lambda step, active: bar.set_postfix(
                              call=step, running=active, refresh=True)).trajectories
          if label is not None:  # the trajectory names what ran, model label included
            new = [dataclasses.replace(t, method=name) for t in new]
          store.append(name, dataset, str(length), new)
          trajs += new
          bar.update(len(batch))
        bar.close()
        order = {e.episode_id: i for i, e in enumerate(eps)}
        trajs.sort(key=lambda t: (order[t.episode_id], t.sample))
        timings[(name, cell)] = time.perf_counter() - start
        lm = policy if isinstance(policy, pol.LMClient) else getattr(policy, "lm", None)
        if lm is not None:
          st = prompt_stats.setdefault(name, {"longest_prompt_tokens": 0,
                                                "longest_prompt_tokens_before_cut": 0,
                                                "truncated_prompts": 0, "model_calls": 0,
                                                "prompt_tokens": 0, "generated_tokens": 0,
                                                "generate_seconds": 0.0})
          # Over every episode of the cell, resumed ones included (their steps keep the
          # prompt ids the model saw); the client only saw this run's calls.
          seen = max((len(s.prompt_ids) for t in trajs for s in t.steps), default=0)
          st["longest_prompt_tokens"] = max(st["longest_prompt_tokens"], lm.max_prompt_len, seen)
          st["longest_prompt_tokens_before_cut"] = max(st["longest_prompt_tokens_before_cut"],
                                                       lm.max_raw_prompt_len)
          for k, v in (("truncated_prompts", lm.truncated_prompts),
                       ("model_calls", lm.prompts_encoded), ("prompt_tokens", lm.prompt_tokens),
                       ("generated_tokens", lm.generated_tokens),
                       ("generate_seconds", lm.generate_seconds)):
            st[k] += v
          if lm.truncated_prompts:  # the policy (and its client) is this cell's own
            echo(f"[warning] {name}: {lm.truncated_prompts} of {lm.prompts_encoded} prompts "
                 "were longer than sampling.max_prompt_tokens and lost their middle")
        runs.setdefault(name, {})[(dataset, str(length))] = trajs
        if c.get("verbose", False):
          for t in trajs[:3]:
            _print_steps(t, echo)
        sc = report._score_block(trajs)
        echo(f"[{cell}] EM={sc['exact_match']:.3f} F1={sc['f1']:.3f} "
             f"contains={sc['contains']:.3f} sub-EM={sc['sub_em']:.3f} n={sc['n']} "
             f"({timings[(name, cell)]:.1f}s)")
        # Completed cells survive an interrupted run: results so far, rewritten per cell.
        (out / "results.partial.json").write_text(
            json.dumps(report.aggregate(runs, provenance), indent=2))
  results = report.aggregate(runs, provenance)
  for method in results:
    results[method]["seconds"] = sum(v for (name, _), v in timings.items() if name == method)
    results[method].update(prompt_stats.get(method, {}))
  x_label = ("sections per document" if cfg_lib.datasets(c) == ["synthetic"]
             else "documents per context")
  paths = report.write_reports(results, out, x_label)
  all_trajs = list(report.flatten(runs))
  jsonl = write_jsonl(out / "trajectories.jsonl", all_trajs)
  html = out / "trajectories.html"
  html.write_text(viewer.render_html(all_trajs[: c.viewer_episodes], title=f"atommem-jax · {out.name}"))
  echo("\n" + report.summary_markdown(results))
  for method, st in prompt_stats.items():
    if not st["model_calls"]:
      echo(f"[prompts] {method}: longest {st['longest_prompt_tokens']} tokens (stored "
           "trajectories); no model calls in this run: every episode was resumed")
      continue
    secs = max(st["generate_seconds"], 1e-9)
    echo(f"[prompts] {method}: longest {st['longest_prompt_tokens']} tokens "
         f"({st['longest_prompt_tokens_before_cut']} before the head+tail cut; "
         f"{st['truncated_prompts']} of {st['model_calls']} prompts cut); "
         f"{st['prompt_tokens']} prompt + {st['generated_tokens']} generated tokens in "
         f"{st['generate_seconds']:.0f}s of sampling = {st['prompt_tokens'] / secs:.0f} prompt + "
         f"{st['generated_tokens'] / secs:.1f} new tokens/s (compiles included)")
  echo(f"\n[done] {paths['results']}  {paths['summary']}  {paths['scores_png']}  {paths['ops_png']}"
       f"  {jsonl}  {html}")
  return results
