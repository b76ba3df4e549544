"""cifar5m: the two tasks, the split, lazy part reading, and errors for missing or malformed parts."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from specreach.data import Cifar5m
from test_data_contract import cifar5m_arrays, write_cifar5m_parts

SPLIT = dict(train_parts=(0, 1, 2), validation_part=2, validation_size=6)


def markers(inputs):
    """(part, index) written into each image's first two pixel values (classification inputs)."""
    codes = (inputs[:, :2, 0, 0] * 255).round().long()
    return [tuple(code) for code in codes.tolist()]


@pytest.fixture
def parts(tmp_path):
    return tmp_path, write_cifar5m_parts(tmp_path, sizes=(20, 16, 24))


def test_classification_inputs_are_rgb_in_unit_range(parts):
    directory, arrays = parts
    inputs, targets = Cifar5m(directory=directory, **SPLIT).validation_pool()
    images, labels = arrays[2]
    expected = torch.from_numpy(images[-6:]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(inputs, expected) and torch.equal(targets, torch.from_numpy(labels[-6:]))
    assert inputs.shape == (6, 3, 32, 32) and 0 <= inputs.min() and inputs.max() <= 1


def test_next_pixel_tokens_are_rounded_luma_shifted_by_one(parts):
    directory, arrays = parts
    inputs, targets = Cifar5m(directory=directory, task="next-pixel", **SPLIT).validation_pool()
    rgb = arrays[2][0][-6:].reshape(6, 1024, 3).astype(np.int64)
    gray = (rgb @ np.array([299, 587, 114]) + 500) // 1000  # luma rounded half up, exactly
    assert np.abs(gray - rgb @ np.array([0.299, 0.587, 0.114])).max() <= 0.5 + 1e-9
    assert inputs.shape == targets.shape == (6, 1023) and inputs.dtype == torch.int64
    assert np.array_equal(inputs.numpy(), gray[:, :-1]) and np.array_equal(targets.numpy(), gray[:, 1:])
    source = Cifar5m(directory=directory, task="next-pixel", **SPLIT)
    info = source.info()
    assert (info.task, info.input_shape, info.vocab) == ("next-token", (1023,), 256)
    assert source.params.task_outputs() == info.task_outputs()  # what validation checks models against
    classifier = Cifar5m(directory=directory, **SPLIT)
    assert classifier.params.task_outputs() == classifier.info().task_outputs()


def test_split_holds_out_the_validation_parts_tail(parts):
    directory, _ = parts
    source = Cifar5m(directory=directory, **SPLIT)
    assert source.info().train_samples == 20 + 16 + 24 - 6
    assert markers(source.validation_pool()[0]) == [(2, index) for index in range(18, 24)]
    seen = {marker for batch in source.train_batches(1, data_seed=0) for marker in markers(batch[0])}
    expected = {(0, i) for i in range(20)} | {(1, i) for i in range(16)} | {(2, i) for i in range(18)}
    assert seen == expected


def test_max_train_samples_takes_a_fixed_prefix_in_part_order(parts):
    directory, _ = parts
    source = Cifar5m(directory=directory, max_train_samples=25, **SPLIT)
    assert source.info().train_samples == 25
    for seed in (0, 1):
        seen = {marker for batch in source.train_batches(1, data_seed=seed) for marker in markers(batch[0])}
        assert seen == {(0, i) for i in range(20)} | {(1, i) for i in range(5)}


def test_block_shuffle_reads_at_most_two_parts_per_batch_and_keeps_two_open(parts):
    directory, _ = parts
    source = Cifar5m(directory=directory, **SPLIT)
    for batch in source.train_batches(8, data_seed=2):
        assert len({part for part, _ in markers(batch[0])}) <= 2
        assert len(source._open) <= 2


def test_stored_parts_are_memory_mapped_and_compressed_parts_give_the_same_data(tmp_path):
    write_cifar5m_parts(tmp_path / "stored", sizes=(12, 12))
    write_cifar5m_parts(tmp_path / "compressed", sizes=(12, 12), compressed=True)
    split = dict(train_parts=(0, 1), validation_part=1, validation_size=3)
    stored = Cifar5m(directory=tmp_path / "stored", **split)
    compressed = Cifar5m(directory=tmp_path / "compressed", **split)
    for a, b in zip(stored.train_batches(5, data_seed=0), compressed.train_batches(5, data_seed=0)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert isinstance(stored._arrays(0)[0], np.memmap)
    assert not isinstance(compressed._arrays(0)[0], np.memmap)


def test_info_reads_headers_only(parts, monkeypatch):
    directory, _ = parts
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("info() loaded an array"))
    monkeypatch.setattr(np, "memmap", lambda *a, **k: pytest.fail("info() mapped an array"))
    assert Cifar5m(directory=directory, **SPLIT).info().train_samples == 54


def test_missing_directory_or_part_says_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as error:
        Cifar5m(directory=missing).info()
    assert "github.com/preetum/cifar5m" in str(error.value) and "cifar5m_part0.npz" in str(error.value)
    write_cifar5m_parts(tmp_path / "three", sizes=(4, 4, 4))
    with pytest.raises(FileNotFoundError, match=r"cifar5m_part5\.npz.*github.com/preetum/cifar5m"):
        Cifar5m(directory=tmp_path / "three").validation_pool()


def write_part(directory, **arrays):
    directory.mkdir(exist_ok=True)
    np.savez(directory / "cifar5m_part0.npz", **arrays)
    return Cifar5m(directory=directory, train_parts=(0,), validation_part=0, validation_size=2)


IMAGES, LABELS = cifar5m_arrays(6, 0)


@pytest.mark.parametrize("arrays, reason", [
    ({"images": IMAGES, "Y": LABELS}, "no array 'X'"),
    ({"X": IMAGES, "labels": LABELS}, "no array 'Y'"),
    ({"X": IMAGES[..., 0], "Y": LABELS}, r"shape \(6, 32, 32\), expected \(N, 32, 32, 3\)"),
    ({"X": IMAGES.astype(np.float32), "Y": LABELS}, "dtype float32, expected uint8"),
    ({"X": IMAGES, "Y": LABELS[:5]}, "one label per image"),
    ({"X": IMAGES, "Y": LABELS.astype(np.float64)}, "expected integer class labels"),
])
def test_malformed_parts_say_why(tmp_path, arrays, reason):
    with pytest.raises(ValueError, match=reason):
        write_part(tmp_path / "bad", **arrays).info()


def test_labels_out_of_range_are_rejected_when_read(tmp_path):
    source = write_part(tmp_path / "bad", X=IMAGES, Y=LABELS + 10)
    with pytest.raises(ValueError, match=r"labels in \[\d+, \d+\], expected \[0, 10\)"):
        source.validation_pool()


def test_a_file_that_is_not_an_npz_archive(tmp_path):
    (tmp_path / "cifar5m_part0.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an .npz archive"):
        Cifar5m(directory=tmp_path, train_parts=(0,), validation_part=0, validation_size=1).info()


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValidationError, match="distinct"):
        Cifar5m(directory=tmp_path, train_parts=(0, 0))
    with pytest.raises(ValidationError):
        Cifar5m(directory=tmp_path, task="segmentation")
    with pytest.raises(ValidationError):
        Cifar5m(directory=tmp_path, max_train_samples=0)
    write_cifar5m_parts(tmp_path, sizes=(4,))
    with pytest.raises(ValueError, match="fewer than validation_size"):
        Cifar5m(directory=tmp_path, train_parts=(0,), validation_part=0, validation_size=5).validation_pool()


@pytest.mark.parametrize("name", ["vit-cifar5m", "vit-cifar5m-mup"])
def test_vit_specs_train_on_five_parts_and_hold_out_the_test_part(tmp_path, name):
    """Appendix B.2.2: 5M training and 1M test images. The ViT specs train on parts 0-4 and take
    their validation pool from part 5, which no training batch reads."""
    from pathlib import Path

    from specreach import load_spec

    params = dict(load_spec(Path(__file__).resolve().parents[1] / "specs" / f"{name}.yaml").data.params)
    write_cifar5m_parts(tmp_path, sizes=(3, 4, 3, 5, 4, 6))
    params.update(directory=tmp_path, validation_size=2)  # the spec's split on tiny parts
    source = Cifar5m(**params)
    assert source.info().train_samples == 3 + 4 + 3 + 5 + 4
    seen = {marker for batch in source.train_batches(1, data_seed=0) for marker in markers(batch[0])}
    assert {part for part, _ in seen} == {0, 1, 2, 3, 4}
    assert markers(source.validation_pool()[0]) == [(5, 4), (5, 5)]
