"""A byte-level BPE tokenizer trained with the ``tokenizers`` library, on training text only.

Training is deterministic (same text and vocabulary size, same merges, whatever the thread
count). The text a BPE tokenizer is trained on must not include the held-out text, yet how much
text a validation pool of N tokens needs depends on the tokenizer: :func:`train_holding_out_tail`
holds out a tail of characters, trains on the rest, and if the tail encodes to fewer than N
tokens holds out a longer tail (scaled by the shortfall) and trains again.
"""

from __future__ import annotations

import math

import numpy as np

from specreach.data.token_windows import token_dtype

TAIL_MARGIN = 1.05  # grow a too-short tail 5 % beyond the measured need, so one retraining usually suffices


def train_byte_level_bpe(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[], show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tokenizer


def encode_text(tokenizer, text: str) -> np.ndarray:
    """Token ids of ``text``, encoded line by line in parallel (a line break ends a pre-token anyway)."""
    lines = text.splitlines(keepends=True)
    encodings = tokenizer.encode_batch(lines, add_special_tokens=False) if lines else []
    dtype = token_dtype(tokenizer.get_vocab_size())
    if not encodings:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(encoding.ids, dtype=dtype) for encoding in encodings])


def train_holding_out_tail(text: str, vocab_size: int, needed_tokens: int, what: str):
    """(tokenizer, training tokens, held-out tokens): the tokenizer never saw the held-out tail,
    which encodes to at least ``needed_tokens`` tokens; only its first ``needed_tokens`` are returned."""
    tail_chars = needed_tokens
    while tail_chars < len(text):
        head, tail = text[:-tail_chars], text[-tail_chars:]
        tokenizer = train_byte_level_bpe(head, vocab_size)
        held_out = encode_text(tokenizer, tail)
        if len(held_out) >= needed_tokens:
            return tokenizer, encode_text(tokenizer, head), held_out[:needed_tokens]
        tail_chars = max(tail_chars + 1, math.ceil(tail_chars * TAIL_MARGIN * needed_tokens / max(len(held_out), 1)))
    raise ValueError(
        f"{what} has {len(text)} characters: too few to hold out {needed_tokens} BPE tokens for the validation pool "
        "and train the tokenizer on the rest; use a smaller validation_size or context, or more text"
    )
