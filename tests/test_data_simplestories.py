"""simplestories: file discovery, the story-level split checked against an independent tokenization,
the formats (parquet, JSON lines, Arrow), and errors that say how to get the data."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from specreach.data import SimpleStories
from test_data_contract import make_stories, write_simplestories_jsonl, write_simplestories_parquet, write_tokenizer

CONTEXT, VALIDATION = 16, 4


def expected_split(stories, tokenizer_path, max_stories=None):
    """(training windows, validation windows) by the documented rule, tokenized independently."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos = tokenizer.token_to_id("[EOS]")
    encoded = [tokenizer.encode(story, add_special_tokens=False).ids + [eos] for story in stories]
    needed, total, boundary = VALIDATION * (CONTEXT + 1), 0, len(encoded)
    while total < needed:
        boundary -= 1
        total += len(encoded[boundary])
    held_out = [token for tokens in encoded[boundary:] for token in tokens][:needed]
    training_stories = encoded[:boundary][:max_stories]
    training = [token for tokens in training_stories for token in tokens]
    count = len(training) // (CONTEXT + 1)
    return (np.array(training[: count * (CONTEXT + 1)]).reshape(count, CONTEXT + 1),
            np.array(held_out).reshape(VALIDATION, CONTEXT + 1))


def windows_of(batches):
    """The windows (inputs plus the last target) of all batches, sorted: the order is the seed's."""
    return sorted(row for inputs, targets in batches for row in torch.cat([inputs, targets[:, -1:]], dim=1).tolist())


@pytest.fixture
def parquet_copy(tmp_path):
    return tmp_path, write_simplestories_parquet(tmp_path)


def test_split_matches_an_independent_tokenization(parquet_copy):
    directory, stories = parquet_copy
    source = SimpleStories(directory=directory, context=CONTEXT, validation_size=VALIDATION)
    training, held_out = expected_split(stories, directory / "tokenizer.json")
    inputs, targets = source.validation_pool()
    assert torch.equal(torch.cat([inputs, targets[:, -1:]], dim=1), torch.from_numpy(held_out))
    assert windows_of(source.train_batches(1, data_seed=0)) == sorted(training.tolist())


def test_only_files_matching_the_pattern_are_read(parquet_copy):
    """The test shard is excluded by the default pattern '*train*'; '*' reads it too (first, by path)."""
    directory, stories = parquet_copy
    everything = SimpleStories(directory=directory, files="*", context=CONTEXT, validation_size=VALIDATION)
    assert everything.validation_pool()[0].tolist() == SimpleStories(
        directory=directory, context=CONTEXT, validation_size=VALIDATION).validation_pool()[0].tolist()
    training, _ = expected_split(make_stories(10, seed=99) + stories, directory / "tokenizer.json")
    assert windows_of(everything.train_batches(1, data_seed=0)) == sorted(training.tolist())


def test_stories_end_with_the_end_of_text_token(parquet_copy):
    directory, stories = parquet_copy
    source = SimpleStories(directory=directory, context=CONTEXT, validation_size=VALIDATION)
    eos = Tokenizer.from_file(str(directory / "tokenizer.json")).token_to_id("[EOS]")
    tokens = torch.cat([x.flatten() for x, _ in source.train_batches(64, data_seed=0)])
    assert (tokens == eos).sum() >= len(stories) // 3
    assert source.info().vocab == 300 and source.info().input_shape == (CONTEXT,)


def test_max_stories_caps_training_but_not_the_pool(parquet_copy):
    directory, stories = parquet_copy
    capped = SimpleStories(directory=directory, context=CONTEXT, validation_size=VALIDATION, max_stories=7)
    full = SimpleStories(directory=directory, context=CONTEXT, validation_size=VALIDATION)
    training, _ = expected_split(stories, directory / "tokenizer.json", max_stories=7)
    assert windows_of(capped.train_batches(1, data_seed=0)) == sorted(training.tolist())
    assert torch.equal(capped.validation_pool()[0], full.validation_pool()[0])


def test_json_lines_with_a_text_column(tmp_path):
    stories = write_simplestories_jsonl(tmp_path)
    source = SimpleStories(directory=tmp_path, context=CONTEXT, validation_size=VALIDATION)
    training, held_out = expected_split(stories, tmp_path / "tokenizer.json")
    assert windows_of(source.train_batches(1, data_seed=0)) == sorted(training.tolist())
    assert windows_of([source.validation_pool()]) == sorted(held_out.tolist())
    with pytest.raises(ValueError, match="no column 'story'"):
        SimpleStories(directory=tmp_path, column="story", context=CONTEXT, validation_size=VALIDATION).validation_pool()


def test_arrow_stream_of_a_saved_dataset(tmp_path):
    """datasets.save_to_disk writes train/data-00000-of-00001.arrow as an Arrow stream."""
    stories = make_stories(40)
    (tmp_path / "train").mkdir()
    table = pa.table({"story": stories})
    with pa.OSFile(str(tmp_path / "train" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    write_tokenizer(tmp_path / "tokenizer.json", stories)
    source = SimpleStories(directory=tmp_path, context=CONTEXT, validation_size=VALIDATION)
    training, _ = expected_split(stories, tmp_path / "tokenizer.json")
    assert windows_of(source.train_batches(1, data_seed=0)) == sorted(training.tolist())


def test_missing_copy_says_how_to_get_it_and_never_downloads(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded"))
    missing = tmp_path / "no-copy"
    with pytest.raises(FileNotFoundError) as error:
        SimpleStories(directory=missing).info()
    message = str(error.value)
    assert str(missing / "tokenizer.json") in message and "download: true" in message
    assert "huggingface-cli download SimpleStories/SimpleStories --repo-type dataset --local-dir" in message
    write_tokenizer(missing.with_name("tok.json"), make_stories(5))
    missing.mkdir()
    missing.with_name("tok.json").rename(missing / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"no data file matching '\*train\*'.*huggingface-cli download"):
        SimpleStories(directory=missing).validation_pool()


def test_malformed_files_say_why(tmp_path):
    write_tokenizer(tmp_path / "tokenizer.json", make_stories(20))
    (tmp_path / "train.jsonl").write_text(json.dumps({"story": "fine"}) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: not a JSON object"):
        SimpleStories(directory=tmp_path).validation_pool()
    (tmp_path / "train.jsonl").write_text(json.dumps({"story": 3}) + "\n")
    with pytest.raises(ValueError, match="must hold text"):
        SimpleStories(directory=tmp_path).validation_pool()
    (tmp_path / "train.jsonl").unlink()
    pq.write_table(pa.table({"content": ["a story"]}), tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet has no column 'story' or 'text' \(its columns: \['content'\]\)"):
        SimpleStories(directory=tmp_path).validation_pool()
    (tmp_path / "train.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        SimpleStories(directory=tmp_path).validation_pool()
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tokenizers JSON file"):
        SimpleStories(directory=tmp_path).info()


def test_too_little_text_for_the_pool(parquet_copy):
    directory, _ = parquet_copy
    with pytest.raises(ValueError, match="too few for a validation pool"):
        SimpleStories(directory=directory, context=CONTEXT, validation_size=10_000).validation_pool()
