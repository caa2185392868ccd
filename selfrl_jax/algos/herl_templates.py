"""HeRL's hindsight-experience prompt h = Template(x, draft y, met, unmet) (herl.md §2 eq. 3, §3).

Token in / token out: `HindsightTemplate.ids` builds h from the token ids of the prompt x and the
draft y already in the rollout buffer plus the ids of the template's own text, so the draft is never
decoded and re-encoded. `HindsightTemplate.text` renders the same prompt as a string, the reference
the tests re-tokenise (both give the same ids whenever the tokenizer does not merge across the
template's boundaries; the character tokenizer never does).

    h = [head] + strip_special(x) + [mid(met, unmet)] + strip_stop(y) + [tail(met)]

Kinds (`herl.template`):
- `constraint`: the released template ([C], used for both IF and medical): a role line,
  `[Instruction]` with the prompt (special tokens removed, chat-role words kept), `[Candidate]` with
  `Satisfied:` / `Unmet:` lists of "i. description" (or "none"), `Draft:` and the closing line.
- `flags` (the CPU toy, §10): `x <sep> y <sep> f_1..f_K <fix>`, one flag per rubric item (`o` met,
  `x` unmet), the revision marker the warm start teaches.

Diagnosis (`herl.diagnosis`): `full` (met / unmet lists or flags) or `naive` (the NaiveHE ablation:
the draft only, no diagnosis; its exact form is not released — herl.md §6 — so this is our reading:
the same template with the met / unmet block removed and a closing line that names no constraint).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from selfrl_jax.models.tokenizers import Tokenizer

ROLE_LINE = ("You are an assistant that revises drafts: keep every constraint that is already satisfied, "
             "repair the unsatisfied ones, and do not introduce new facts.")
CLOSING = "Output only the revised answer, fixing the unmet constraints while keeping the satisfied ones."
NAIVE_CLOSING = "Output only the revised answer."
KINDS = ("constraint", "flags")
DIAGNOSES = ("full", "naive")
FLAG_MET, FLAG_UNMET = "o", "x"


def _listing(items: Sequence[tuple[int, str]]) -> str:
  return ", ".join(f"{i}. {d}" for i, d in items) or "none"


@dataclasses.dataclass(frozen=True)
class HindsightTemplate:
  """Builds h for one (prompt, draft, verdicts).

  Attributes:
    kind: "constraint" | "flags".
    diagnosis: "full" | "naive".
  """

  kind: str = "constraint"
  diagnosis: str = "full"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"herl.template must be one of {KINDS}, got {self.kind!r}.")
    if self.diagnosis not in DIAGNOSES:
      raise ValueError(f"herl.diagnosis must be one of {DIAGNOSES}, got {self.diagnosis!r}.")

  def pieces(self, met: Sequence[bool], descriptions: Sequence[str]) -> tuple[str, str, str]:
    """(head, mid, tail): h = head + instruction + mid + draft + tail.

    Args:
      met: verdict of each valid rubric item, in rubric order.
      descriptions: what each item asks for (same length as `met`).
    """
    if len(met) != len(descriptions):
      raise ValueError(f"HindsightTemplate: {len(met)} verdicts for {len(descriptions)} items.")
    if self.kind == "flags":
      flags = "".join(FLAG_MET if m else FLAG_UNMET for m in met)
      return "", "<sep>", ("<sep>" + flags if self.diagnosis == "full" else "") + "<fix>"
    head = f"{ROLE_LINE}\n[Instruction]\n"
    if self.diagnosis == "naive":
      return head, "\n[Candidate]\nDraft:\n", f"\n{NAIVE_CLOSING}"
    numbered = list(enumerate(descriptions, 1))
    sat = _listing([(i, d) for (i, d), m in zip(numbered, met) if m])
    unmet = _listing([(i, d) for (i, d), m in zip(numbered, met) if not m])
    return head, f"\n[Candidate]\nSatisfied: {sat}\nUnmet: {unmet}\nDraft:\n", f"\n{CLOSING}"

  def text(self, instruction: str, draft: str, met: Sequence[bool], descriptions: Sequence[str]) -> str:
    """h as a string (the re-tokenisation reference)."""
    head, mid, tail = self.pieces(met, descriptions)
    return head + instruction + mid + draft + tail

  def ids(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], draft_ids: Sequence[int],
          met: Sequence[bool], descriptions: Sequence[str]) -> list[int]:
    """h as token ids: the prompt without special tokens, the draft without its stop token."""
    head, mid, tail = self.pieces(met, descriptions)
    specials, stops = tokenizer.special_ids, set(tokenizer.eos_ids) | {tokenizer.pad_id}
    x = [int(t) for t in prompt_ids if int(t) not in specials]
    y = [int(t) for t in draft_ids if int(t) not in stops]
    return tokenizer.encode(head) + x + tokenizer.encode(mid) + y + tokenizer.encode(tail)
