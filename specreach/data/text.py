"""Next-token text sources: ``pydoc-text`` (ships with Python) and ``text-file`` (any local text).

Both cut a token stream into non-overlapping windows of ``context + 1`` tokens (inputs: the
first ``context``, targets: the last ``context``) and hold out the stream's tail as the
validation pool: ``validation_size`` windows, sharing no token with any training window.

- ``pydoc-text``: the English help topics of the Python documentation
  (``pydoc_data.topics.topics``, in every CPython), values joined by a blank line in sorted key
  order, as UTF-8 bytes: byte-level tokens, vocab 256.
- ``text-file``: a text file, or the ``.txt`` files of a folder sorted by name and joined by a
  blank line. ``tokenizer: bytes`` uses the raw bytes (vocab 256, any file); ``tokenizer: bpe``
  trains a byte-level BPE of ``vocab_size`` tokens on the training text only (UTF-8 required),
  see ``specreach.data.bpe``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pydoc_data.topics
import torch
from torch import Tensor

from specreach.data.base import Batch, DataInfo, DataSource
from specreach.data.batching import batches_in_order, shuffled_order
from specreach.data.bpe import train_holding_out_tail
from specreach.data.token_windows import TokenWindows, held_out_tokens, split_tail
from specreach.params.data import BYTE_VOCAB, PydocTextParams, TextFileParams

DOCUMENT_SEPARATOR = "\n\n"


def pydoc_text() -> str:
    topics = pydoc_data.topics.topics
    return DOCUMENT_SEPARATOR.join(topics[key] for key in sorted(topics))


def pydoc_bytes() -> Tensor:
    """The English help topics of the Python documentation, as a byte-level token stream (int64)."""
    return torch.frombuffer(bytearray(pydoc_text().encode("utf-8")), dtype=torch.uint8).long()


def window_batches(windows: TokenWindows, batch_size: int, data_seed: int, start: int) -> Iterator[Batch]:
    return batches_in_order(shuffled_order(windows.count, data_seed), batch_size, start, windows.batch)


class PydocText(DataSource):
    name = "pydoc-text"
    Params = PydocTextParams

    @cached_property
    def _windows(self) -> tuple[TokenWindows, TokenWindows]:
        tokens = np.frombuffer(pydoc_text().encode("utf-8"), dtype=np.uint8)
        return split_tail(tokens, self.params.context, self.params.validation_size, "the pydoc help-topic text")

    def info(self) -> DataInfo:
        train, _ = self._windows  # the whole text is under half a megabyte
        return DataInfo(
            task="next-token", input_shape=(self.params.context,), vocab=BYTE_VOCAB, train_samples=train.count
        )

    def validation_pool(self) -> Batch:
        return self._windows[1].all()

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        return window_batches(self._windows[0], batch_size, data_seed, start)


def text_files(path: Path) -> list[Path]:
    """The file itself, or a folder's .txt files sorted by name."""
    expected = "expected a text file, or a folder of .txt files (read in name order)"
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if child.suffix == ".txt" and child.is_file())
        if files:
            return files
        raise FileNotFoundError(f"text-file: the folder {path} has no .txt files; {expected}")
    raise FileNotFoundError(f"text-file: {path} does not exist; {expected}. Point 'path' at your own local text.")


def read_utf8(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"text-file: {file} is not UTF-8 text ({error}); "
            "tokenizer: bpe needs UTF-8 (tokenizer: bytes reads any file)"
        ) from error


class TextFile(DataSource):
    name = "text-file"
    Params = TextFileParams

    def info(self) -> DataInfo:
        p = self.params
        if p.tokenizer == "bpe":  # the window count is known only after training the tokenizer
            return DataInfo(task="next-token", input_shape=(p.context,), vocab=p.vocab_size)
        files = text_files(p.path)
        stream = sum(file.stat().st_size for file in files) + len(DOCUMENT_SEPARATOR.encode()) * (len(files) - 1)
        train_samples = max(stream - held_out_tokens(p.validation_size, p.context), 0) // (p.context + 1)
        return DataInfo(task="next-token", input_shape=(p.context,), vocab=BYTE_VOCAB, train_samples=train_samples)

    @cached_property
    def _prepared(self):
        """(training windows, validation windows, the BPE tokenizer or None)."""
        p = self.params
        files = text_files(p.path)
        what = f"text-file {p.path}"
        if p.tokenizer == "bytes":
            stream = DOCUMENT_SEPARATOR.encode().join(file.read_bytes() for file in files)
            return (*split_tail(np.frombuffer(stream, dtype=np.uint8), p.context, p.validation_size, what), None)
        text = DOCUMENT_SEPARATOR.join(read_utf8(file) for file in files)
        needed = held_out_tokens(p.validation_size, p.context)
        tokenizer, train_tokens, held_out = train_holding_out_tail(text, p.vocab_size, needed, what)
        train = TokenWindows(train_tokens, p.context)
        if train.count == 0:
            raise ValueError(f"{what}: no training window of {p.context + 1} tokens is left after the validation pool")
        return train, TokenWindows(held_out, p.context), tokenizer

    def bpe_tokenizer(self):
        """The trained ``tokenizers.Tokenizer`` (to decode tokens); None for byte tokens."""
        return self._prepared[2]

    def validation_pool(self) -> Batch:
        return self._prepared[1].all()

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        return window_batches(self._prepared[0], batch_size, data_seed, start)
