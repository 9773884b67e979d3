"""Prompt templates: shipped files validate, render, and bad templates name the problem."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from atommem_jax.agent import prompts

SHIPPED = ("system.txt", "step.txt", "final.txt", "answer.txt", "memagent_system.txt",
           "memagent_step.txt", "summary.txt")


def test_shipped_templates_load_and_render_every_field():
  ps = prompts.PromptSet.load()
  msgs = ps.messages("step", dict(questions="1. Who?", scratchpad="SP", query="Q",
                                  memories="Memory 1: m", chunk="CHUNK", query_times=2))
  assert [m["role"] for m in msgs] == ["system", "user"]
  user = msgs[1]["content"]
  for s in ("1. Who?", "SP", "Memory 1: m", "CHUNK", "2 times"):
    assert s in user
  assert "<add_memory>" in msgs[0]["content"] and "<modify_memory>" in msgs[0]["content"]
  final = ps.messages("final", dict(question="Who?", scratchpad="", query="q", memories="",
                                    query_times=0, max_query_times=3))[1]["content"]
  assert "\\boxed{" in final and "Who?" in final and "${" not in final
  prompts.PromptSet.load(system="memagent_system.txt", step="memagent_step.txt")
  prompts.load_template("answer.txt", "answer")


def test_unknown_and_missing_placeholders_are_named(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_text("${chunk} ${colour}")
  with pytest.raises(ValueError, match=r"unknown placeholders \['colour'\]"):
    prompts.load_template(bad, "step")
  bad.write_text("no chunk here")
  with pytest.raises(ValueError, match="lacks required placeholders"):
    prompts.load_template(bad, "step")
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    prompts.load_template(tmp_path / "nope.txt", "step")


def test_missing_field_at_render_time_raises_keyerror():
  ps = prompts.PromptSet.load()
  with pytest.raises(KeyError):
    ps.messages("step", dict(chunk="x"))


def test_templates_ship_inside_the_package():
  import atommem_jax

  pkg = pathlib.Path(atommem_jax.__file__).parent
  assert prompts.PROMPTS_DIR == pkg / "prompts"
  assert {p.name for p in prompts.PROMPTS_DIR.glob("*.txt")} >= set(SHIPPED)


def test_template_names_and_paths(tmp_path, monkeypatch):
  """A bare shipped name is the shipped file, even beside a stray file of that name;
  anything else is a path."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "step.txt").write_text("stray ${chunk}")
  assert prompts.resolve_template("step.txt") == prompts.PROMPTS_DIR / "step.txt"
  assert prompts.resolve_template("./step.txt") == pathlib.Path("step.txt")
  assert prompts.load_template("./step.txt", "step").template == "stray ${chunk}"
  mine = tmp_path / "mine.txt"
  mine.write_text("mine ${chunk}")
  assert prompts.load_template(str(mine), "step").template == "mine ${chunk}"
  assert prompts.load_template("mine.txt", "step").template == "mine ${chunk}"  # not shipped


def test_wheel_contains_the_templates(tmp_path):
  """A non-editable install finds the templates: they are package data in the wheel.
  Built from a copy of the sources, so the working tree (build/, egg-info) is untouched."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  src = tmp_path / "src"
  src.mkdir()
  for f in ("setup.py", "README.md"):
    shutil.copy(repo / f, src / f)
  shutil.copytree(repo / "atommem_jax", src / "atommem_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                         "-q", "-w", str(tmp_path / "dist"), str(src)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  [wheel] = (tmp_path / "dist").glob("atommem_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {f"atommem_jax/prompts/{n}" for n in SHIPPED} <= names
