"""The trained SmolLM2-135M AtomMem policy against the baselines on real dev questions.

  python -m atommem_jax.eval --config=configs/eval_trained_smollm2.py \
      [--config.data.dataset=hotpotqa --config.data.data_dir=DIR --config.max_examples=N \
       --config.data.num_docs=50 --config.output_dir=outputs/eval_trained_smollm2]

The policy is the shipped LoRA adapter (atommem_jax/trained/smollm2_atommem.safetensors:
SmolLM2-135M-Instruct + rank-8 adapters from configs/smollm2_sft.py, loaded and merged by
`model.source=lora:<file>`), or any trained policy given by --config.model.source
(lora:<run>/lora.safetensors, orbax:<run dir>, hf:<run>/hf). `atommem` runs it with the
compact prompts it was trained on; `atommem@base` is the prompted base model
(SmolLM2-135M-Instruct, `method_models`) with the same prompts, and the baselines
(memagent, rag, static_summary, full_context) run on the base model with their own prompts,
as they would without training. Add a trained MemAgent-style policy with
`--config.method_models=base=smollm2,memagent_sft=lora:<run>/lora.safetensors
--config.methods=...,memagent@memagent_sft`. `data.data_dir` may hold the official
hotpot_dev_distractor_v1.json (else the local sample in ../shared/data is used; results.json
says which). The environment matches training: 512-token sections, no overlap; at 50
documents (~7K tokens) that is ~14 sections per question. Prompts may run to 7,680 tokens:
the agentic ones stay under ~1K (as in training, where the cap was 2,048), while rag's six
retrieved sections and full_context's whole 50-document context need the model's window.
Resumable: finished episodes in output_dir/episodes are reused by a rerun. The full
comparison (baselines and trained policies, 2Wiki and MuSiQue, 200 documents) runs in
resumable stages with `bash launch/eval_real.sh`; on 2 CPU cores full_context alone takes
~43 s a question at 50 documents.
"""
import pathlib

import atommem_jax
from configs import common
from configs import smollm2_sft

ADAPTER = pathlib.Path(atommem_jax.__file__).parent / "trained" / "smollm2_atommem.safetensors"


def get_config():
  c = common.base()
  c.output_dir = "outputs/eval_trained_smollm2"
  c.model.source = f"lora:{ADAPTER}"
  c.max_examples = 100
  c.methods = ("atommem,atommem@base,memagent@base,rag@base,static_summary@base,"
               "full_context@base")
  c.method_models = "base=smollm2"
  c.data.dataset = "hotpotqa"
  c.data.num_docs = "50"
  # The trained policy's prompts, 512-token sections, memory and budgets (160 reading / 96
  # answering tokens; answering was 32, which cut 95% of prompted full_context answers and
  # the trained policy's notes-then-answer turns).
  common.take_policy_settings(c, smollm2_sft.get_config())
  c.sampling.max_prompt_tokens = 7680  # the agentic prompts stay under ~1K; rag and full_context get the window
  c.sampling.batch_size = 16
  return c
