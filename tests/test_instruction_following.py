"""IFEval hard-constraint verifiers: our argument binding and loose variants against the package's own
evaluation (`if_verifiable.common.evaluate_instructions`), hand-checked sentence/capital counts with
no network, deterministic language detection, and failures that score 0 and are counted."""

import socket

import pytest

from if_verifiable.common import evaluate_instructions
from if_verifiable.ifeval import instructions_util
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from selfrl_jax.rewards import instruction_following as itf
from selfrl_jax.rewards.instruction_following import Constraint, ConstraintError, check_constraint

# (instruction id, kwargs, [tricky responses]) — every one of the 25 IFEval ids. The cases sit on the
# edges §3.1 of ssrl_if.md lists: `***` splits with an empty middle piece, `-` bullets, double
# highlights, quotation length, JSON in fences, markdown a loose variant strips, first/last lines.
TABLE = [
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     ["THE END is NEAR.", "The END is near.", "**NOTE**: only ONE here", "I AM HERE"]),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "less than"},
     ["ONE TWO three", "ONE TWO THREE", "U.S.A. and NASA and UK"]),
    ("change_case:english_capital", {}, ["THIS IS ALL IN CAPITALS, WRITTEN IN ENGLISH FOR YOU.",
                                         "THIS IS ALMOST all capitals in english.", "Sure!\nTHE ANSWER IS YES, IN ENGLISH."]),
    ("change_case:english_lowercase", {}, ["this is all lowercase english text about the weather today.",
                                           "this is mostly lowercase but Not all.", "Here you go:\nall lowercase english text here."]),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about the sea."},
     ["Write a poem about the sea. The sea is wide.", "write a poem about the sea. waves.",
      "Sure! Write a poem about the sea. Waves.", "Sure!\nWrite a poem about the sea. Waves."]),
    ("combination:two_responses", {}, ["First answer.\n******\nSecond answer.", "Same.\n******\nSame.",
                                       "One.\n******\n\n******\nTwo.", "Only one response here."]),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     ["Send it to [address] by [date].", "Only [one] here.", "Empty [] and [x]."]),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     ["Body.\nP.S. See you.", "Body. p.s. lower case inline", "Body.\n  P.S. indented", "Body.\nPS no dots"]),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, ["Body.\nP.P.S more", "Body.\nP.S. only"]),
    ("detectable_format:constrained_response", {}, ["My answer is yes.", "I think my answer is maybe.",
                                                    "My answer is probably yes."]),
    ("detectable_format:json_format", {}, ['{"a": 1}', '```json\n{"a": 1}\n```', '```\n[1, 2]\n```',
                                           'Here: {"a": 1}', "Sure:\n```json\n{\"a\": 1}\n```"]),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     ["Section 1\nIntro.\nSection 2\nBody.", "SECTION 1 a SECTION 2 b", "Section 1\nOnly one."]),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     ["* one\n* two", "- one\n- two", "* one\n- two\n* three", "*one\n*two", "  * one\n  * two"]),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     ["*one* and *two*", "**bold** and *it*", "*one* and **", "* not * a highlight *x*", "*multi\nline* *y*"]),
    ("detectable_format:title", {}, ["<<My Title>>\nText", "<<>> empty", "<<split\ntitle>>", "no title"]),
    ("keywords:existence", {"keywords": ["Paris", "river"]}, ["paris by the RIVER", "Paris only", "Parisian riverside"]),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "evil"]},
     ["All good here.", "This is BAD.", "badly done but not evil-ish", "badge and medieval"]),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     ["cat cat", "Cat and CAT", "concatenate cat", "one cat"]),
    ("keywords:frequency", {"keyword": "dog", "frequency": 2, "relation": "less than"}, ["dog", "dog dog", "no pets"]),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     ["Zig zag zoo", "zz", "ZZZ"]),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 2, "let_relation": "less than"}, ["a b c", "A a", "xyz"]),
    ("language:response_language", {"language": "de"},
     ["Das ist ein kurzer deutscher Satz über das Wetter heute.", "This is an English sentence about the weather.",
      "12345 !!!"]),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     ["First para.\n\nThen second.", "First.\n\n\"Then,\" he said.", "First.\n\nNow second.",
      "One.\n\nThen two.\n\nThree."]),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     ["Para one.\n***\nPara two.", "One.\n * * * \nTwo.", "One.\n***\n\n***\nTwo.", "***\nOne.\n***\nTwo.\n***",
      "One.\n\nTwo."]),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     ["Dr. Smith arrived at 5 p.m. on Monday. He left.", "One. Two. Three.", "Mr. and Mrs. Jones went to Washington D.C. today."]),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     ["Is it? Yes!", "e.g. this is one sentence.", "Wait... then what happened. Nothing."]),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     ["one two three four five", "don't stop-believing now ok", "1 2 3 4"]),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, ["two words", "three whole words"]),
    ("punctuation:no_comma", {}, ["No commas here.", "One, comma.", "Fullwidth comma ， is not ASCII"]),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     ["Done. Any other questions?", "Done. any other questions?  \n", "Done. \"Any other questions?\"",
      "Any other questions? Thanks."]),
    ("startend:quotation", {}, ["\"Quoted answer.\"", "\"", "  \"spaced\"  ", "'single'", "Sure:\n\"quoted\""]),
]


def _package_verdicts(instruction_id, kwargs, response, prompt):
  """(strict, loose) as if-verifiable's own evaluation computes them."""
  results, _ = evaluate_instructions(response, [instruction_id], [kwargs], prompt, INSTRUCTION_DICT)
  return (results[0].strict_pass, results[0].loose_pass) if results else (False, False)


def test_the_table_covers_every_instruction_id():
  assert {row[0] for row in TABLE} == set(itf.INSTRUCTION_IDS) and len(itf.INSTRUCTION_IDS) == 25


@pytest.mark.parametrize("instruction_id,kwargs,responses", TABLE, ids=[f"{r[0]}-{i}" for i, r in enumerate(TABLE)])
def test_verdicts_equal_the_package_evaluation(instruction_id, kwargs, responses):
  prompt = "Write a poem about the sea."
  for response in responses:
    ours = (check_constraint(instruction_id, kwargs, response, prompt),
            check_constraint(instruction_id, kwargs, response, prompt, loose=True))
    assert ours == _package_verdicts(instruction_id, kwargs, response, prompt), response


def test_the_table_is_not_trivial():
  """Each id's responses include a pass and a fail (strict or loose), so agreement means something."""
  for instruction_id in itf.INSTRUCTION_IDS:
    verdicts = {check_constraint(i, kw, r, "Write a poem about the sea.", loose)
                for i, kw, rs in TABLE if i == instruction_id for r in rs for loose in (False, True)}
    assert verdicts == {True, False}, instruction_id


def test_sentence_and_capital_counts_offline(monkeypatch):
  """The two Punkt checkers give hand-counted answers with every network connection refused."""
  def refuse(*args, **kwargs):
    raise OSError("network disabled in this test")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  instructions_util._get_sentence_tokenizer.cache_clear()  # pylint: disable=protected-access
  # Punkt knows "Dr." and "p.m." are not sentence ends (a regex splitter on ". " would count 4).
  assert instructions_util.count_sentences("Dr. Smith arrived at 5 p.m. on Monday. He left.") == 2
  assert instructions_util.count_sentences("One. Two. Three.") == 3
  assert instructions_util.count_sentences("Is it? Yes! Fine.") == 3
  less_than_3 = {"num_sentences": 3, "relation": "less than"}
  assert check_constraint("length_constraints:number_sentences", less_than_3, "Dr. Smith came. He left.")
  assert not check_constraint("length_constraints:number_sentences", less_than_3, "It rained. We stayed in. The end.")
  at_least_2 = {"capital_frequency": 2, "capital_relation": "at least"}
  assert check_constraint("change_case:capital_word_frequency", at_least_2, "THE END is NEAR.")  # THE, END, NEAR
  assert not check_constraint("change_case:capital_word_frequency", at_least_2, "The END is near.")


def test_none_arguments_are_dropped_and_missing_ones_refused():
  # A None the released SSRL-IF code passes through would make IFEval draw a random threshold.
  kwargs = {"num_sentences": 3, "relation": "less than", "keywords": None, "num_words": None}
  assert check_constraint("length_constraints:number_sentences", kwargs, "One. Two.")
  with pytest.raises(ConstraintError, match="number_words: argument relation is missing or None"):
    itf.validate_constraint("length_constraints:number_words", {"num_words": 300, "relation": None})
  with pytest.raises(ConstraintError, match=r"keywords:existence: no argument keyword \(it takes keywords\)"):
    itf.validate_constraint("keywords:existence", {"keyword": ["x"]})
  with pytest.raises(ConstraintError, match="unknown instruction id 'keywords:exists'"):
    itf.validate_constraint("keywords:exists", {})
  with pytest.raises(ConstraintError, match="keywords:frequency with .*about"):
    itf.validate_constraint("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "about"})


def test_ifeval_rows_are_valid_except_the_two_random_letters(shared_data):
  """Two IFEval rows ask for the 'letter' '#' and '!': IFEval's checker swaps each for a random
  letter on every build. Ours builds them the same way every time; data validation refuses them."""
  from selfrl_jax.data.benchmarks import load_ifeval
  from selfrl_jax.data.records import record_meta
  records = load_ifeval(root=str(shared_data))
  assert len(records) == 541
  refused = []
  for rec in records:
    meta = record_meta(rec)
    for instruction_id, kwargs in zip(meta["instruction_id_list"], meta["kwargs"]):
      try:
        itf.validate_constraint(instruction_id, kwargs)
      except ConstraintError as e:
        refused.append((meta["key"], str(e)))
  assert [(k, e.split(":", 2)[2].strip()[:43]) for k, e in refused] == [
      (1122, "the checker does not accept {'letter': '#'}"), (1129, "the checker does not accept {'letter': '!'}")]
  letter = {"letter": "#", "let_frequency": 4, "let_relation": "at least"}
  text = "eeee ffff gggg " * 3
  assert len({check_constraint("keywords:letter_frequency", letter, text) for _ in range(20)}) == 1


def test_language_detection_is_deterministic():
  text = "Ciao, come stai? Bene grazie, e tu? Oggi fa bello."  # short mixed text: langdetect may waver
  verdicts = {check_constraint("language:response_language", {"language": "it"}, text) for _ in range(30)}
  assert len(verdicts) == 1


def test_empty_and_non_utf8_responses():
  assert not check_constraint("punctuation:no_comma", {}, "")
  assert not check_constraint("punctuation:no_comma", {}, "   \n", loose=True)
  assert check_constraint("punctuation:no_comma", {}, b"caf\xe9 ok")  # invalid UTF-8: U+FFFD, still checked
  assert not check_constraint("punctuation:no_comma", {}, b"caf\xe9, no")


def test_pool_scores_failures_zero_and_counts_them():
  good = Constraint("punctuation:no_comma", {})
  broken = Constraint("keywords:frequency", {"keyword": "x", "frequency": 1, "relation": "about"})
  with itf.InstructionVerifier(num_workers=1, timeout_s=10.0) as verifier:
    got = verifier.check(["fine", "fine", "a, b"], [good, broken, good])
    assert got == [True, False, False]
    assert verifier.counters["errors"] == 1 and verifier.counters["items"] == 3
