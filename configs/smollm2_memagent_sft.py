"""SFT of SmolLM2-135M-Instruct as a MemAgent-style policy (overwrite-only scratchpad), on
CPU, with LoRA: the trained baseline of the paper's fair comparison (both memories trained).

  python -m atommem_jax.training --config=configs/smollm2_memagent_sft.py \
      --config.output_dir=outputs/smollm2_memagent_sft

Everything as configs/smollm2_sft.py (same train questions, synthetic mix, sections, LoRA,
optimizer and steps) except the method: the MemAgent-style privileged teacher
(agent/memagent_teacher.py) rewrites a scratchpad of at most 1,000 characters with the
supporting sentences shown so far (at 300 characters it could hold all the evidence for only
20-43% of the train questions: docs/teacher.md), and the synthetic tasks are played by the
scratchpad_only oracle. Evaluate the result with configs/eval_trained_smollm2.py
--config.methods=memagent --config.model.source=lora:<output_dir>/lora.safetensors.

Measured (2026-11-30, the 2 CPU cores here, alone): 42 min 20 s for the 40 steps (1.5 epochs of
106 packed rows), loss 0.40 -> 0.05-0.16. On 8 held-out synthetic tasks (configs/
default_synthetic.py) EM 0.125 (the static scratchpad_only: 0.750); on 4 HotpotQA dev-sample
questions EM 0.000; valid protocol throughout (docs/results.md, "The trained MemAgent-style
baseline").
"""
from configs import smollm2_sft


def get_config():
  c = smollm2_sft.get_config()
  c.output_dir = "outputs/smollm2_memagent_sft"
  c.method = "memagent"
  c.max_memory_chars = 1000
  c.sampling.max_new_tokens = 320  # a rewritten 1,000-character scratchpad is ~250 tokens
  c.data.overlong = "drop"  # 3 of the teacher's 251 rewrites are longer (up to 360)
  return c
