"""The privileged scripted teacher (atommem_jax/agent/teacher.py) on the real dev questions.

  python -m atommem_jax.eval --config=configs/eval_teacher.py
  python -m atommem_jax.eval --config=configs/eval_teacher.py --config.data.dataset=2wiki,musique

No policy model: the teacher is scripted from the episode's supporting labels and answer, so
its scores are an UPPER BOUND that uses labels, not a result. Sections are cut with the
SmolLM2 tokenizer, as the SmolLM2 evaluations cut them; entries and queries are embedded
with all-MiniLM-L6-v2 (`--config.embedder=hashing` needs no encoder). Expected (docs/teacher.md;
about 2.5 minutes for all three datasets on 2 CPU cores): EM 1.0 on every question of
HotpotQA (200), 2Wiki (164) and MuSiQue (200) at 50 documents, 0 parse errors, every
supporting sentence in memory (`python -m atommem_jax.agent.teacher
outputs/eval_teacher/trajectories.jsonl`); the op statistics are the numbers to look at.
"""
from configs import common


def get_config():
  from atommem_jax.models.tokenizer import smollm2_gguf_path

  c = common.base()
  c.output_dir = "outputs/eval_teacher"
  c.max_examples = 0  # every question of the dev file
  c.methods = "teacher"
  c.model.source = "none"
  c.model.tokenizer = str(smollm2_gguf_path())  # cuts the sections; no model is loaded
  c.embedder = "minilm"
  c.data.dataset = "hotpotqa"
  c.data.num_docs = "50"
  c.viewer_episodes = 20
  return c
