"""digits: scikit-learn's 8×8 digits, scaled to [0, 1], with a fixed tail held out."""

import torch
from sklearn.datasets import load_digits

from specreach.data import Digits


def samples(inputs, labels):
    """Sorted (pixels, label) pairs: the set of samples whatever their order."""
    return sorted(zip(map(tuple, inputs.flatten(1).tolist()), labels.tolist()))


def test_inputs_are_the_images_scaled_and_the_tail_is_held_out():
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16
    labels = torch.from_numpy(digits.target).long()
    source = Digits(validation_size=200)
    inputs, targets = source.validation_pool()
    assert torch.equal(inputs, images[-200:]) and torch.equal(targets, labels[-200:])
    batches = list(source.train_batches(1, data_seed=0))
    train_inputs, train_labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert len(train_inputs) == len(digits.images) - 200 == source.info().train_samples
    assert 0 <= train_inputs.min() and train_inputs.max() <= 1
    assert samples(train_inputs, train_labels) == samples(images[:-200], labels[:-200])


def test_next_pixel_task_predicts_each_level_from_the_ones_before():
    source = Digits(task="next-pixel", validation_size=97)
    info = source.info()
    assert (info.task, info.vocab, info.input_shape) == ("next-token", 17, (63,))
    inputs, targets = source.validation_pool()
    levels = torch.from_numpy(load_digits().images).long().reshape(-1, 64)[-97:]
    assert torch.equal(inputs, levels[:, :-1]) and torch.equal(targets, levels[:, 1:])
    x, y = next(source.train_batches(5, data_seed=0))
    assert x.shape == (5, 63) and y.dtype == torch.int64 and int(x.max()) <= 16
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one pixel
