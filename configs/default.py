"""The README's main job (real-data half): the shipped trained SmolLM2-135M AtomMem policy vs
the baselines on held-out real HotpotQA dev questions.

  python -m atommem_jax.eval --config=configs/default.py

The policy is SmolLM2-135M-Instruct plus the LoRA adapter trained by configs/smollm2_sft.py
(atommem_jax/trained/smollm2_atommem.safetensors; the same settings as
configs/eval_trained_smollm2.py, which runs the full comparison). Questions come from the dev
split (never trained on), in MemAgent-style documents of 20 Wikipedia paragraphs (~3K
tokens, longer than the training documents' own 10-20 paragraphs) read in 512-token
sections. `launch/run_local.sh` runs this after configs/eval_trained_synthetic.py (held-out
synthetic tasks); wall times on 2 cores are in the README.
Scale up with overrides, e.g. `--config.max_examples=100 --config.data.num_docs=50,200`.
The prompted model: configs/eval_prompted_smollm2_quick.py (or
`--config.model.source=smollm2`).
"""
from configs import eval_trained_smollm2


def get_config():
  c = eval_trained_smollm2.get_config()
  c.output_dir = "outputs/default"
  c.max_examples = 4
  c.methods = "atommem,memagent,rag"
  c.data.dataset = "hotpotqa"
  c.data.num_docs = "20"
  c.sampling.batch_size = 4
  c.verbose = True
  return c
