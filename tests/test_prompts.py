"""Prompt templates: shipped files validate, render, and bad templates name the problem."""
from __future__ import annotations

import pytest

from atommem_jax.agent import prompts


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
