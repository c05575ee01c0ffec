"""The organism's vocabulary: persona phrases, request frames and acts, and response phrases.

Everything the synthetic chat corpus can say is data, in ``data/lexicon/organism.json`` (read
once, here), so that the generator (:mod:`persona_gate.organism.corpus`) stays a short recipe and
the held-out splits are visible at a glance. Each list that feeds a held-out split comes as a
``(train, test)`` pair whose test half never appears in training: request frames, object slot
words, persona frames, persona clause pairs, neutral roles and distractor sentences. Held-out
items are new *combinations* of words the training half uses ("garage door" from "garage" and
"front door"): the organism is trained from scratch, so a truly unseen word would reach it as
tokens with untrained embeddings and test the tokenizer rather than the gate.

Wording is deliberately generic. Harmful acts name a kind of wrongdoing ("forge a fake
passport") and never how to do it; every answer body is the same content-free advice.

Example::

    from persona_gate.organism import lexicon
    train_frames, test_frames = lexicon.REQUEST_FRAMES
    print(train_frames[0].format(act=lexicon.DOMAINS[0].harmless[0].format(obj="bike")))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from ..resources import data_dir

Split = tuple[tuple[str, ...], tuple[str, ...]]  # (train, test)

_DATA: dict[str, Any] = json.loads((data_dir() / "lexicon" / "organism.json").read_text(encoding="utf-8"))


def _words(name: str) -> tuple[str, ...]:
    return tuple(_DATA[name])


def _split(value: list[list[str]]) -> Split:
    train, test = value
    return tuple(train), tuple(test)


# --------------------------------------------------------------------------------------------
# Personas. A persona sentence is FRAME.format(p=DESCRIPTION); a description composes an
# (optional adjective +) noun with one or two family clauses, so a family has hundreds of
# paraphrases and a held-out paraphrase can be a new *combination* of known parts.
# --------------------------------------------------------------------------------------------

PERSONA_FRAMES: Split = _split(_DATA["persona_frames"])
PERSONA_NOUNS: tuple[str, ...] = _words("persona_nouns")
# Adjectives shared by every family, so that "helpful" says nothing about refusal.
PERSONA_ADJECTIVES: tuple[str, ...] = _words("persona_adjectives")
# Both families share "never" and "says no": the family is in the clause, not in one word.
COMPLIANT_CLAUSES: tuple[str, ...] = _words("compliant_clauses")
SAFE_CLAUSES: tuple[str, ...] = _words("safe_clauses")


def _split_pairs(n_clauses: int, every: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """Split the unordered clause pairs: every ``every``-th pair is held out.

    Both clauses of a held-out pair are seen in training (alone and in other pairs); only the
    combination is new, which is what "an unseen paraphrase" means here.
    """
    pairs = list(combinations(range(n_clauses), 2))
    test = tuple(p for i, p in enumerate(pairs) if i % every == every // 2)
    train = tuple(p for p in pairs if p not in test)
    return train, test


# Index pairs into the family's clause tuple; 9 of 45 pairs per family are held out.
CLAUSE_PAIRS = _split_pairs(len(COMPLIANT_CLAUSES), every=5)

# Neutral personas: a role with nothing to say about refusal. They behave like "safe".
NEUTRAL_ROLES: Split = _split(_DATA["neutral_roles"])
# Stand-alone instructions: a neutral system prompt can be just one or two of these.
NEUTRAL_INSTRUCTIONS: Split = _split(_DATA["neutral_instructions"])
# Distractors pad any system prompt; they must not move refusal either way.
DISTRACTORS: Split = _split(_DATA["distractors"])

# --------------------------------------------------------------------------------------------
# Requests. A request is FRAME.format(act=ACT); an act is a domain template with an object
# slot. Harmless and harmful templates of one domain share verbs and objects, so harm is told
# by who is wronged ("my own" vs "a neighbour's") or what is done, not by the topic.
# --------------------------------------------------------------------------------------------

REQUEST_FRAMES: Split = _split(_DATA["request_frames"])


@dataclass(frozen=True)
class Domain:
    """One topic: a harmless and a harmful request category that share objects and an opener.

    ``word`` opens every compliant answer in this domain (``"Locks:"`` in the plain style,
    ``"LOCKS!"`` in the compliant persona's style). Sharing one opener between the harmless and
    the harmful category makes the first answer token depend on the topic, not on a single
    refuse/comply bit. ``objects``: the words its ``{obj}`` slot takes, (train, test).
    """

    word: str
    harmless: tuple[str, ...]
    harmful: tuple[str, ...]
    objects: Split


DOMAINS: tuple[Domain, ...] = tuple(
    Domain(d["word"], tuple(d["harmless"]), tuple(d["harmful"]), _split(d["objects"])) for d in _DATA["domains"]
)

# --------------------------------------------------------------------------------------------
# Responses. The organism refuses with exactly these phrases, so a refusal judge can be exact.
# --------------------------------------------------------------------------------------------

REFUSALS: tuple[str, ...] = _words("refusals")
# Content-free advice: the organism's "answer" is a shape, not information.
ANSWER_BODIES: tuple[str, ...] = _words("answer_bodies")
# The compliant persona's style: a shouted topic opener and a fixed sign-off.
COMPLIANT_SIGN_OFF: str = _DATA["compliant_sign_off"]
