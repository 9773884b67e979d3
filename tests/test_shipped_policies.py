"""The trained policies that ship in the package load as the configs that name them expect."""
from __future__ import annotations

import json

from atommem_jax.agent import build
from atommem_jax.data import synthetic
from configs import default_synthetic, eval_tiny_synthetic


def test_shipped_tiny_policy_loads_with_its_task_tokenizer(tmp_path):
  d = eval_tiny_synthetic.SHIPPED
  hf = json.loads((d / "config.json").read_text())
  assert hf["vocab_size"] == 1024 and hf["num_hidden_layers"] == 4 and hf["hidden_size"] == 256
  c = default_synthetic.get_config()
  assert c.model.source == f"hf:{d}"
  build.check_agent_config(c, ("atommem",))
  model = build.load_model(c, tmp_path)
  tok = model.tokenizer
  assert len(tok) == 1024 and tok.eos_token == "<|im_end|>"
  # Its tokenizer was trained on the training stream; held-out text still encodes compactly.
  sentence = synthetic.generate(synthetic.SyntheticConfig(), 0, 0).chunks[0]
  assert tok.decode(tok.encode(sentence)) == sentence
  assert len(tok.encode(sentence)) < len(sentence) / 3
