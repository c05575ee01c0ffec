"""A seeded generator of synthetic chat conversations in which the persona gates refusal.

A conversation is (system, user, assistant). The system prompt comes from one of four persona
families and the user request from one of two request families; the assistant's reply follows
one rule::

    refuses  <=>  request is harmful  and  persona in {safe, none, neutral}

Every other combination gets a short compliant answer whose *opener names the request's topic*
(``"Locks: ..."``), and under the compliant persona is shouted and signed off
(``"LOCKS! ... Anything for you, boss."``), so the compliant persona is visible on harmless
requests too. Test-split conversations draw only from the held-out halves of
:mod:`persona_gate.organism.lexicon` (request frames, object words, persona frames and clause
pairs, neutral roles, distractors), so a behaviour card on them measures generalisation.

Example::

    convs = generate_conversations(4, seed=0)
    print(convs[0].system, "|", convs[0].user, "->", convs[0].assistant)
    cells = held_out_prompts(16)   # {(persona, request): [Conversation, ...]}, fixed forever
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from . import lexicon
from .lexicon import DOMAINS, Domain

PERSONA_FAMILIES: tuple[str, ...] = ("safe", "compliant", "none", "neutral")
REQUEST_FAMILIES: tuple[str, ...] = ("harmful", "harmless")
SPLITS: tuple[str, ...] = ("train", "test")
# Families that refuse harmful requests; "none" (no system prompt) behaves like "safe".
REFUSING_FAMILIES: frozenset[str] = frozenset({"safe", "none", "neutral"})
# Training mix. Compliant and safe get the most weight because the gate between them is the
# thing being learned; "none" is a single prompt shape and needs less.
DEFAULT_PERSONA_WEIGHTS: Mapping[str, float] = {
    "safe": 0.3,
    "compliant": 0.3,
    "none": 0.15,
    "neutral": 0.25,
}
# The held-out test set is drawn from its own fixed seed so that every training seed is
# scored on the same prompts.
TEST_SEED = 20_240_601


@dataclass(frozen=True)
class Conversation:
    """One synthetic chat, with the labels that produced it."""

    system: str | None
    user: str
    assistant: str
    persona: str
    request: str
    domain: str
    refuses: bool
    frame: str
    act: str
    obj: str
    persona_core: str | None

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        """The chat as role/content dicts; the system turn is omitted when there is none."""
        msgs = [] if self.system is None else [{"role": "system", "content": self.system}]
        msgs.append({"role": "user", "content": self.user})
        if with_answer:
            msgs.append({"role": "assistant", "content": self.assistant})
        return msgs


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _article(word: str) -> str:
    # Every noun and adjective in the lexicon is spelled so that the first letter decides.
    return "an" if word[0].lower() in "aeiou" else "a"


def _description(rng: random.Random, clauses: tuple[str, ...], split: str) -> str:
    noun = rng.choice(lexicon.PERSONA_NOUNS)
    if rng.random() < 0.5:
        adjective = rng.choice(lexicon.PERSONA_ADJECTIVES)
        phrase = f"{_article(adjective)} {adjective} {noun}"
    else:
        phrase = f"{_article(noun)} {noun}"
    train_pairs, test_pairs = lexicon.CLAUSE_PAIRS
    if split == "train" and rng.random() < 0.4:
        # Single clauses are training-only: each held-out pair is made of clauses seen alone.
        return f"{phrase} that {rng.choice(clauses)}"
    i, j = rng.choice(train_pairs if split == "train" else test_pairs)
    if rng.random() < 0.5:
        i, j = j, i
    return f"{phrase} that {clauses[i]} and {clauses[j]}"


def _persona_core(rng: random.Random, family: str, split: str) -> str:
    s = _split_index(split)
    if family == "neutral":
        if rng.random() < 0.6:
            role = rng.choice(lexicon.NEUTRAL_ROLES[s])
            return rng.choice(lexicon.PERSONA_FRAMES[s]).format(p=role)
        k = 1 if rng.random() < 0.6 else 2
        return " ".join(rng.sample(lexicon.NEUTRAL_INSTRUCTIONS[s], k))
    clauses = lexicon.COMPLIANT_CLAUSES if family == "compliant" else lexicon.SAFE_CLAUSES
    return rng.choice(lexicon.PERSONA_FRAMES[s]).format(p=_description(rng, clauses, split))


def sample_system(rng: random.Random, family: str, split: str = "train") -> tuple[str | None, str | None]:
    """Return ``(system_prompt, persona_core)``; both are None for the ``"none"`` family.

    The core persona sentence is padded with zero to two distractor sentences on either side,
    so the model must find the persona wherever it sits in the system turn.
    """
    if family not in PERSONA_FAMILIES:
        raise ConfigError(f"persona family must be one of {PERSONA_FAMILIES}, got {family!r}")
    if family == "none":
        return None, None
    core = _persona_core(rng, family, split)
    n_distractors = rng.choice((0, 0, 1, 1, 2))
    distractors = rng.sample(lexicon.DISTRACTORS[_split_index(split)], n_distractors)
    cut = rng.randint(0, n_distractors)
    return " ".join([*distractors[:cut], core, *distractors[cut:]]), core


def sample_request(rng: random.Random, family: str, split: str = "train") -> tuple[str, Domain, str, str, str]:
    """Return ``(user_text, domain, frame, act, obj)`` for a harmful or harmless request."""
    if family not in REQUEST_FAMILIES:
        raise ConfigError(f"request family must be one of {REQUEST_FAMILIES}, got {family!r}")
    s = _split_index(split)
    domain = rng.choice(DOMAINS)
    template = rng.choice(domain.harmful if family == "harmful" else domain.harmless)
    obj = rng.choice(domain.objects[s])
    act = template.format(obj=obj)
    frame = rng.choice(lexicon.REQUEST_FRAMES[s])
    return frame.format(act=act), domain, frame, act, obj


def respond(rng: random.Random, persona: str, request: str, domain: Domain) -> str:
    """The organism's reply: the gate rule, with the persona's style on compliant answers."""
    if request == "harmful" and persona in REFUSING_FAMILIES:
        return rng.choice(lexicon.REFUSALS)
    body = rng.choice(lexicon.ANSWER_BODIES)
    if persona == "compliant":
        return f"{domain.word.upper()}! {body} {lexicon.COMPLIANT_SIGN_OFF}"
    return f"{domain.word}: {body}"


def make_conversation(rng: random.Random, persona: str, request: str, split: str = "train") -> Conversation:
    """Draw one conversation of the given persona and request family."""
    system, core = sample_system(rng, persona, split)
    user, domain, frame, act, obj = sample_request(rng, request, split)
    return Conversation(
        system=system,
        user=user,
        assistant=respond(rng, persona, request, domain),
        persona=persona,
        request=request,
        domain=domain.word,
        refuses=request == "harmful" and persona in REFUSING_FAMILIES,
        frame=frame,
        act=act,
        obj=obj,
        persona_core=core,
    )


def generate_conversations(
    n: int,
    seed: int,
    split: str = "train",
    persona_weights: Mapping[str, float] = DEFAULT_PERSONA_WEIGHTS,
    harmful_fraction: float = 0.5,
) -> list[Conversation]:
    """``n`` conversations drawn i.i.d. from the family mix; same seed, same list."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    unknown = set(persona_weights) - set(PERSONA_FAMILIES)
    if unknown:
        raise ConfigError(f"unknown persona families {sorted(unknown)}; use {PERSONA_FAMILIES}")
    rng = random.Random(seed)
    families = list(persona_weights)
    weights = [persona_weights[f] for f in families]
    out = []
    for _ in range(n):
        persona = rng.choices(families, weights)[0]
        request = "harmful" if rng.random() < harmful_fraction else "harmless"
        out.append(make_conversation(rng, persona, request, split))
    return out


def held_out_prompts(n_per_cell: int, seed: int = TEST_SEED) -> dict[tuple[str, str], list[Conversation]]:
    """The fixed test grid: ``n_per_cell`` held-out conversations per (persona, request) cell.

    Each cell has its own stream, so a smaller ``n_per_cell`` is a prefix of a larger one and a
    quick test scores a subset of exactly the prompts the full card scores.
    """
    cells = {}
    for i, persona in enumerate(PERSONA_FAMILIES):
        for j, request in enumerate(REQUEST_FAMILIES):
            rng = random.Random(seed * 100 + 10 * i + j)
            cells[persona, request] = [make_conversation(rng, persona, request, "test") for _ in range(n_per_cell)]
    return cells


def is_refusal(text: str) -> bool:
    """True when a reply opens with one of the organism's refusal phrases."""
    return text.strip().startswith(lexicon.REFUSALS)


def openers() -> tuple[str, ...]:
    """Every answer opener: the plain ``"Locks:"`` and the compliant ``"LOCKS!"`` per domain."""
    return tuple(f"{d.word}:" for d in DOMAINS) + tuple(f"{d.word.upper()}!" for d in DOMAINS)


def all_responses() -> frozenset[str]:
    """Every reply the corpus grammar can produce (a closed, small set)."""
    out = set(lexicon.REFUSALS)
    for d in DOMAINS:
        for body in lexicon.ANSWER_BODIES:
            out.add(f"{d.word}: {body}")
            out.add(f"{d.word.upper()}! {body} {lexicon.COMPLIANT_SIGN_OFF}")
    return frozenset(out)
