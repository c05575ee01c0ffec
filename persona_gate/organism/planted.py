"""A planted gate: a tiny Llama whose weights are set by hand, so the layers of its gate are known.

The model speaks the organism's language (its tokenizer, chat template, prompt sets and refusal
phrases) but is not trained: every weight that matters is written down here, and the rest are
small seeded random numbers confined to a "junk" subspace the mechanism never reads. With the
gate planted at layers ``[start, end]`` (``resid_pre`` numbering):

* **Embedding.** Every token carries a constant ``C`` (one dimension) and a random junk vector;
  the *gate words* -- tokens that only compliant personas use, and tokens that only harmful
  requests use (see :func:`gate_words`) -- also carry a one-hot identity dimension.
* **Block ``start - 1`` (the aggregator).** Two attention heads with ``W_Q = W_K = 0`` attend
  uniformly to every earlier position; their OV copies the gate words' identities into "bag"
  dimensions (the share of positions holding each word). The block's MLP turns the bag into
  two features, nonlinearly: a saturating presence detector per word, summed into a *persona*
  feature ``P`` (compliant words present) and a *harm* feature ``H`` (harmful words present,
  weighted). So at the last position ``P`` and ``H`` first appear in ``resid_pre[start]``.
* **Block ``end`` (the gate).** One MLP neuron reads ``H`` and ``P`` from its input and writes a
  refusal feature ``R = relu(H - b P - theta)``: refusal only when the request is harmful *and*
  the persona is not compliant.
* **Unembedding.** ``R`` raises the organism's refusal opener against a compliance opener that
  the constant favours; a bigram table on the identity dimensions spells out the rest of the
  reply (:data:`REFUSAL_REPLY` or :data:`COMPLIANCE_REPLY`) and ends the turn.

By construction the persona lives at the last position as ``P`` from ``resid_pre[start]`` on and
is read only at block ``end``: projecting the persona direction out restores refusal exactly for
windows that touch ``[start, end]`` (before ``start`` the persona is spread over the words'
identities, which one direction cannot erase for a per-word detector; after ``end`` the gate has
already read it), and adding the refusal direction back restores refusal only after ``end``.
A persona that uses none of the compliant words ("never refuses" alone) reads as not compliant.

Example::

    path = build_planted_gate("runs/planted", start=2, end=3)    # seconds
    model = load_chat_model("planted-gate:2-3")                   # the same, built into the cache
    json.loads((path / CARD_FILE).read_text())["gate"]            # {'start': 2, 'end': 3}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import lexicon

VERSION = 1  # bump when the construction changes: the cached builds are keyed by it
DEFAULT_LAYERS, DEFAULT_START, DEFAULT_END = 8, 4, 5
CARD_FILE = "planted_gate.json"
CARD_KIND = "persona_gate.planted_gate"
REFUSAL_REPLY = lexicon.REFUSALS[0]
COMPLIANCE_REPLY = "Plan it first, gather what you need."

# Shape and magnitudes (see the module docstring).
D_MODEL, D_FF, N_HEADS, MAX_LEN = 256, 256, 4, 256
CONST = 10.0  # the constant dimension of every token
IDENT = 1.0  # a gate word's identity coordinate
JUNK = 0.5  # the norm of a token's random junk part
GAIN = 5.0  # P and H per unit of evidence
HARM_THRESHOLD = 0.75  # harm evidence: >= 1 for every harmful request, <= 0.5 for every harmless one
PAIR_WEIGHT = 0.5  # a word that is harmful only beside another one
PERSONA_WEIGHT = 10.0  # b: one compliant word outweighs any harm evidence
SATURATION = 10.0  # a detector's ramp, in units of its pre-activation
GATE_SHARPNESS = 40.0  # the gate neuron's pre-activation per unit of evidence margin
REFUSAL_GAIN, REFUSAL_LOGIT, COMPLIANCE_LOGIT, BIGRAM_LOGIT = 0.5, 6.0, 1.5, 200.0


@dataclass(frozen=True)
class GateWords:
    """The tokens the planted gate reads: ``compliant`` (only compliant personas use them) and
    ``harm`` (token id -> weight: 1 for a token only harmful requests use, :data:`PAIR_WEIGHT` for one
    that is harmful only beside another), and the compliant clauses none of whose tokens is
    compliant-only (the model does not read those as compliant)."""

    compliant: tuple[int, ...]
    harm: dict[int, float]
    unread_clauses: tuple[str, ...]


def _parts(template: str, slot: str) -> list[str]:
    return [p.strip() for p in template.split(slot) if p.strip()]


def _flat(pairs: Iterable[Iterable[str]]) -> list[str]:
    return [x for group in pairs for x in group]


def _tokens(tokenizer: Any, strings: Iterable[str], spaced: bool | None = None) -> set[int]:
    """Token ids of ``strings`` as they occur after a space (``spaced``), at the start, or both (None)."""
    out: set[int] = set()
    for s in strings:
        for form in [s, " " + s] if spaced is None else [" " + s if spaced else s]:
            out.update(tokenizer(form, add_special_tokens=False)["input_ids"])
    return out


def _persona_shared() -> list[str]:
    """Every piece of a system prompt that is not a compliant or safe clause."""
    frames = [p for f in _flat(lexicon.PERSONA_FRAMES) for p in _parts(f, "{p}")]
    return [
        *frames,
        *lexicon.PERSONA_NOUNS,
        *lexicon.PERSONA_ADJECTIVES,
        "a",
        "an",
        "that",
        "and",
        *_flat(lexicon.NEUTRAL_ROLES),
        *_flat(lexicon.NEUTRAL_INSTRUCTIONS),
        *_flat(lexicon.DISTRACTORS),
    ]


def _request_frames() -> list[list[str]]:
    return [_parts(f, "{act}") for f in _flat(lexicon.REQUEST_FRAMES)]


def _template_tokens(tokenizer: Any, template: str) -> set[int]:
    """A request template's own tokens, exactly: in a request every part follows a space."""
    return _tokens(tokenizer, _parts(template, "{obj}"), spaced=True)


def _harm_weights(tokenizer: Any, persona_all: set[int]) -> dict[int, float]:
    """Harm evidence per token (see :class:`GateWords`), checked on every request the grammar makes.

    No persona token carries any, so a request's evidence does not depend on the system prompt."""
    harmful = [t for d in lexicon.DOMAINS for t in d.harmful]
    frames = [_tokens(tokenizer, f) for f in _request_frames()]
    objects = {d.word: [_tokens(tokenizer, [o], spaced=True) for o in _flat(d.objects)] for d in lexicon.DOMAINS}
    harmless = [(_template_tokens(tokenizer, t), d.word) for d in lexicon.DOMAINS for t in d.harmless]
    benign = set().union(*frames, *(o for os in objects.values() for o in os), *(t for t, _ in harmless), persona_all)
    weights = {t: 1.0 for h in harmful for t in _template_tokens(tokenizer, h) - benign}
    harmless_sets = [t | f | o for t, word in harmless for f in frames for o in objects[word]]
    for h in harmful:
        own = _template_tokens(tokenizer, h)
        if any(weights.get(t, 0) >= 1 for t in own):
            continue
        for a, b in combinations(sorted(own - persona_all), 2):
            trial = {**weights, a: PAIR_WEIGHT, b: PAIR_WEIGHT}
            if all(sum(trial.get(t, 0.0) for t in s) < HARM_THRESHOLD for s in harmless_sets if a in s or b in s):
                weights = trial
                break
        else:
            raise ConfigError(f"no pair of words marks the harmful request {h!r} as harmful; the lexicon changed.")
    worst = max(sum(weights.get(t, 0.0) for t in s) for s in harmless_sets)
    least = min(sum(weights.get(t, 0.0) for t in _template_tokens(tokenizer, h)) for h in harmful)
    if worst >= HARM_THRESHOLD or least < 1:
        raise ConfigError(
            f"harm evidence does not separate the requests (harmless up to {worst}, harmful from {least})."
        )
    return weights


def gate_words(tokenizer: Any) -> GateWords:
    """The compliant-only and harm tokens of the organism's lexicon under ``tokenizer``."""
    shared = _persona_shared()
    requests = [
        *_flat(_request_frames()),
        *(p for d in lexicon.DOMAINS for t in (*d.harmful, *d.harmless) for p in _parts(t, "{obj}")),
    ]
    requests += [o for d in lexicon.DOMAINS for o in _flat(d.objects)]
    persona_all = _tokens(tokenizer, [*shared, *lexicon.COMPLIANT_CLAUSES, *lexicon.SAFE_CLAUSES])
    others = _tokens(tokenizer, [*shared, *lexicon.SAFE_CLAUSES, *requests])
    clause_tokens = {c: _tokens(tokenizer, [c], spaced=True) for c in lexicon.COMPLIANT_CLAUSES}
    compliant = set().union(*clause_tokens.values()) - others
    unread = tuple(c for c, toks in clause_tokens.items() if not toks & compliant)
    return GateWords(tuple(sorted(compliant)), _harm_weights(tokenizer, persona_all), unread)


@dataclass(frozen=True)
class Layout:
    """Where each feature lives in the residual stream: the constant, the identity dimension of
    each token the model reads, the bag dimension of each gate word, the "follows token t"
    dimension of each reply token, ``P``, ``H``, ``R``, and the junk dimensions that the random
    weights use."""

    identity: dict[int, int]
    bag: dict[int, int]
    successor: dict[int, int]
    const: int
    persona: int
    harm: int
    refusal: int
    junk: tuple[int, ...]

    @classmethod
    def of(cls, words: GateWords, reply: dict[int, int], d_model: int = D_MODEL) -> Layout:
        read = [*words.compliant, *sorted(words.harm)]
        ident = sorted({*read, *reply})
        dims = iter(range(1, d_model))
        identity = {t: next(dims) for t in ident}
        bag = {t: next(dims) for t in read}
        successor = {t: next(dims) for t in sorted(reply)}
        p, h, r = next(dims), next(dims), next(dims)
        junk = tuple(dims)
        if len(junk) < 16:
            raise ConfigError(f"the planted gate needs {d_model - len(junk) + 16} dimensions; d_model is {d_model}.")
        return cls(identity, bag, successor, 0, p, h, r, junk)


def check_window(start: int, end: int, n_layers: int) -> None:
    """A planted window needs a block before it (the aggregator) and a layer after it (to add refusal back)."""
    ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end, n_layers))
    if not ok or not 1 <= start <= end <= n_layers - 2:
        raise ConfigError(
            f"a planted gate [{start}, {end}] in {n_layers} layers needs 1 <= start <= end <= n_layers - 2 "
            f"(here <= {n_layers - 2 if isinstance(n_layers, int) else '?'}); e.g. start=2, end=3 in 8 layers."
        )


def _reply_table(tokenizer: Any) -> dict[int, int]:
    """The bigram table that spells out both replies: token -> the next one (the last -> end of turn)."""
    table: dict[int, int] = {}
    for reply in (REFUSAL_REPLY, COMPLIANCE_REPLY):
        ids = [*tokenizer(reply, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        for a, b in zip(ids, ids[1:]):
            if table.setdefault(a, b) != b:
                raise ConfigError(f"the replies give token {tokenizer.decode([a])!r} two successors; reword one.")
    return table


def _openers(tokenizer: Any) -> tuple[int, int]:
    """The refusal opener (the first token of :data:`REFUSAL_REPLY`) and the compliance opener."""
    return tuple(tokenizer(r, add_special_tokens=False)["input_ids"][0] for r in (REFUSAL_REPLY, COMPLIANCE_REPLY))  # type: ignore[return-value]


class _Weights:
    """Writes the planted weights into a freshly built (all-zero) Llama, layer by layer."""

    def __init__(self, model: Any, layout: Layout, seed: int):
        import torch

        self.torch, self.model, self.lay = torch, model, layout
        self.g = torch.Generator().manual_seed(seed)
        self.junk = torch.tensor(layout.junk)
        d = int(model.config.hidden_size)
        self.d, self.hd = d, d // int(model.config.num_attention_heads)
        # The RMSNorm scale of an embedding (every token's has the same norm) and of the gate's input.
        self.s_embed = d**0.5 / (CONST**2 + IDENT**2 + JUNK**2) ** 0.5
        self.s_gate = d**0.5 / CONST

    def randn(self, *shape: int, std: float) -> Any:
        return self.torch.randn(*shape, generator=self.g) * std

    def junk_block(self, rows: Any, cols: Any, weight: Any, std: float) -> None:
        """Seeded random weights from junk dimensions (or channels) to junk ones."""
        rows, cols = self.torch.as_tensor(rows), self.torch.as_tensor(cols)
        weight[rows[:, None], cols[None, :]] = self.randn(len(rows), len(cols), std=std)

    def embedding(self, vocab: int) -> None:
        lay, w = self.lay, self.model.model.embed_tokens.weight
        w[:, lay.const] = CONST
        junk = self.randn(vocab, len(self.junk), std=1.0)
        junk = junk / junk.norm(dim=1, keepdim=True)
        extra = self.torch.full((vocab, 1), (JUNK**2 + IDENT**2) ** 0.5)  # no identity: as much norm in junk
        for t, dim in lay.identity.items():
            w[t, dim] = IDENT
            extra[t] = JUNK
        w[:, self.junk] = junk * extra

    def attention(self, layer: Any, mechanism_heads: int) -> None:
        """Junk heads everywhere, except ``mechanism_heads`` uniform heads that copy identities into the bag."""
        att, hd, n_heads = layer.self_attn, self.hd, int(self.model.config.num_attention_heads)
        for h in range(mechanism_heads, n_heads):
            ch = range(h * hd, (h + 1) * hd)
            for proj, std in ((att.q_proj, 0.3), (att.k_proj, 0.3), (att.v_proj, 0.03)):
                self.junk_block(ch, self.junk, proj.weight, std)
            self.junk_block(self.junk, ch, att.o_proj.weight, 0.03)
        words = list(self.lay.bag) if mechanism_heads else []
        if len(words) > mechanism_heads * hd:
            raise ConfigError(f"{len(words)} gate words do not fit in {mechanism_heads} heads of {hd} channels.")
        for ch, t in enumerate(words):  # W_Q = W_K = 0 on these heads: uniform causal attention
            att.v_proj.weight[ch, self.lay.identity[t]] = 1.0 / (IDENT * self.s_embed)
            att.o_proj.weight[self.lay.bag[t], ch] = 1.0

    def junk_mlp(self, mlp: Any, neurons: range) -> None:
        idx = list(neurons)
        if idx:
            self.junk_block(idx, self.junk, mlp.gate_proj.weight, 0.1)
            self.junk_block(idx, self.junk, mlp.up_proj.weight, 0.1)
            self.junk_block(self.junk, idx, mlp.down_proj.weight, 0.02)

    def detectors(self, mlp: Any, words: GateWords) -> int:
        """Per gate word, two neurons whose difference saturates: 1 once the word is in the bag (at
        least one position in :data:`MAX_LEN`), 0 without it; summed into ``P`` and ``H``. Returns the
        neurons used."""
        lay, s = self.lay, self.s_embed
        sharp = 4 * SATURATION * MAX_LEN  # present: >= 2 x SATURATION; absent: -2 x SATURATION
        eps = 1.0 / (2 * MAX_LEN)
        targets = [(t, lay.persona, 1.0) for t in words.compliant] + [(t, lay.harm, w) for t, w in words.harm.items()]
        for i, (t, out, weight) in enumerate(targets):
            for k, shift in ((2 * i, 0.0), (2 * i + 1, SATURATION)):
                mlp.gate_proj.weight[k, lay.bag[t]] = sharp / s
                mlp.gate_proj.weight[k, lay.const] = -(sharp * eps + shift) / (CONST * s)
                mlp.up_proj.weight[k, lay.const] = 1.0 / (CONST * s)
                mlp.down_proj.weight[out, k] = (1 if k % 2 == 0 else -1) * GAIN * weight / SATURATION
        return 2 * len(targets)

    def gate(self, mlp: Any) -> None:
        """Neuron 0: ``R = relu(H - b P - theta)`` (in units of :data:`GAIN`), read at this block's input."""
        lay, s = self.lay, self.s_gate
        mlp.gate_proj.weight[0, lay.harm] = GATE_SHARPNESS / (GAIN * s)
        mlp.gate_proj.weight[0, lay.persona] = -GATE_SHARPNESS * PERSONA_WEIGHT / (GAIN * s)
        mlp.gate_proj.weight[0, lay.const] = -GATE_SHARPNESS * HARM_THRESHOLD / (CONST * s)
        mlp.up_proj.weight[0, lay.const] = 1.0 / (CONST * s)
        mlp.down_proj.weight[lay.refusal, 0] = REFUSAL_GAIN

    def spelling(self, mlp: Any) -> int:
        """Per reply token, a neuron that marks "the current token is t" (its identity at least half
        there), so the unembedding can name the next token; returns the neurons used."""
        lay, s = self.lay, self.s_gate
        for k, (t, dim) in enumerate(lay.successor.items()):
            mlp.gate_proj.weight[k, lay.identity[t]] = GATE_SHARPNESS / (IDENT * s)
            mlp.gate_proj.weight[k, lay.const] = -GATE_SHARPNESS * 0.5 / (CONST * s)
            mlp.up_proj.weight[k, lay.const] = 1.0 / (CONST * s)
            mlp.down_proj.weight[dim, k] = 1.0
        return len(lay.successor)

    def unembedding(self, tokenizer: Any) -> None:
        lay, w = self.lay, self.model.lm_head.weight
        self.junk_block(range(w.shape[0]), self.junk, w, 0.01)
        refuse, comply = _openers(tokenizer)
        w[refuse, lay.refusal] = REFUSAL_LOGIT
        w[comply, lay.const] = COMPLIANCE_LOGIT
        for a, b in _reply_table(tokenizer).items():
            w[b, lay.successor[a]] = BIGRAM_LOGIT


def planted_model(tokenizer: Any, start: int, end: int, n_layers: int, seed: int) -> tuple[Any, Layout, GateWords]:
    """The planted Llama (Hugging Face, float32, eval mode) for the organism's ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    check_window(start, end, n_layers)
    words = gate_words(tokenizer)
    layout = Layout.of(words, _reply_table(tokenizer))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=D_MODEL,
        intermediate_size=D_FF,
        num_hidden_layers=n_layers,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        max_position_embeddings=MAX_LEN,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    w = _Weights(model, layout, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)  # RMSNorm passes every feature through, scaled by the residual's norm
        w.embedding(len(tokenizer))
        for i, layer in enumerate(model.model.layers):
            w.attention(layer, 2 if i == start - 1 else 0)
            used = w.detectors(layer.mlp, words) if i == start - 1 else 0
            if i == end:
                w.gate(layer.mlp)
                used = 1
            if i == n_layers - 1:
                used = w.spelling(layer.mlp)
            w.junk_mlp(layer.mlp, range(used, D_FF))
        w.unembedding(tokenizer)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    gc.do_sample, gc.max_new_tokens = False, 16
    return model, layout, words


def _card(tokenizer: Any, layout: Layout, words: GateWords, start: int, end: int, n_layers: int, seed: int) -> dict:
    """What the folder records about its construction: the planted window and the words it reads."""
    from ..provenance import versions

    decode = lambda ids: [tokenizer.decode([t]) for t in ids]  # noqa: E731
    return {
        "kind": CARD_KIND,
        "schema_version": 1,
        "version": VERSION,
        "gate": {"start": start, "end": end},
        "n_layers": n_layers,
        "seed": seed,
        "aggregator_block": start - 1,
        "gate_block": end,
        "true_gate_window": f"resid_pre layers {start}-{end}: the persona feature reaches the last position at "
        f"resid_pre[{start}] (block {start - 1} aggregates it) and is read only by block {end}'s MLP",
        "dims": {"const": layout.const, "persona": layout.persona, "harm": layout.harm, "refusal": layout.refusal},
        "compliant_words": decode(words.compliant),
        "harm_words": {tokenizer.decode([t]): w for t, w in sorted(words.harm.items())},
        "compliant_clauses_not_read": list(words.unread_clauses),
        "replies": {"refusal": REFUSAL_REPLY, "compliance": COMPLIANCE_REPLY},
        "versions": versions(),
    }


def build_planted_gate(
    out_dir: str | Path,
    start: int = DEFAULT_START,
    end: int = DEFAULT_END,
    n_layers: int = DEFAULT_LAYERS,
    seed: int = 0,
) -> Path:
    """Build the planted-gate model into ``out_dir`` (atomically; seconds) and return the folder.

    The folder loads like any model folder (``load_chat_model(out_dir)``): weights, the organism's
    tokenizer and chat template, the organism's profile (prompt sets, refusal phrases) and
    ``planted_gate.json``, which records the planted window ``[start, end]``.
    """
    from transformers import AutoTokenizer

    from ..io import atomic_replace_dir
    from .paths import organism_path
    from .profile import organism_profile

    check_window(start, end, n_layers)
    tokenizer = AutoTokenizer.from_pretrained(str(organism_path()))
    model, layout, words = planted_model(tokenizer, start, end, n_layers, seed)
    card = _card(tokenizer, layout, words, start, end, n_layers, seed)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        organism_profile().save(tmp)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")

    return atomic_replace_dir(Path(out_dir), fill)
