"""AtomMem protocol: tolerant parsing, typed errors, exact render/parse round trip, fuzz."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atommem_jax import protocol
from atommem_jax.protocol import ErrorKind, Op, ParsedStep, parse, render

E = ErrorKind


def kinds(step: ParsedStep) -> list[ErrorKind]:
  return [e.kind for e in step.errors]


# --- Tolerance cases. -------------------------------------------------------------------
def test_clean_step_with_every_tag():
  text = ("<update_memory>Q1: find the director.</update_memory>\n"
          "<add_memory>Film X was directed by Ann Lee.</add_memory>\n"
          "<modify_memory>Memory 2: Ann Lee was born in Oslo.</modify_memory>\n"
          "<delete_memory>Memory 4</delete_memory>\n"
          "<update_query>Ann Lee birthplace</update_query>\n"
          "<final_answer>\\boxed{Oslo}</final_answer>")
  s = parse(text)
  assert s.errors == () and s.ok and s.free_text == ""
  assert s.ops == (Op("scratchpad", "Q1: find the director."),
                   Op("create", "Film X was directed by Ann Lee."),
                   Op("update", "Ann Lee was born in Oslo.", 2), Op("delete", "", 4),
                   Op("read", "Ann Lee birthplace"))
  assert s.answer == "Oslo"


def test_prose_whitespace_and_tag_case():
  s = parse("Let me think.\n< Add_Memory >\n  fact one \n</ADD_MEMORY>  and then\n"
            "<UPDATE_QUERY>\n\tq\n</update_query> done.")
  assert s.ops == (Op("create", "fact one"), Op("read", "q"))
  assert s.free_text == "Let me think.\nand then\ndone."
  assert s.errors == ()


@pytest.mark.parametrize("body,expected", [
    ("Memory 3: x", 3), ("Memory 3 : x", 3), ("memory 3 - x", 3), ("MEMORY 3: x", 3),
    ("Memory #3: x", 3), ("[Memory 3]: x", 3), ("  Memory  12 :\n x", 12), ("Memory 3 \u2014 x", 3),
])
def test_memory_index_variants(body, expected):
  s = parse(f"<modify_memory>{body}</modify_memory>")
  assert s.ops == (Op("update", "x", expected),) and s.errors == ()


def test_delete_variants_and_trailing_commentary():
  s = parse("<delete_memory>memory 2 :</delete_memory><delete_memory> Memory 5 (dup)</delete_memory>")
  assert s.ops == (Op("delete", "", 2), Op("delete", "", 5)) and s.errors == ()
  # Commentary that mentions another entry deletes only the first one.
  s = parse("<delete_memory>Memory 2: superseded by Memory 3</delete_memory>")
  assert s.ops == (Op("delete", "", 2),) and s.errors == ()


def test_delete_listing_several_entries_deletes_each():
  s = parse("<delete_memory>Memory 2, memory 5 and Memory #7.</delete_memory>")
  assert s.ops == (Op("delete", "", 2), Op("delete", "", 5), Op("delete", "", 7))
  assert s.errors == ()
  s = parse("<delete_memory>Memory 2, Memory 0</delete_memory>")
  assert s.ops == (Op("delete", "", 2),) and kinds(s) == [E.MALFORMED_INDEX]


def test_huge_memory_index_is_malformed_not_a_crash():
  # int() of a > 4,300-digit string raises in Python >= 3.11; parse must not.
  for max_chars in (None, 10_000):
    s = parse("<delete_memory>Memory " + "1" * 5000 + "</delete_memory>", max_chars=max_chars)
    assert s.ops == () and kinds(s) == [E.MALFORMED_INDEX]
  s = parse("<modify_memory>Memory 1234567890: x</modify_memory>")
  assert kinds(s) == [E.MALFORMED_INDEX]


@pytest.mark.parametrize("body,kind", [
    ("fix: x", E.MISSING_INDEX), ("3: x", E.MISSING_INDEX), ("Memory x: y", E.MALFORMED_INDEX),
    ("Memory 0: y", E.MALFORMED_INDEX), ("Memory -1: y", E.MALFORMED_INDEX),
    ("Memory: y", E.MALFORMED_INDEX), ("Memory 2:   ", E.EMPTY_CONTENT),
])
def test_bad_memory_index_is_a_typed_error_and_the_op_is_dropped(body, kind):
  s = parse(f"ok <modify_memory>{body}</modify_memory> <add_memory>kept</add_memory>")
  assert s.ops == (Op("create", "kept"),)
  assert kinds(s) == [kind] and s.errors[0].tag == "modify_memory" and s.errors[0].position == 3


def test_think_blocks_are_skipped():
  s = parse("<think>maybe <add_memory>no</add_memory> \\boxed{1}</think>"
            "<add_memory>yes</add_memory><final_answer>2</final_answer>")
  assert s.ops == (Op("create", "yes"),) and s.answer == "2" and s.errors == ()
  # A lone </think> (template opened it in the prompt): the text before it is reasoning.
  s = parse("reasoning <add_memory>no</add_memory></think><add_memory>yes</add_memory>")
  assert s.ops == (Op("create", "yes"),) and s.errors == ()
  # Truncated reasoning: an error, and nothing inside is applied.
  s = parse("<add_memory>a</add_memory><think>so <add_memory>b</add_memory>")
  assert s.ops == (Op("create", "a"),) and kinds(s) == [E.UNCLOSED_TAG]


@pytest.mark.parametrize("body,answer", [
    ("\\boxed{Oslo}", "Oslo"), ("The answer is \\boxed{ Oslo } .", "Oslo"),
    ("\\boxed{f(x)=\\frac{1}{2}}", "f(x)=\\frac{1}{2}"), ("\\boxed{{a}{b{c}}}", "{a}{b{c}}"),
    ("  Oslo, Norway\n", "Oslo, Norway"), ("\\\\boxed{double escaped}", "double escaped"),
    ("\\boxed {spaced}", "spaced"),
])
def test_answers(body, answer):
  s = parse(f"<final_answer>{body}</final_answer>")
  assert s.answer == answer and s.errors == ()


def test_answer_errors():
  s = parse("<final_answer>\\boxed{a{b}</final_answer>")
  assert s.answer == "a{b}" and kinds(s) == [E.MALFORMED_ANSWER]
  s = parse("<final_answer> </final_answer>")
  assert s.answer == "" and kinds(s) == [E.EMPTY_CONTENT]
  s = parse("<final_answer>1</final_answer><final_answer>2</final_answer>")
  assert s.answer == "1" and kinds(s) == [E.EXTRA_ANSWER]
  assert parse("no answer here").answer is None


def test_structural_errors_carry_position_and_context():
  text = "<add_memory>open <update_query>q</update_query></add_memory><remember>x</remember>"
  s = parse(text)
  assert s.ops == (Op("read", "q"),)
  assert kinds(s) == [E.UNCLOSED_TAG, E.UNMATCHED_CLOSE, E.UNKNOWN_TAG, E.UNKNOWN_TAG]
  first = s.errors[0]
  assert first.position == 0 and first.tag == "add_memory" and "open" in first.context
  assert text[s.errors[1].position:].startswith("</add_memory>")
  assert "unclosed_tag" in str(first)
  assert s.error_counts()["unknown_tag"] == 2


def test_empty_and_over_length_content():
  s = parse("<add_memory>  </add_memory><update_memory></update_memory>")
  assert s.ops == () and kinds(s) == [E.EMPTY_CONTENT, E.EMPTY_CONTENT]
  s = parse("<add_memory>" + "x" * 11 + "</add_memory>", max_chars=10)
  assert s.ops == () and kinds(s) == [E.OVER_LENGTH]
  assert parse("<add_memory>" + "x" * 11 + "</add_memory>", max_chars=None).ops[0].text == "x" * 11


def test_non_string_input_does_not_raise():
  assert parse(None).ops == () and parse(12).free_text == "12"
  assert parse(b"<add_memory>x\xff</add_memory>").ops == (Op("create", "x\ufffd"),)


def test_render_canonical_and_format_memories():
  out = render([Op("scratchpad", "s"), Op("update", "t", 2), Op("delete", "", 1)], answer="42")
  assert out == ("<update_memory>s</update_memory>\n<modify_memory>Memory 2: t</modify_memory>\n"
                 "<delete_memory>Memory 1</delete_memory>\n<final_answer>\\boxed{42}</final_answer>")
  assert protocol.render_response is render
  assert protocol.format_memories(["a", "b"]) == "Memory 1: a\nMemory 2: b"
  assert protocol.format_memories([], empty="(none)") == "(none)"


@pytest.mark.parametrize("ops,answer,match", [
    ([Op("create", "")], None, "does not round-trip"),
    ([Op("create", " padded")], None, "does not round-trip"),
    ([Op("create", "a <add_memory>b")], None, "does not round-trip"),
    ([Op("update", "x", 0)], None, "does not round-trip"),
    ([], "a}b{", "answer"),
])
def test_render_rejects_what_would_not_round_trip(ops, answer, match):
  with pytest.raises(ValueError, match=match):
    render(ops, answer)


def test_op_validates_kind_and_id():
  with pytest.raises(ValueError, match="kind"):
    Op("remember", "x")
  with pytest.raises(ValueError, match="id"):
    Op("update", "x")
  with pytest.raises(ValueError, match="id"):
    Op("create", "x", 3)


# --- Property tests. --------------------------------------------------------------------
# Clean content: no '<' (no tags), stripped, non-empty. Braces appear only balanced.
_CHARS = st.characters(blacklist_characters="<{}", blacklist_categories=("Cs",))
_text = st.text(_CHARS, min_size=1, max_size=60).map(str.strip).filter(bool)
_balanced = st.recursive(st.text(_CHARS, max_size=8),
                         lambda inner: st.tuples(inner, inner, inner).map(
                             lambda t: f"{t[0]}{{{t[1]}}}{t[2]}"), max_leaves=6)
_answer = _balanced.map(str.strip).filter(bool)


@st.composite
def _op(draw):
  kind = draw(st.sampled_from(protocol.OP_KINDS))
  if kind == "delete":
    return Op(kind, "", draw(st.integers(1, 10**6)))
  return Op(kind, draw(_text), draw(st.integers(1, 10**6)) if kind == "update" else None)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(_op(), max_size=8), answer=st.none() | _answer,
       sep=st.sampled_from(["\n", "", " ", "\n\n"]))
def test_render_parse_round_trip(ops, answer, sep):
  s = parse(render(ops, answer, separator=sep))
  assert s.ops == tuple(ops) and s.answer == answer and s.errors == () and s.free_text == ""


_TAG_BITS = ["<", ">", "</", "/", "{", "}", "\\boxed{", "Memory ", "memory 1:", ":", "-", " ",
             "\n"] + [f"<{t}>" for t in protocol.KNOWN_TAGS | {"think"}] + \
    [f"</{t}>" for t in protocol.KNOWN_TAGS | {"think"}] + ["< add_memory >", "</ Think>", "<foo>",
                                                              "9" * 12, ", Memory 2", " and memory #3"]
_adversarial = st.lists(st.sampled_from(_TAG_BITS) | st.text(max_size=5), max_size=40).map("".join)


def _check_invariants(text, s):
  assert isinstance(s, ParsedStep)
  for op in s.ops:
    assert op.kind in protocol.OP_KINDS
    assert (op.id is not None and op.id >= 1) == (op.kind in ("update", "delete"))
    assert op.kind == "delete" or op.text
  for e in s.errors:
    assert isinstance(e.kind, ErrorKind) and 0 <= e.position <= len(text)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=200) | _adversarial)
def test_fuzz_random_and_adversarial_never_raises(text):
  _check_invariants(text, parse(text))


def _mutate(rng: random.Random, text: str) -> str:
  chars = list(text)
  for _ in range(rng.randint(1, 6)):
    pos = rng.randint(0, len(chars))
    r = rng.random()
    if r < 0.4 and chars:
      del chars[min(pos, len(chars) - 1)]
    elif r < 0.8:
      chars.insert(pos, rng.choice("<>/{}\\:- \nMm0123456789_"))
    else:
      chars[pos:pos] = list(rng.choice(_TAG_BITS))
  return "".join(chars)


_VALID = [render([Op("scratchpad", "s1"), Op("create", "Film X by Ann"), Op("update", "new {x}", 2),
                  Op("delete", "", 3), Op("read", "Ann birthplace")], answer="f{x}"),
          "<think>hmm</think>" + render([Op("create", "a")], answer="b")]


def _fuzz(n: int, seed: int) -> None:
  rng = random.Random(seed)
  for i in range(n):
    r = i % 3
    if r == 0:
      text = _mutate(rng, rng.choice(_VALID))
    elif r == 1:
      text = "".join(rng.choice(_TAG_BITS) for _ in range(rng.randint(0, 30)))
    else:
      text = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 80)))
    _check_invariants(text, parse(text))
    if i % 10 == 0:  # no length cap (RAG stores whole sections): long digit runs etc.
      _check_invariants(text, parse(text, max_chars=None))


def test_fuzz_mutated_valid_outputs_never_raise():
  _fuzz(3000, seed=0)


def test_fuzz_100k_never_raises():  # the acceptance run: ~3 s, so it runs in CI
  _fuzz(100_000, seed=1)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=400) | _adversarial | st.sampled_from(_VALID).map(
    lambda v: v[:len(v) // 2]) | st.builds(lambda a, b: a + b, _adversarial, st.text(max_size=50)))
def test_fuzz_hypothesis_20k_never_raises(text):
  _check_invariants(text, parse(text))


def test_pathological_inputs():
  # Inputs that would make a backtracking regex quadratic; the parser stays linear.
  s = parse("<final_answer>" + "\\" * 4000 + "</final_answer>", max_chars=None)
  assert s.answer == "\\" * 4000
  s = parse("<modify_memory>" + " " * 4000 + "[" + " " * 4000 + "x</modify_memory>")
  assert kinds(s) == [E.MISSING_INDEX]
  assert kinds(parse("<add_memory>" * 3000)) == [E.UNCLOSED_TAG] * 3000
  s = parse("<foo>" * 5000 + "<add_memory>x</add_memory>")
  assert s.ops == (Op("create", "x"),) and len(s.errors) == 5000
  assert kinds(parse("<think>" * 3000)) == [E.UNCLOSED_TAG]


@pytest.mark.parametrize("text,expected", [
    ("<update_memory><update_memory>Ham, London. The Cup", "Ham, London. The Cup"),
    ("notes <foo>x</foo> and <final_answer>\\boxed{A", "notes x and \\boxed{A"),
    ("plain text", "plain text"),
])
def test_strip_tags_leaves_text_that_renders_as_a_scratchpad(text, expected):
  out = protocol.strip_tags(text)
  assert out == expected
  assert parse(render([Op(protocol.SCRATCHPAD, out)], max_chars=None)).ops == (
      Op(protocol.SCRATCHPAD, out),)


def test_memagent_keeps_a_malformed_reply_as_plain_notes_not_a_crash():
  """A MemAgent reply with an unclosed <update_memory> (seen from a trained SmolLM2) used to
  crash the run when its free text, tags included, was rendered as the new scratchpad."""
  from atommem_jax.agent import environment as env_lib
  from atommem_jax.agent import policies
  from atommem_jax.agent.rollout import Action, Observation

  ep = env_lib.Episode(episode_id="e", questions=("q?",), golds=(("a",),), document="d")
  o = Observation(episode=ep, sample=0, phase=env_lib.READING, chunk_index=0, num_chunks=1,
                  chunk="d", question_index=0, scratchpad="old", query=None, memories=(),
                  query_times=0, max_query_times=3)
  policy = policies.MemAgentPolicy.__new__(policies.MemAgentPolicy)  # no model needed here
  applied = policy._interpret(o, Action(text="<update_memory><update_memory>Ham, London"))
  assert parse(applied).ops == (Op(protocol.SCRATCHPAD, "Ham, London"),)
