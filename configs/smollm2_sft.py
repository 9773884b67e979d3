"""SFT of SmolLM2-135M-Instruct (the shipped GGUF) as an AtomMem policy, on CPU, with LoRA.

  python -m atommem_jax.training --config=configs/smollm2_sft.py --config.output_dir=outputs/smollm2_sft

Data: the privileged teacher (agent/teacher.py) on a seeded mix of the HotpotQA, 2Wiki and
MuSiQue *train* splits (never the dev files), each question in its own 10-20 paragraphs, plus
the scripted oracle on synthetic CRUD tasks (every operation, corrections and retractions);
both rendered with the compact AtomMem prompts through the rollout engine, so every turn
carries the exact prompt ids evaluation will show. LoRA rank 8 on every projection of the 30
layers (4.9M trained parameters; the adapter file is ~10 MB) keeps the shipped artefact small;
`--config.lora.rank=0` trains every weight instead. SmolLM2's 9 attention heads do not split
over a tensor axis: the "fsdp" rules shard weights over all devices instead.

The run writes output_dir/lora.safetensors (load it with --config.model.source=lora:<file>),
the merged Hugging Face export in output_dir/hf, metrics.jsonl, tb/ and training.png; rerun
the command to resume after an interruption. Evaluate with configs/eval_trained_smollm2.py
(--config.model.source=lora:outputs/smollm2_sft/lora.safetensors).

Measured on this project's 2-core CPU (2026-11-30; docs/results.md, "Trained SmolLM2"):
64 episodes -> 408 turns (206K prompt + 22K response tokens) -> 157 packed rows; 40 steps
(one epoch) in 54 min (62 s a step alone); loss 1.54 -> 0.14-0.43. The result ships as
atommem_jax/trained/smollm2_atommem.safetensors. It writes well-formed protocol but scores
EM 0 on held-out synthetic tasks (scratchpad_only 0.75): one epoch is not enough; continue
with `--config.steps=120` (three epochs) into the same output_dir: it resumes at step 40,
and the cosine schedule stretches to 120 steps from there.
"""
from configs import common


def get_config():
  c = common.train_base()
  c.output_dir = "outputs/smollm2_sft"
  c.algorithm = "sft"
  c.method = "atommem"
  c.model.source = "smollm2"
  c.sharding_rules = "fsdp"
  c.embedder = "minilm"
  c.prompts.system = "compact_system.txt"
  c.prompts.step = "compact_step.txt"
  c.prompts.final = "compact_final.txt"
  c.env.chunk_size = 512
  c.env.overlap = 0
  c.env.max_calls = 0
  c.memory.capacity = 64
  c.sampling.max_prompt_tokens = 2048
  # Also the evaluation's budgets (configs/eval_trained_smollm2.py takes them). The teacher's answering turns
  # fit (longest 83 tokens); 14 of its 316 reading turns do not (longest 400) and are left
  # out of SFT, since the policy could not finish them within its budget.
  c.sampling.max_new_tokens = 160
  c.sampling.max_answer_tokens = 96
  c.data.overlong = "drop"
  c.max_memory_chars = 300
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
  c.steps = 40  # one epoch of the 157 packed rows
  c.checkpoint_every = 5
  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 5
  c.batch.rows = 4
  c.batch.seq_len = 1536
  c.loss.chunk_size = 128  # [rows, 128, 49,152] float32 logits per chunk: 100 MB
  c.data.source = "real"
  c.data.datasets = "hotpotqa,2wiki,musique"
  c.data.num_docs = 0  # each question's own paragraphs: short training documents
  c.data.num_examples = 48
  c.data.synthetic_examples = 16
  c.data.synthetic_chunks = 6
  return c
