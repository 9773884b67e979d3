"""The demo's core on a tiny random model + the test tokenizer; its data loading and errors."""
from __future__ import annotations

import numpy as np
import pytest

from atommem_jax import demo
from atommem_jax.data.raw import Paragraph, QARecord
from atommem_jax.models import config as config_lib
from atommem_jax.models import transformer
from atommem_jax.models.sampler import generate

_RECORD = QARecord(
    id="r0", question="Who designed the museum?", answers=("Frank Lloyd Wright",),
    paragraphs=(Paragraph("Museum", "The museum opened in 1959."),
                Paragraph("Architect", "It was designed by Frank Lloyd Wright.")),
    supporting=(0, 1))


def test_prompt_is_chatml_with_documents_then_question(test_tokenizer):
  prompt = demo.build_prompt(test_tokenizer, _RECORD)
  assert prompt.startswith("<|im_start|>system\n" + demo.SYSTEM_PROMPT + "<|im_end|>\n")
  assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
  i1 = prompt.index("Document 1 (Museum): The museum opened in 1959.")
  i2 = prompt.index("Document 2 (Architect): It was designed by Frank Lloyd Wright.")
  assert i1 < i2 < prompt.index("Question: Who designed the museum?")


def test_answer_on_tiny_model_is_the_greedy_generation(test_tokenizer):
  tok = test_tokenizer
  config = config_lib.tiny("llama", eos_token_id=tok.eos_token_id, max_position_embeddings=512)
  params = transformer.init_params(config, seed=0)
  result = demo.answer(config, params, tok, _RECORD, max_new_tokens=6, max_prompt_tokens=400)
  prompt = tok(demo.build_prompt(tok, _RECORD), add_special_tokens=False)["input_ids"]
  ref = generate(config, params, [prompt], max_new_tokens=6, stop_token_ids=tok.eos_token_id)
  assert result.prompt_tokens == len(prompt) and result.paragraphs == 2
  assert result.new_tokens == int(ref.lengths[0]) and 1 <= result.new_tokens <= 6
  assert result.answer == tok.decode(ref.to_lists()[0], skip_special_tokens=True).strip()
  assert result.gold == "Frank Lloyd Wright" and result.question == _RECORD.question
  assert result.exact_match in (0.0, 1.0) and 0.0 <= result.f1 <= 1.0
  assert result.prefill_s > 0 and result.decode_s >= 0 and result.compile_s >= 0
  assert np.isfinite(result.prefill_tokens_per_s)
  text = demo.format_result(result)
  for needle in ("Question:", "Model answer:", "Gold answer: Frank Lloyd Wright", "EM:",
                 "Prefill:", "Decode:", "Compile:"):
    assert needle in text


def test_fit_prompt_keeps_supporting_paragraphs_within_budget(test_tokenizer):
  tok = test_tokenizer
  count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
  distractor = Paragraph("Noise", "An unrelated sentence about rivers and mountains. " * 6)
  record = QARecord(id="r1", question=_RECORD.question, answers=_RECORD.answers,
                    paragraphs=(distractor,) + _RECORD.paragraphs + (distractor,),
                    supporting=(1, 2))
  full = demo.build_prompt(tok, record)
  assert demo.fit_prompt(tok, record, None) == (full, 4)
  only_support = demo.build_prompt(tok, record, [1, 2])
  prompt, kept = demo.fit_prompt(tok, record, count(only_support) + 5)
  assert (prompt, kept) == (only_support, 2)
  prompt, kept = demo.fit_prompt(tok, record, count(full) - 1)
  assert kept == 3 and count(prompt) <= count(full) - 1
  assert prompt.index("(Noise)") < prompt.index("(Museum)")  # file order is kept
  with pytest.raises(ValueError, match="max_prompt_tokens"):
    demo.fit_prompt(tok, record, 10)


def test_too_long_prompt_is_rejected(test_tokenizer):
  config = config_lib.tiny("llama", max_position_embeddings=32)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    demo.answer(config, transformer.init_params(config), test_tokenizer, _RECORD, 8)


def test_load_record_reads_the_shared_hotpotqa_file():
  if not (demo.DEFAULT_DATA_DIR / demo.HOTPOT_FILE).is_file():
    pytest.skip("shared data folder not present")
  rec = demo.load_record(demo.DEFAULT_DATA_DIR, 0)
  assert rec.question and rec.answers[0] and len(rec.paragraphs) >= 2
  with pytest.raises(ValueError, match="out of range"):
    demo.load_record(demo.DEFAULT_DATA_DIR, 10**6)


def test_missing_data_dir_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="--data_dir"):
    demo.main(["--data_dir", str(tmp_path / "nowhere")])
