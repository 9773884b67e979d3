"""Policies on the one environment, so every comparison is like for like.

  atommem       the learned (or prompted) AtomMem policy: all CRUD ops, official prompts
  memagent      MemAgent-style overwrite memory: a scratchpad rewritten every section, no
                long-term store; answers from the scratchpad
  rag           static retrieval: every section stored verbatim, one query (the question),
                answer once from the top-k sections
  static_summary  static workflow: the model summarises each section into a new entry,
                the question is the query at the end, answer from the top-k summaries
  oracle        scripted policy for synthetic tasks (see `atommem_jax.agent.oracle`)
The static workflows differ from AtomMem only in who decides the memory operations: a
fixed script instead of the policy.

Rendering is separate from sampling: `policy.render(observation)` gives the exact prompt
text and ids (chat template, head+tail cut) without calling the model, `LMClient.complete`
samples with the parameters passed to it, and `RenderedTeacher` pairs a scripted teacher's
responses with a student's prompts (SFT data).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np

from atommem_jax import protocol
from atommem_jax.agent import environment as env_lib
from atommem_jax.agent.prompts import PromptSet, load_template
from atommem_jax.agent.rollout import Action, Observation
from atommem_jax.agent.trajectory import StepRecord, Trajectory

_ANSWER_STOP = ("</final_answer>",)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 0.0  # 0 = greedy
  top_k: int | None = None
  top_p: float | None = None
  max_new_tokens: int = 256  # reading turns
  max_answer_tokens: int = 64  # answering turns
  max_prompt_tokens: int = 8192  # longer prompts keep their head and tail (counted)

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
    if self.max_new_tokens <= 0 or self.max_answer_tokens <= 0 or self.max_prompt_tokens <= 0:
      raise ValueError("SamplingConfig token budgets must be positive")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")


def response_budget(sampling, kind: str) -> int:
  """New tokens a response of turn `kind` may have: `max_new_tokens` while reading,
  `max_answer_tokens` while answering (`sampling`: a SamplingConfig or a config's `sampling`;
  training checks its SFT data against the same rule)."""
  return sampling.max_new_tokens if kind == env_lib.READING else sampling.max_answer_tokens


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A rendered prompt: the exact text and token ids a model is shown for one observation."""

  text: str
  ids: list[int]
  kind: str  # env_lib.READING or env_lib.ANSWERING (picks the token budget and stops)


class ChatEncoder:
  """Chat template + tokenisation + the head+tail cut: the prompt ids a model sees.

  One instance per policy, shared by sampling (`LMClient`) and SFT data (a teacher's
  responses rendered with the student's prompts), so training sees exactly the tokens
  evaluation shows. Counts what it cut.
  """

  def __init__(self, tokenizer, max_prompt_tokens: int):
    if max_prompt_tokens <= 0:
      raise ValueError(f"max_prompt_tokens must be positive, got {max_prompt_tokens}")
    self.tokenizer = tokenizer
    self.max_prompt_tokens = max_prompt_tokens
    self.truncated_prompts = 0
    self.prompts_encoded = 0
    self.max_prompt_len = 0  # longest prompt sent to the model (after any cut)
    self.max_raw_prompt_len = 0  # longest prompt rendered (before the cut)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = tokenizer.eos_token_id
    self.stop_ids = tuple(sorted({i for i in (eos, im_end) if isinstance(i, int) and i >= 0}))
    # The token that closes an assistant turn in the chat template: a rendered (teacher)
    # response ends with it, as a sampled one ends with the stop token the model emitted.
    self.end_of_turn = im_end if isinstance(im_end, int) and im_end >= 0 and im_end != getattr(
        tokenizer, "unk_token_id", None) else eos

  def encode(self, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """(prompt text, prompt ids) with the generation prompt; the middle is cut to fit."""
    text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
    cap = self.max_prompt_tokens
    self.prompts_encoded += 1
    self.max_raw_prompt_len = max(self.max_raw_prompt_len, len(ids))
    if len(ids) > cap:
      self.truncated_prompts += 1
      ids = ids[: cap // 2] + ids[len(ids) - (cap - cap // 2):]
    self.max_prompt_len = max(self.max_prompt_len, len(ids))
    return text, ids

  def response(self, text: str) -> tuple[str, list[int]]:
    """(text, ids) of a written (not sampled) response: its tokens plus the end-of-turn
    token; the text is the decoded ids, so text and tokens always agree."""
    ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
    if self.end_of_turn is not None:
      ids.append(int(self.end_of_turn))
    return self.tokenizer.decode(ids, skip_special_tokens=True), ids


class LMClient:
  """Batched completion with the jitted sampler; the parameters are given per call."""

  def __init__(self, model_config, tokenizer, sampling: SamplingConfig = SamplingConfig(),
               seed: int = 0):
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.sampling = sampling
    self.encoder = ChatEncoder(tokenizer, sampling.max_prompt_tokens)
    self.seed = seed
    self.calls = 0
    self.prompt_tokens = 0  # real prompt tokens sent (batch padding excluded)
    self.generated_tokens = 0  # tokens generated for real rows
    self.generate_seconds = 0.0  # wall time inside `generate` (prefill + decode + compiles)

  # The encoder's counters, under the names reports read.
  truncated_prompts = property(lambda self: self.encoder.truncated_prompts)
  prompts_encoded = property(lambda self: self.encoder.prompts_encoded)
  max_prompt_len = property(lambda self: self.encoder.max_prompt_len)
  max_raw_prompt_len = property(lambda self: self.encoder.max_raw_prompt_len)

  def encode_chat(self, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    return self.encoder.encode(messages)

  def complete(self, params, prompts: Sequence[Prompt], max_new_tokens: int,
               stop_strings: Sequence[str] = ()) -> list[Action]:
    """Samples one response per prompt with `params`; actions keep ids and log-probs."""
    from atommem_jax.models.sampler import generate  # the model stack loads only when used

    if not prompts:
      return []
    if params is None:
      raise ValueError("LMClient.complete: params is None (pass the model parameters to "
                       "RolloutEngine.run(..., params=...))")
    s = self.sampling
    start = time.perf_counter()
    out = generate(self.model_config, params, [p.ids for p in prompts],
                   max_new_tokens=max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                   top_p=s.top_p, stop_token_ids=self.encoder.stop_ids,
                   stop_strings=tuple(stop_strings), tokenizer=self.tokenizer,
                   seed=self.seed + self.calls)
    self.calls += 1
    tokens, lengths, logprobs = out.tokens, out.lengths, out.logprobs
    self.generate_seconds += time.perf_counter() - start
    self.prompt_tokens += sum(len(p.ids) for p in prompts)
    self.generated_tokens += int(lengths.sum())
    actions = []
    for r, p in enumerate(prompts):
      resp = tokens[r, : lengths[r]].tolist()
      actions.append(Action(
          text=self.tokenizer.decode(resp, skip_special_tokens=True), prompt_text=p.text,
          prompt_ids=list(p.ids), response_ids=resp, logprobs=logprobs[r, : lengths[r]].tolist()))
    return actions


class _LLMPolicyBase:
  """Renders observations to prompts and makes one batched model call per turn kind."""

  name = "llm"
  advance_rule = "atommem"

  def __init__(self, lm: LMClient):
    self.lm = lm

  def _script(self, o: Observation) -> str | None:
    """A scripted response for this observation, or None to ask the model."""
    return None

  def _chat(self, o: Observation) -> tuple[list[dict[str, str]], str]:
    """(chat messages, turn kind) for a model call; kind is "reading" or "answering"."""
    raise NotImplementedError

  def _interpret(self, o: Observation, action: Action) -> str | None:
    """Protocol text to apply instead of the model's text (static workflows), or None."""
    return None

  def render(self, o: Observation) -> Prompt:
    """The prompt this policy shows the model for `o` (no sampling): SFT renders a
    teacher's responses with it, so training sees exactly the tokens evaluation shows."""
    messages, kind = self._chat(o)
    text, ids = self.lm.encoder.encode(messages)
    return Prompt(text, ids, kind)

  def act(self, observations: Sequence[Observation], params=None) -> list[Action]:
    out: list[Action | None] = [None] * len(observations)
    groups: dict[str, list[tuple[int, Prompt]]] = {}
    for j, o in enumerate(observations):
      scripted = self._script(o)
      if scripted is not None:
        out[j] = Action(text=scripted, scripted=True)
        continue
      prompt = self.render(o)
      groups.setdefault(prompt.kind, []).append((j, prompt))
    s = self.lm.sampling
    for kind, items in groups.items():
      budget = response_budget(s, kind)
      stops = () if kind == env_lib.READING else _ANSWER_STOP
      acts = self.lm.complete(params, [p for _, p in items], budget, stops)
      for (j, _), a in zip(items, acts):
        a.applied = self._interpret(observations[j], a)
        out[j] = a
    return out  # type: ignore[return-value]


class RenderedTeacher:
  """A scripted teacher's responses with the token ids a student policy would see.

  The teacher (e.g. `oracle.ScriptedPolicy`) decides every response; the student renders
  each observation's prompt (`student.render`) and tokenises the response with its own
  tokenizer, so the trajectory is SFT data for the student: prompt ids exactly as
  evaluation shows them, response ids whose decoding is the response text.
  """

  def __init__(self, teacher, student: _LLMPolicyBase):
    self.teacher = teacher
    self.student = student
    self.name = teacher.name
    self.advance_rule = teacher.advance_rule

  def act(self, observations: Sequence[Observation], params=None) -> list[Action]:
    actions = self.teacher.act(observations, params)
    out = []
    for o, a in zip(observations, actions):
      prompt = self.student.render(o)
      text, ids = self.student.lm.encoder.response(a.text)
      # Should the tokenizer not give the text back exactly, the teacher's text is still
      # what the environment applies (and the record shows both).
      applied = a.applied if a.applied is not None else (a.text if text != a.text else None)
      out.append(dataclasses.replace(a, text=text, prompt_text=prompt.text, applied=applied,
                                     prompt_ids=list(prompt.ids), response_ids=ids, logprobs=[]))
    return out


def _clip(text: str, n: int) -> str:
  return text if len(text) <= n else text[: n - 3] + "..."


def _questions_block(o: Observation) -> str:
  return "\n".join(f"{i + 1}. {q}" for i, q in enumerate(o.episode.questions))


class AtomMemPolicy(_LLMPolicyBase):
  """The AtomMem agent: the model chooses every memory operation."""

  name = "atommem"

  def __init__(self, lm: LMClient, prompts: PromptSet | None = None, max_memory_chars: int = 1000,
               no_query_text: str = "No query set yet.",
               empty_memory_text: str = "No memory entries.", empty_scratchpad_text: str = "(empty)"):
    super().__init__(lm)
    self.prompts = prompts or PromptSet.load()
    self.max_memory_chars = max_memory_chars  # bounds each entry / the scratchpad in a prompt
    self.no_query_text = no_query_text  # shown before the first <update_query>
    self.empty_memory_text = empty_memory_text  # shown when the query retrieves nothing
    self.empty_scratchpad_text = empty_scratchpad_text

  def _chat(self, o: Observation):
    clip = lambda t: _clip(t, self.max_memory_chars)
    common = dict(scratchpad=clip(o.scratchpad) or self.empty_scratchpad_text,
                  query=o.query or self.no_query_text,
                  memories=protocol.format_memories([clip(m) for m in o.memories],
                                                    self.empty_memory_text),
                  query_times=o.query_times)
    if o.phase == env_lib.READING:
      return self.prompts.messages("step", dict(common, questions=_questions_block(o),
                                                chunk=o.chunk)), env_lib.READING
    return self.prompts.messages("final", dict(
        common, question=o.episode.questions[o.question_index],
        max_query_times=o.max_query_times)), env_lib.ANSWERING


class _AnswerFromContext(_LLMPolicyBase):
  """Shared answering turn of the baselines: one question, a context, a boxed answer."""

  def __init__(self, lm: LMClient, answer_template: str = "answer.txt"):
    super().__init__(lm)
    self.answer = load_template(answer_template, "answer")

  def _answer_chat(self, o: Observation, context: str):
    user = self.answer.substitute(question=o.episode.questions[o.question_index],
                                  context=context or "(nothing)")
    return [{"role": "user", "content": user}], env_lib.ANSWERING


class MemAgentPolicy(_AnswerFromContext):
  """Overwrite memory: rewrite the scratchpad every section; answer from it alone."""

  name = "memagent"
  advance_rule = "every_step"

  def __init__(self, lm: LMClient, system: str = "memagent_system.txt",
               step: str = "memagent_step.txt", answer_template: str = "answer.txt"):
    super().__init__(lm, answer_template)
    self.system = load_template(system, "system")
    self.step = load_template(step, "step")

  def _chat(self, o: Observation):
    if o.phase == env_lib.READING:
      user = self.step.substitute(questions=_questions_block(o), scratchpad=o.scratchpad or "(empty)",
                                  chunk=o.chunk)
      return ([{"role": "system", "content": self.system.substitute()},
               {"role": "user", "content": user}], env_lib.READING)
    return self._answer_chat(o, o.scratchpad)

  def _interpret(self, o: Observation, action: Action) -> str | None:
    if o.phase != env_lib.READING:
      return None
    parsed = protocol.parse(action.text)
    notes = next((op.text for op in parsed.ops if op.kind == protocol.SCRATCHPAD), None)
    if notes is None:  # the model ignored the tag: its whole reply is the new memory
      # (minus any tag markup left by a malformed reply, e.g. an unclosed <update_memory>)
      notes = protocol.strip_tags(parsed.free_text) or o.scratchpad
    if not notes:
      return None
    return protocol.render([protocol.Op(protocol.SCRATCHPAD, notes)], max_chars=None)


class _RetrieveThenAnswer(_AnswerFromContext):
  """Answering phase of the static workflows: query = the question, then answer once."""

  advance_rule = "every_step"

  def _script(self, o: Observation) -> str | None:
    if o.phase == env_lib.ANSWERING:
      question = o.episode.questions[o.question_index]
      if o.query != question:
        return protocol.render([protocol.Op(protocol.READ, question)], max_chars=None)
    return self._read_script(o)

  def _read_script(self, o: Observation) -> str | None:
    return None

  def _reading_chat(self, o: Observation):
    raise NotImplementedError(f"{type(self).__name__} scripts every reading turn")

  def _chat(self, o: Observation):
    if o.phase == env_lib.ANSWERING:
      return self._answer_chat(o, "\n\n".join(o.memories))
    return self._reading_chat(o)


class RAGPolicy(_RetrieveThenAnswer):
  """Every section is stored verbatim; the model is called once per question."""

  name = "rag"
  max_op_chars = None  # whole sections are stored

  def _read_script(self, o: Observation) -> str | None:
    if o.phase != env_lib.READING:
      return None
    text = o.chunk.strip() or "(empty section)"
    return protocol.render([protocol.Op(protocol.CREATE, text)], max_chars=None)


class StaticSummaryPolicy(_RetrieveThenAnswer):
  """The model summarises each section into a new entry; no other memory decisions."""

  name = "static_summary"

  def __init__(self, lm: LMClient, answer_template: str = "answer.txt",
               summary_template: str = "summary.txt"):
    super().__init__(lm, answer_template)
    self.summary = load_template(summary_template, "summary")

  def _reading_chat(self, o: Observation):
    user = self.summary.substitute(questions=_questions_block(o), chunk=o.chunk)
    return [{"role": "user", "content": user}], env_lib.READING

  def _interpret(self, o: Observation, action: Action) -> str | None:
    if o.phase != env_lib.READING:
      return None
    notes = protocol.parse(action.text).free_text.strip() or action.text.strip() or "(no notes)"
    notes = notes.replace("<", "(").replace(">", ")")  # a note is content, never a tag
    return protocol.render([protocol.Op(protocol.CREATE, notes)], max_chars=None)


def full_context(lm: LMClient, episodes: Sequence[env_lib.Episode], score_fn=None,
                 max_context_tokens: int | None = None, answer_template: str = "answer.txt",
                 *, params) -> list[Trajectory]:
  """The no-memory baseline: the whole document in one prompt, cut to the model window.

  The middle of an over-long document is dropped (head and tail kept), as the official
  data pipeline's center truncation does. Answers are extracted as in the environment
  (`environment.answer_of`), the same rule as every other method.
  """
  template = load_template(answer_template, "answer")
  cap = max_context_tokens or max(256, lm.sampling.max_prompt_tokens - 512)
  prompts = []
  for e in episodes:
    ids = lm.tokenizer(e.document, add_special_tokens=False)["input_ids"]
    if len(ids) > cap:
      ids = ids[: cap // 2] + ids[len(ids) - (cap - cap // 2):]
    doc = lm.tokenizer.decode(ids, skip_special_tokens=True)
    for qi, q in enumerate(e.questions):
      chat = [{"role": "user", "content": template.substitute(question=q, context=doc)}]
      text, prompt_ids = lm.encoder.encode(chat)
      prompts.append(Prompt(text, prompt_ids, env_lib.ANSWERING))
  actions = lm.complete(params, prompts, lm.sampling.max_answer_tokens, _ANSWER_STOP)
  out, k = [], 0
  for e in episodes:
    steps, answers = [], []
    for qi in range(len(e.questions)):
      a = actions[k]
      k += 1
      parsed = protocol.parse(a.text)
      answer, untagged = env_lib.answer_of(parsed)
      answers.append(answer)
      steps.append(StepRecord(index=qi, phase=env_lib.ANSWERING, chunk=0, question=qi,
                              prompt_text=a.prompt_text, response_text=a.text,
                              prompt_ids=a.prompt_ids, response_ids=a.response_ids,
                              response_logprobs=a.logprobs, answer=answer,
                              parse_errors=[str(x) for x in parsed.errors],
                              events={"answered": qi if answer is not None else None,
                                      "untagged_answer": untagged}))
    scores = {}
    if score_fn is not None:
      per_q = [score_fn(a or "", g) for a, g in zip(answers, e.golds)]
      scores = {m: float(np.mean([s[m] for s in per_q])) for m in per_q[0]}
    out.append(Trajectory(episode_id=e.episode_id, method="full_context",
                          questions=list(e.questions), golds=[list(g) for g in e.golds],
                          answers=answers, steps=steps, scores=scores,
                          op_counts={"steps": len(steps), "untagged_answers": sum(
                              bool(st.events["untagged_answer"]) for st in steps)},
                          meta=dict(e.meta)))
  return out
