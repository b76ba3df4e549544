"""``simplestories``: the SimpleStories corpus with its 4096-token tokenizer, from a local copy.

The copy is a folder with the dataset's files and the tokenizer's ``tokenizer.json`` (read with
the ``tokenizers`` library). Data files are found recursively and kept when their path relative
to the folder matches the pattern ``files`` (default ``*train*``, the train split of the Hub
repository's layout); sorted by that path. Supported formats: Parquet (``.parquet``), the Arrow
streams of a ``datasets.save_to_disk`` folder (``.arrow``), and JSON lines (``.jsonl``), each with
a ``story`` or ``text`` column (or the one named by ``column``).

Every story is tokenized on its own and followed by the tokenizer's end-of-text token when it
has one (``[EOS]`` in the SimpleStories tokenizer); the stories' tokens are concatenated in file
order and cut into non-overlapping windows of ``context + 1`` tokens (inputs: the first
``context``, targets: the last ``context``).

Split: the validation pool comes from the corpus's last stories: the fewest final stories whose
tokens fill ``validation_size`` windows (their first ``validation_size × (context + 1)`` tokens).
Training uses only the stories before them (so no story, and no token, is shared), capped to the
first ``max_stories`` if given; the pool does not depend on the cap.

``download: true`` fetches what is missing from the Hugging Face Hub (the dataset repository
``SimpleStories/SimpleStories`` and ``tokenizer.json`` of the model repository
``SimpleStories/SimpleStories-35M``, which carries the corpus's tokenizer); nothing is downloaded
otherwise.
"""

from __future__ import annotations

import fnmatch
import json
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Iterator

import numpy as np

from specreach.data.base import Batch, DataInfo, DataSource
from specreach.data.batching import batches_in_order, shuffled_order
from specreach.data.token_windows import TokenWindows, held_out_tokens, token_dtype
from specreach.params.data import SimpleStoriesParams

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl")
TEXT_COLUMNS = ("story", "text")
END_OF_TEXT_TOKENS = ("[EOS]", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
TOKENIZER_FILE = "tokenizer.json"
ENCODE_CHUNK = 4096  # stories per encode_batch call: parallel encoding, bounded memory


def how_to_get(params: SimpleStoriesParams) -> str:
    return (
        f"Get a local copy with download: true, or with `huggingface-cli download {params.dataset_repo} "
        f"--repo-type dataset --local-dir {params.directory}` and `huggingface-cli download "
        f"{params.tokenizer_repo} {TOKENIZER_FILE} --local-dir {params.directory}`."
    )


def find_data_files(directory: Path, pattern: str) -> list[Path]:
    if not directory.is_dir():
        return []
    found = {
        path.relative_to(directory).as_posix(): path
        for path in directory.rglob("*")
        if path.suffix in DATA_SUFFIXES and path.is_file()
    }
    return [found[relative] for relative in sorted(found) if fnmatch.fnmatch(relative, pattern)]


def pick_column(file: Path, columns: list[str], wanted: str | None) -> str:
    candidates = (wanted,) if wanted else TEXT_COLUMNS
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ValueError(f"{file} has no column {' or '.join(repr(c) for c in candidates)} (its columns: {columns})")


def read_stories(file: Path, wanted_column: str | None) -> list[str]:
    """The stories of one data file, in file order."""
    if file.suffix == ".jsonl":
        rows = []
        with open(file, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{file}, line {number}: not a JSON object ({error})") from error
        if any(not isinstance(row, dict) for row in rows):
            raise ValueError(f"{file}: every line must be a JSON object with a story or text field")
        column = pick_column(file, list(rows[0]) if rows else [], wanted_column)
        stories = [row.get(column) for row in rows]
    else:
        column, stories = read_arrow_column(file, wanted_column)
    if any(not isinstance(story, str) for story in stories):
        raise ValueError(f"{file}: the column '{column}' must hold text in every row")
    return stories


def read_arrow_column(file: Path, wanted_column: str | None) -> tuple[str, list]:
    """(column name, its values) of a Parquet file or an Arrow stream; reads that column only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.suffix == ".parquet":  # the Hub's files carry metadata columns besides the story
            column = pick_column(file, pq.read_schema(file).names, wanted_column)
            return column, pq.read_table(file, columns=[column]).column(column).to_pylist()
        with pa.memory_map(str(file)) as source:  # datasets.save_to_disk writes Arrow streams
            table = pa.ipc.open_stream(source).read_all()
        column = pick_column(file, table.column_names, wanted_column)
        return column, table.column(column).to_pylist()
    except pa.ArrowInvalid as error:
        raise ValueError(f"{file} is not a readable {file.suffix[1:]} file: {error}") from error


class SimpleStories(DataSource):
    name = "simplestories"
    Params = SimpleStoriesParams

    # --- files -----------------------------------------------------------------------------

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer

        path = self.params.directory / TOKENIZER_FILE
        if not path.is_file() and self.params.download:
            from huggingface_hub import hf_hub_download

            hf_hub_download(
                repo_id=self.params.tokenizer_repo, filename=TOKENIZER_FILE, local_dir=self.params.directory
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"simplestories: the tokenizer {path} does not exist (expected the SimpleStories tokenizer as a "
                f"tokenizers JSON file). {how_to_get(self.params)}"
            )
        try:
            return Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for a malformed file
            raise ValueError(f"{path} is not a tokenizers JSON file: {error}") from error

    @cached_property
    def _files(self) -> list[Path]:
        p = self.params
        files = find_data_files(p.directory, p.files)
        if not files and p.download:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=p.dataset_repo, repo_type="dataset", local_dir=p.directory)
            files = find_data_files(p.directory, p.files)
        if not files:
            raise FileNotFoundError(
                f"simplestories: no data file matching '{p.files}' under {p.directory} (expected .parquet, .arrow "
                f"or .jsonl files with a 'story' or 'text' column, and {TOKENIZER_FILE}). {how_to_get(p)}"
            )
        return files

    # --- tokens ----------------------------------------------------------------------------

    @cached_property
    def _end_of_text(self) -> list[int]:
        for token in END_OF_TEXT_TOKENS:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return [token_id]
        return []

    @property
    def vocab(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, stories: list[str]) -> list[list[int]]:
        """Each story's tokens followed by the end-of-text token (if the tokenizer has one)."""
        encodings = self._tokenizer.encode_batch(stories, add_special_tokens=False)
        return [encoding.ids + self._end_of_text for encoding in encodings]

    def _stream(self, token_lists: list[list[int]]) -> np.ndarray:
        """One flat token array (the smallest dtype that fits: a whole corpus is large)."""
        total = sum(len(tokens) for tokens in token_lists)
        return np.fromiter(chain.from_iterable(token_lists), dtype=token_dtype(self.vocab), count=total)

    # --- split -----------------------------------------------------------------------------

    @cached_property
    def _held_out(self) -> tuple[tuple[int, int], TokenWindows]:
        """((file number, story number) where the held-out stories begin, the validation windows).

        Reads files from the last one backwards, only as far as the pool needs."""
        p = self.params
        needed = held_out_tokens(p.validation_size, p.context)
        collected: list[list[int]] = []  # held-out stories' tokens, last story first
        count = 0
        for file_number in reversed(range(len(self._files))):
            stories = read_stories(self._files[file_number], p.column)
            for end in range(len(stories), 0, -ENCODE_CHUNK):
                first = max(end - ENCODE_CHUNK, 0)
                encoded = self._encode(stories[first:end])
                for offset in reversed(range(len(encoded))):
                    collected.append(encoded[offset])
                    count += len(encoded[offset])
                    if count >= needed:
                        tokens = self._stream(collected[::-1])[:needed]
                        return (file_number, first + offset), TokenWindows(tokens, p.context)
        raise ValueError(
            f"simplestories: the corpus ({len(self._files)} files under {p.directory}) has {count} tokens, too few for "
            f"a validation pool of {p.validation_size} windows of {p.context + 1} tokens; "
            "use a smaller validation_size or context"
        )

    @cached_property
    def _train_windows(self) -> TokenWindows:
        p = self.params
        (boundary_file, boundary_story), _ = self._held_out
        remaining = p.max_stories  # None: no cap
        chunks = []
        for file_number in range(boundary_file + 1):
            stories = read_stories(self._files[file_number], p.column)
            if file_number == boundary_file:
                stories = stories[:boundary_story]
            if remaining is not None:
                stories = stories[:remaining]
                remaining -= len(stories)
            # Flat arrays per chunk: lists of Python ints for a whole corpus would not fit in memory.
            chunks.extend(self._stream(self._encode(stories[first: first + ENCODE_CHUNK]))
                          for first in range(0, len(stories), ENCODE_CHUNK))
            if remaining == 0:
                break
        windows = TokenWindows(np.concatenate(chunks) if chunks else self._stream([]), p.context)
        if windows.count == 0:
            raise ValueError(
                f"simplestories: no training window of {p.context + 1} tokens is left before the validation pool's "
                "stories; use a smaller validation_size or context, or more stories"
            )
        return windows

    # --- interface -------------------------------------------------------------------------

    def info(self) -> DataInfo:
        # The window count needs the whole corpus tokenized: unknown until training starts.
        return DataInfo(task="next-token", input_shape=(self.params.context,), vocab=self.vocab)

    def validation_pool(self) -> Batch:
        return self._held_out[1].all()

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        windows = self._train_windows
        return batches_in_order(shuffled_order(windows.count, data_seed), batch_size, start, windows.batch)
