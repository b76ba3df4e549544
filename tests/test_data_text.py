"""text-file and pydoc-text: windows cut from the expected stream, the held-out tail, the BPE
trained on the training text only, and errors for missing or unreadable text."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from specreach.data import PydocText, TextFile, pydoc_bytes
from specreach.data.bpe import train_byte_level_bpe
from test_data_contract import random_words, write_text_folder

CONTEXT, VALIDATION = 16, 4


def windows(tokens, context):
    count = len(tokens) // (context + 1)
    return sorted(np.asarray(tokens[: count * (context + 1)]).reshape(count, context + 1).tolist())


def windows_of(batches):
    return sorted(row for inputs, targets in batches for row in torch.cat([inputs, targets[:, -1:]], dim=1).tolist())


def check_byte_split(source, stream, context, validation_size):
    held_out = validation_size * (context + 1)
    assert windows_of(source.train_batches(1, data_seed=0)) == windows(list(stream[:-held_out]), context)
    assert windows_of([source.validation_pool()]) == windows(list(stream[-held_out:]), context)


def test_byte_tokens_of_a_folder_in_name_order(tmp_path):
    texts = write_text_folder(tmp_path, files=3, words=200)
    (tmp_path / "0-first.txt").write_text("read before part0.txt\n")
    stream = "\n\n".join(["read before part0.txt\n", *texts]).encode()
    source = TextFile(path=tmp_path, context=CONTEXT, validation_size=VALIDATION)
    check_byte_split(source, stream, CONTEXT, VALIDATION)
    info = source.info()
    assert (info.vocab, info.input_shape) == (256, (CONTEXT,))
    assert info.train_samples == (len(stream) - VALIDATION * (CONTEXT + 1)) // (CONTEXT + 1)


def test_a_single_file_of_any_bytes(tmp_path):
    data = bytes(range(256)) * 4
    (tmp_path / "blob.bin").write_bytes(data)
    source = TextFile(path=tmp_path / "blob.bin", context=CONTEXT, validation_size=VALIDATION)
    check_byte_split(source, data, CONTEXT, VALIDATION)


def test_bpe_is_trained_on_the_training_text_only(tmp_path):
    text = random_words(3000, seed=4)
    (tmp_path / "corpus.txt").write_text(text)
    source = TextFile(path=tmp_path / "corpus.txt", tokenizer="bpe", vocab_size=300, context=CONTEXT,
                      validation_size=VALIDATION)
    tokenizer = source.bpe_tokenizer()
    held_out = torch.cat([source.validation_pool()[0], source.validation_pool()[1][:, -1:]], dim=1)
    held_out_text = tokenizer.decode(held_out.flatten().tolist())
    split = text.rindex(held_out_text)
    assert split > len(text) // 2
    assert tokenizer.to_str() == train_byte_level_bpe(text[:split], 300).to_str()  # never saw the tail
    head_tokens = tokenizer.encode(text[:split]).ids
    assert windows_of(source.train_batches(1, data_seed=0)) == windows(head_tokens, CONTEXT)
    assert source.info().vocab == 300 and source.info().train_samples is None
    assert source.params.task_outputs() == source.info().task_outputs()  # what validation checks models against


def test_bpe_needs_utf8_and_byte_tokens_take_anything(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 200)
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        TextFile(path=tmp_path, tokenizer="bpe").validation_pool()
    assert TextFile(path=tmp_path, context=8, validation_size=2).validation_pool()[0].shape == (2, 8)


def test_missing_or_empty_paths_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.txt does not exist; expected a text file, or a folder"):
        TextFile(path=tmp_path / "nothing.txt").info()
    (tmp_path / "notes.md").write_text("no .txt here")
    with pytest.raises(FileNotFoundError, match="has no .txt files"):
        TextFile(path=tmp_path).validation_pool()


def test_too_little_text(tmp_path):
    (tmp_path / "short.txt").write_text("short")
    with pytest.raises(ValueError, match="too few"):
        TextFile(path=tmp_path / "short.txt").validation_pool()
    with pytest.raises(ValueError, match="too few"):
        TextFile(path=tmp_path / "short.txt", tokenizer="bpe").validation_pool()


def test_parameter_checks(tmp_path):
    with pytest.raises(ValidationError, match="vocab_size applies to tokenizer: bpe only"):
        TextFile(path=tmp_path, vocab_size=512)
    with pytest.raises(ValidationError):
        TextFile(path=tmp_path, tokenizer="bpe", vocab_size=100)
    with pytest.raises(ValidationError):
        TextFile(path=tmp_path, tokenizer="wordpiece")
    with pytest.raises(ValidationError):
        PydocText(context=0)


def test_pydoc_text_is_the_help_topics_as_bytes():
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    stream = "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
    assert torch.equal(pydoc_bytes(), torch.tensor(list(stream)))
    source = PydocText(context=64, validation_size=32)
    check_byte_split(source, stream, 64, 32)
    assert source.info().train_samples == (len(stream) - 32 * 65) // 65
