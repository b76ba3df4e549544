"""Every built-in data source keeps the DataSource contract, on tiny files in each real format.

The file builders here (tiny CIFAR-5M parts, a SimpleStories copy with its own small BPE
tokenizer, random text) are shared with the source-specific ``test_data_*.py`` files.
"""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from specreach.data import Cifar5m, Digits, PowerlawTeacher, PydocText, SimpleStories, TextFile
from specreach.plugins import PluginManager

WORDS = ("the", "cat", "dog", "sun", "ran", "saw", "a", "big", "red", "box", "and", "then", "sky", "hid", "fox", "sat")


def random_words(count, seed):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


# --- CIFAR-5M ------------------------------------------------------------------------------


def cifar5m_arrays(count, part, seed=0):
    """Random images whose first two pixels spell (part, index), so every image is unique."""
    rng = np.random.default_rng([seed, part])
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = part
    images[:, 0, 0, 1] = np.arange(count)
    return images, rng.integers(0, 10, size=count).astype(np.int64)


def write_cifar5m_parts(directory, sizes=(24, 24, 24), compressed=False):
    directory.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    arrays = {}
    for part, count in enumerate(sizes):
        arrays[part] = cifar5m_arrays(count, part)
        save(directory / f"cifar5m_part{part}.npz", X=arrays[part][0], Y=arrays[part][1])
    return arrays


# --- SimpleStories -------------------------------------------------------------------------


def make_stories(count, seed=0):
    rng = random.Random(seed)
    return [f"Story {number}. " + random_words(rng.randint(8, 30), seed=1000 * seed + number)
            for number in range(count)]


def write_tokenizer(path, stories, vocab_size=300):
    """A small BPE tokenizer with [UNK] and [EOS], like the SimpleStories one (4096 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["[UNK]", "[EOS]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(stories, trainer)
    tokenizer.save(str(path))
    return tokenizer


def write_simplestories_parquet(directory, count=60):
    """The Hub layout: data/train-*.parquet shards (column 'story') and a test shard."""
    stories = make_stories(count)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    half = count // 2
    for shard, rows in enumerate((stories[:half], stories[half:])):
        pq.write_table(pa.table({"story": rows, "id": list(range(len(rows)))}),
                       directory / "data" / f"train-0000{shard}-of-00002.parquet")
    pq.write_table(pa.table({"story": make_stories(10, seed=99)}), directory / "data" / "test-00000-of-00001.parquet")
    write_tokenizer(directory / "tokenizer.json", stories)
    return stories


def write_simplestories_jsonl(directory, count=60):
    stories = make_stories(count, seed=1)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w", encoding="utf-8") as file:
        for story in stories:
            file.write(json.dumps({"text": story, "source": "test"}) + "\n")
    write_tokenizer(directory / "tokenizer.json", stories)
    return stories


# --- text ----------------------------------------------------------------------------------


def write_text_folder(directory, files=3, words=400):
    directory.mkdir(parents=True, exist_ok=True)
    texts = [random_words(words, seed=number) + "\n" for number in range(files)]
    for number, text in enumerate(texts):
        (directory / f"part{number}.txt").write_text(text, encoding="utf-8")
    (directory / "notes.md").write_text("not a .txt file, not read")
    return texts


# --- the contract --------------------------------------------------------------------------

SOURCES = {
    "powerlaw-teacher": lambda tmp: PowerlawTeacher(inputs=6, features=12, train_size=40, validation_size=8),
    "cifar5m-classification": lambda tmp: Cifar5m(
        directory=tmp / "cifar5m", task="classification", train_parts=(0, 1, 2), validation_part=2, validation_size=6),
    "cifar5m-next-pixel": lambda tmp: Cifar5m(
        directory=tmp / "cifar5m", task="next-pixel", train_parts=(0, 1, 2), validation_part=2, validation_size=6),
    "simplestories-parquet": lambda tmp: SimpleStories(directory=tmp / "stories", context=16, validation_size=4),
    "simplestories-jsonl": lambda tmp: SimpleStories(directory=tmp / "stories-jsonl", context=16, validation_size=4),
    "text-file-bytes": lambda tmp: TextFile(path=tmp / "text", context=16, validation_size=4),
    "text-file-bpe": lambda tmp: TextFile(path=tmp / "text", tokenizer="bpe", vocab_size=280, context=16,
                                          validation_size=4),
    "pydoc-text": lambda tmp: PydocText(context=32, validation_size=16),
    "digits": lambda tmp: Digits(validation_size=97),
}
PYDOC_HAS_REPEATS = {"pydoc-text"}  # real text repeats some windows; the others' samples are all distinct


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_cifar5m_parts(directory / "cifar5m")
    write_simplestories_parquet(directory / "stories")
    write_simplestories_jsonl(directory / "stories-jsonl")
    write_text_folder(directory / "text")
    return directory


def rows(batch):
    """Each sample of a batch as bytes (inputs then targets): identifies it by content."""
    inputs, targets = batch
    return [x.numpy().tobytes() + y.numpy().tobytes() for x, y in zip(inputs, targets)]


def same_batches(first, second):
    return len(first) == len(second) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))


def check_batch(batch, info):
    inputs, targets = batch
    assert tuple(inputs.shape[1:]) == info.input_shape
    if info.task == "next-token":
        assert inputs.dtype == targets.dtype == torch.int64 and targets.shape == inputs.shape
        assert 0 <= int(inputs.min()) and int(inputs.max()) < info.vocab and int(targets.max()) < info.vocab
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    elif info.task == "classification":
        assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
        assert targets.shape == (len(inputs),) and 0 <= int(targets.min()) and int(targets.max()) < info.classes
    else:
        assert info.task == "regression"
        assert inputs.dtype == targets.dtype == torch.float32 and targets.shape == (len(inputs), 1)


BATCH = 7


@pytest.mark.parametrize("kind", SOURCES)
def test_batches_match_info_and_are_full(kind, data_dir):
    source = SOURCES[kind](data_dir)
    info = source.info()
    epoch = list(source.train_batches(BATCH, data_seed=0))
    for batch in epoch:
        check_batch(batch, info)
        assert len(batch[0]) == BATCH
    check_batch(source.validation_pool(), info)
    if info.train_samples is not None:
        assert len(epoch) == info.train_samples // BATCH  # the training loop's steps per epoch


@pytest.mark.parametrize("kind", SOURCES)
def test_an_epoch_of_single_samples_is_every_training_sample_once(kind, data_dir):
    source = SOURCES[kind](data_dir)
    seen = [row for batch in source.train_batches(1, data_seed=0) for row in rows(batch)]
    if source.info().train_samples is not None:
        assert len(seen) == source.info().train_samples
    if kind not in PYDOC_HAS_REPEATS:
        assert len(set(seen)) == len(seen)


@pytest.mark.parametrize("kind", SOURCES)
def test_order_depends_on_the_data_seed_only(kind, data_dir):
    first = list(SOURCES[kind](data_dir).train_batches(BATCH, data_seed=3))
    torch.manual_seed(123)  # the global RNG (model seeds) must not matter
    again = list(SOURCES[kind](data_dir).train_batches(BATCH, data_seed=3))
    other = list(SOURCES[kind](data_dir).train_batches(BATCH, data_seed=4))
    assert same_batches(first, again)
    assert not same_batches(first, other)
    assert len(first) == len(other)


@pytest.mark.parametrize("kind", SOURCES)
def test_start_skips_batches(kind, data_dir):
    source = SOURCES[kind](data_dir)
    everything = list(source.train_batches(BATCH, data_seed=1))
    assert same_batches(list(source.train_batches(BATCH, data_seed=1, start=2)), everything[2:])
    assert list(source.train_batches(BATCH, data_seed=1, start=len(everything))) == []


@pytest.mark.parametrize("kind", SOURCES)
def test_validation_pool_is_fixed_and_never_in_the_training_stream(kind, data_dir):
    pool = SOURCES[kind](data_dir).validation_pool()
    source = SOURCES[kind](data_dir)
    training = {row for batch in source.train_batches(1, data_seed=0) for row in rows(batch)}
    again = source.validation_pool()
    assert torch.equal(pool[0], again[0]) and torch.equal(pool[1], again[1])
    assert training.isdisjoint(rows(pool))


@pytest.mark.parametrize("kind", SOURCES)
def test_bad_batch_requests_fail_at_the_call(kind, data_dir):
    source = SOURCES[kind](data_dir)
    with pytest.raises(ValueError, match="batch_size"):
        source.train_batches(0, data_seed=0)
    with pytest.raises(ValueError, match="start"):
        source.train_batches(4, data_seed=0, start=-1)


@pytest.mark.parametrize("source_class, required", [
    (PowerlawTeacher, {}), (Cifar5m, {"directory": "x"}), (SimpleStories, {"directory": "x"}),
    (TextFile, {"path": "x"}), (PydocText, {}), (Digits, {}),
])
def test_unknown_and_invalid_parameters_are_rejected(source_class, required):
    with pytest.raises(ValidationError, match="extra"):
        source_class(**required, not_an_option=1)
    with pytest.raises(ValidationError, match="validation_size"):
        source_class(**required, validation_size=0)
    assert source_class(**required).params.model_config["frozen"]
    assert all(field.description for field in source_class.Params.model_fields.values())


def test_builtins_register_through_the_hook():
    registered = PluginManager(load_entry_points=False).datasets()
    names = {"powerlaw-teacher", "cifar5m", "simplestories", "text-file", "pydoc-text", "digits"}
    assert names <= set(registered)
    assert {registered[name].source for name in names} == {"specreach.builtins"}
