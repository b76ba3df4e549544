"""Model + loss + batches for every architecture the core must handle, built in the current dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import models


def token_cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _classification(model, shape, classes, n_a=5, n_b=4):
    a = (torch.randn(n_a, *shape), torch.randint(0, classes, (n_a,)))
    b = (torch.randn(n_b, *shape), torch.randint(0, classes, (n_b,)))
    return model, F.cross_entropy, a, b


def mlp():
    return _classification(models.mlp_classifier(), (6,), 3)


def llama():
    model = models.tiny_llama(vocab=11, context=5)
    a = (torch.randint(0, 11, (3, 5)), torch.randint(0, 11, (3, 5)))
    b = (torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 5)))
    return model, token_cross_entropy, a, b


def vit():
    return _classification(models.tiny_vit(classes=3), (1, 8, 8), 3, n_a=3, n_b=2)


def random_features():
    model = models.RandomFeatures(inputs=5, features=16)
    with torch.no_grad():
        model.readout.weight.normal_()  # away from the zero init, so that f and g are generic
    a = (torch.randn(6, 5), torch.randn(6, 1))
    b = (torch.randn(4, 5), torch.randn(4, 1))
    return model, F.mse_loss, a, b


def mup_mlp():
    return _classification(models.mup_mlp(width=12), (6,), 3)


CASES = {"mlp": mlp, "llama": llama, "vit": vit, "random_features": random_features, "mup": mup_mlp}


def build(name, seed=0):
    torch.manual_seed(seed)
    return CASES[name]()
