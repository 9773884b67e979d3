"""Shared fixtures for the data tests: tiny tokenizers and tiny raw files (no downloads)."""
from __future__ import annotations

import json
import pathlib

_TEXT = """The quick brown fox jumps over the lazy dog. Document 1: Scott Derrickson is an American
director. Ed Wood was an American filmmaker. Were Scott Derrickson and Ed Wood of the same
nationality? The home city of the mentor is a small town by the sea. Memory entries are created,
read, updated and deleted. A correction arrived later; the earlier report was wrong.
Counting the members of the chess club requires every join and every retraction. 0123456789
""" * 4


class ByteTokenizer:
  """One token per UTF-8 byte: the simplest exact tokenizer (no add_special_tokens kwarg)."""

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def make_bpe_tokenizer():
  """A ~300-token byte-level BPE trained in-process, wrapped as an HF fast tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([_TEXT], trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok)


def paragraph(title: str, n: int) -> list:
  return [title, [f"{title} sentence {i} is about {title.lower()}. " for i in range(n)]]


def hotpot_records(n: int, per: int = 4, shared: int = 1, sentences: int = 3) -> list[dict]:
  """n HotpotQA-format records; each has `per` paragraphs, 2 supporting, `shared` reused.

  Paragraph j of question q has 1 + (q + j) % sentences sentences.
  """
  recs = []
  for q in range(n):
    ctx = [paragraph(f"Topic {q}-{j}", 1 + (q + j) % sentences) for j in range(per - shared)]
    ctx += [paragraph(f"Shared {j}", 2) for j in range(shared)]
    recs.append({"_id": f"q{q}", "question": f"What about topic {q}?", "answer": f"ans {q}",
                 "context": ctx, "supporting_facts": [[ctx[0][0], 0], [ctx[1][0], 1]],
                 "type": "bridge", "level": "hard"})
  return recs


def musique_records(n: int) -> list[dict]:
  recs = []
  for q in range(n):
    paras = [{"idx": j, "title": f"M{q}-{j}", "paragraph_text": f"Paragraph {j} of {q}.",
              "is_supporting": j in (1, 3)} for j in range(6)]
    recs.append({"id": f"2hop__{q}", "question": f"Q{q}?", "answer": f"A{q}",
                 "answer_aliases": [f"alias {q}"], "answerable": True, "paragraphs": paras})
  return recs


def write_json(path: pathlib.Path, records, jsonl: bool = False) -> pathlib.Path:
  with open(path, "w", encoding="utf-8") as f:
    if jsonl:
      for r in records:
        f.write(json.dumps(r) + "\n")
    else:
      json.dump(records, f)
  return path


def blind_episodes(engine, episodes) -> list:
  """`episodes` whose shown sections have every supporting sentence replaced (the episode's
  document still holds them): a teacher that writes one of them read text it was not shown."""
  import dataclasses

  out = []
  for e in episodes:
    poisoned = e.document
    for lab in e.meta["supporting"]:
      for _, sentence in lab["facts"]:
        poisoned = poisoned.replace(sentence, "This sentence was removed.")
    sections = tuple(engine.sections(dataclasses.replace(e, document=poisoned)))
    out.append(dataclasses.replace(e, sections=sections))
  return out
