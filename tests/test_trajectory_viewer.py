"""Trajectory JSONL round trip and the HTML viewer."""
from __future__ import annotations

import pytest

from atommem_jax.agent.trajectory import StepRecord, Trajectory, read_jsonl, write_jsonl
from atommem_jax.eval import viewer


def _traj() -> Trajectory:
  steps = [
      StepRecord(index=0, phase="reading", chunk=0, question=0,
                 prompt_text="Questions...", section="Alice was born in <Paris>.",
                 response_text="<add_memory>Alice born in Paris</add_memory>",
                 prompt_ids=[1, 2, 3], response_ids=[4, 5], response_logprobs=[-0.1, -0.2],
                 ops=[{"kind": "create", "text": "Alice born in Paris", "id": None}],
                 memory_after=["Alice born in Paris"], scratchpad_after="reading"),
      StepRecord(index=1, phase="answering", chunk=1, question=0, prompt_text="final",
                 response_text="<final_answer>\\boxed{Paris}</final_answer>", answer="Paris",
                 shown_memories=["Alice born in Paris"], parse_errors=["unclosed tag <x>"],
                 events={"answered": 0}),
  ]
  return Trajectory(episode_id="ep-1", method="atommem", questions=["Where was Alice born?"],
                    golds=[["Paris"]], answers=["Paris"], steps=steps,
                    scores={"exact_match": 1.0}, op_counts={"create": 1})


def test_jsonl_round_trip_and_loss_mask(tmp_path):
  t = _traj()
  path = write_jsonl(tmp_path / "t.jsonl", [t, t])
  back = list(read_jsonl(path))
  assert back == [t, t]
  assert back[0].steps[0].loss_mask == [0, 0, 0, 1, 1]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text('{"episode_id": 1}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1"):
    list(read_jsonl(p))


def test_viewer_shows_steps_ops_and_escapes_text(tmp_path):
  path = write_jsonl(tmp_path / "t.jsonl", [_traj()])
  out = viewer.write_html(path, tmp_path / "v.html")
  page = out.read_text()
  assert page.startswith("<!doctype html>")
  assert "Step 1" in page and "Step 2" in page
  assert "section 1" in page and "answering question 1" in page
  assert 'class="op create"' in page and 'class="op answer"' in page
  assert "&lt;Paris&gt;" in page and "<Paris>" not in page  # document text is escaped
  assert "unclosed tag" in page  # errors are shown


def test_viewer_renders_in_headless_chromium(tmp_path):
  """The page opens in a real browser (Debian's chromium; skipped where it is not installed)."""
  import shutil
  import subprocess

  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if browser is None:
    pytest.skip("chromium not installed (apt-get install chromium)")
  page = viewer.write_html(write_jsonl(tmp_path / "t.jsonl", [_traj()]), tmp_path / "v.html")
  shot = tmp_path / "v.png"
  flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
  subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
  dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                       timeout=120).stdout
  assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
  assert "Step 1" in dom and "Step 2" in dom and "Alice born in Paris" in dom
