"""A self-contained HTML page that shows episodes step by step.

People debug memory policies by looking: for every model call the page shows the section
read, what the memories looked like in the prompt, the response, the ops as parsed (with
errors highlighted), and the memory and scratchpad after the step. No JavaScript framework,
no network: one file that opens anywhere.

  python -m atommem_jax.eval.viewer trajectories.jsonl -o episodes.html
"""
from __future__ import annotations

import argparse
import html
import pathlib
from typing import Iterable

from atommem_jax.agent.trajectory import StepRecord, Trajectory, read_jsonl

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f6f7f9;color:#1d232b}
h1{font-size:1.4em} h2{font-size:1.15em;margin:0}
.ep{background:#fff;border:1px solid #d5d9e0;border-radius:8px;margin:1em 0;padding:.8em 1em}
.meta{color:#5a6472;font-size:.9em}
.step{border-top:1px solid #e3e6eb;padding:.6em 0;display:grid;grid-template-columns:1fr 1fr;gap:.8em}
.step h3{grid-column:1/3;font-size:1em;margin:.2em 0}
.box{background:#fafbfc;border:1px solid #e3e6eb;border-radius:6px;padding:.4em .6em;
     white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.82em;max-height:18em;overflow:auto}
.lbl{font-size:.78em;color:#5a6472;text-transform:uppercase;letter-spacing:.04em;margin-top:.3em}
.op{display:inline-block;border-radius:4px;padding:0 .4em;margin:.1em;font-size:.8em;color:#fff}
.create{background:#2e7d32}.read{background:#1565c0}.update{background:#ef6c00}
.delete{background:#c62828}.scratchpad{background:#6a1b9a}.answer{background:#00838f}
.err{color:#b71c1c;font-weight:600}.ok{color:#2e7d32;font-weight:600}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #e3e6eb;padding:.2em .5em}
"""


def _e(s) -> str:
  return html.escape("" if s is None else str(s))


def _step_html(s: StepRecord) -> str:
  ops = "".join(
      f'<span class="op {_e(o.get("kind"))}">{_e(o.get("kind"))}'
      f'{"" if o.get("id") is None else " #" + _e(o.get("id"))}</span> {_e(str(o.get("text", ""))[:200])}<br>'
      for o in s.ops)
  if s.answer is not None:
    ops += f'<span class="op answer">answer</span> {_e(s.answer)}<br>'
  errs = s.parse_errors + s.op_errors
  err_html = "".join(f'<div class="err">{_e(x)}</div>' for x in errs)
  shown = "\n".join(f"Memory {i + 1}: {m}" for i, m in enumerate(s.shown_memories)) or "(none)"
  after = "\n".join(f"- {m}" for m in s.memory_after) or "(empty)"
  where = (f"section {s.chunk + 1}" if s.phase == "reading" else f"answering question {s.question + 1}")
  section = s.section if s.phase == "reading" else "(answering phase: no section)"
  events = ", ".join(f"{k}={v}" for k, v in s.events.items() if v not in (None, False))
  return f"""<div class="step" id="s{s.index}">
<h3>Step {s.index + 1} · {_e(where)} <span class="meta">{_e(events)}</span></h3>
<div><div class="lbl">section read</div><div class="box">{_e(section) or "(empty section)"}</div>
<div class="lbl">memories shown (Memory i)</div><div class="box">{_e(shown)}</div>
<details><summary class="lbl">full prompt ({len(s.prompt_ids)} tokens)</summary><div class="box">{_e(s.prompt_text)}</div></details></div>
<div><div class="lbl">response ({len(s.response_ids)} tokens)</div><div class="box">{_e(s.response_text)}</div>
<div class="lbl">ops applied</div><div>{ops or "(none)"}</div>{err_html}
<div class="lbl">long-term memory after</div><div class="box">{_e(after)}</div>
<div class="lbl">scratchpad after</div><div class="box">{_e(s.scratchpad_after) or "(empty)"}</div></div>
</div>"""


def _episode_html(t: Trajectory, n: int) -> str:
  rows = "".join(
      f"<tr><td>{i + 1}</td><td>{_e(q)}</td><td>{_e(' | '.join(g))}</td><td>{_e(a)}</td></tr>"
      for i, (q, g, a) in enumerate(zip(t.questions, t.golds, t.answers)))
  score = " ".join(f"{k}={v:.2f}" for k, v in t.scores.items())
  ops = " ".join(f"{k}={v}" for k, v in t.op_counts.items())
  steps = "".join(_step_html(s) for s in t.steps)
  return f"""<div class="ep" id="ep{n}"><h2>{_e(t.method)} · episode {_e(t.episode_id)}
<span class="meta">sample {t.sample} · {len(t.steps)} steps · {_e(score)}</span></h2>
<div class="meta">ops: {_e(ops)}</div>
<table><tr><th>#</th><th>question</th><th>gold</th><th>answer</th></tr>{rows}</table>
<details open><summary>steps</summary>{steps}</details></div>"""


def render_html(trajectories: Iterable[Trajectory], title: str = "atommem-jax episodes") -> str:
  eps = list(trajectories)
  index = "".join(f'<li><a href="#ep{i}">{_e(t.method)} · {_e(t.episode_id)}</a> '
                  f'<span class="meta">{" ".join(f"{k}={v:.2f}" for k, v in t.scores.items())}</span></li>'
                  for i, t in enumerate(eps))
  body = "".join(_episode_html(t, i) for i, t in enumerate(eps))
  return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
          f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1><ul>{index}</ul>{body}</body></html>")


def write_html(jsonl_path: str | pathlib.Path, out_path: str | pathlib.Path,
               max_episodes: int | None = None) -> pathlib.Path:
  trajs = list(read_jsonl(jsonl_path))[:max_episodes]
  out = pathlib.Path(out_path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(render_html(trajs, title=f"atommem-jax · {pathlib.Path(jsonl_path).name}"),
                 encoding="utf-8")
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("jsonl")
  p.add_argument("-o", "--out", default=None)
  p.add_argument("--max_episodes", type=int, default=None)
  a = p.parse_args(argv)
  out = a.out or str(pathlib.Path(a.jsonl).with_suffix(".html"))
  print(write_html(a.jsonl, out, a.max_episodes))


if __name__ == "__main__":
  main()
