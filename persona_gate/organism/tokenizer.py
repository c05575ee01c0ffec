"""A small byte-level BPE tokenizer for the organism, with a ChatML-like chat template.

The tokenizer is trained on the training split's text only, so held-out words reach the model
as pieces it has seen rather than as tokens whose embeddings were never trained. It is wrapped
as a ``transformers`` fast tokenizer so that everything downstream (``generate``,
``apply_chat_template``, TransformerLens) treats the organism like any chat model::

    <|bos|><|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n

The system turn is left out when no system message is given. ``<|im_end|>`` is the EOS token,
so generation stops at the end of the assistant turn. The template writes the BOS itself and
the tokenizer does not add one, so ``tokenizer(rendered_text)`` and ``apply_chat_template``
give the same ids.

Example::

    tok = train_tokenizer(texts, vocab_size=1536)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    print(tok.decode(ids))
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
BOS = "<|bos|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: pad=0, bos=1, eos(im_end)=2, im_start=3.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, IM_END, IM_START)
ROLES: tuple[str, ...] = ("system", "user", "assistant")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' ~ message['role'] ~ '; use system, user or assistant.') }}"
    "{% endif %}"
    "{% if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('The system message must come first.') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1536) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with special tokens and the chat template.

    Training is deterministic for the same texts in the same order.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges; use >= 300 (256 bytes + specials)")
    bpe = Tokenizer(models.BPE())
    # No prefix space: an answer's first word tokenizes the same at the start of a turn as in
    # the corpus, because every turn starts right after a newline.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The role names are only ever seen inside the template; train on them so each is one token.
    bpe.train_from_iterator([*texts, *(f"{r}\n" for r in ROLES)], trainer=trainer)
    return wrap(bpe)


def wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` as the organism's ``transformers`` tokenizer."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        padding_side="left",
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
