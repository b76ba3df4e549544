"""Measuring leaves the model, its gradients and the global RNG as it found them."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cases
from specreach import measure_lnp, measure_lnp_at_step


class CallCounter(nn.Module):
    """A module that updates a buffer on every forward (as running statistics do)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x


class DropoutNet(nn.Module):
    """Dropout draws from the global RNG in train mode; BatchNorm (eval) has buffers."""

    def __init__(self, count_calls=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3))
        self.counter = CallCounter() if count_calls else nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.counter(self.body(x)))


def hook_state(model):
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
         len(getattr(m, "_backward_pre_hooks", {})), sorted(vars(m)))
        for m in model.modules()
    ]


@pytest.mark.parametrize("estimator", ["exact", "hutchinson", "entk"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_state_is_untouched(estimator, mode):
    torch.manual_seed(0)
    model = DropoutNet().train(mode == "train")
    model.body[1].eval()  # BatchNorm in train mode couples samples: refused, see below
    with torch.no_grad():
        model.body[1].running_mean.normal_()
    batch_a = (torch.randn(5, 6), torch.randint(0, 3, (5,)))
    batch_b = (torch.randn(4, 6), torch.randint(0, 3, (4,)))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    state = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    hooks, params = hook_state(model), [vars(p).copy() for p in model.parameters()]
    rng = torch.get_rng_state()

    measure_lnp(model, F.cross_entropy, batch_a, batch_b, estimator=estimator,
                generator=torch.Generator().manual_seed(0))

    assert model.training is (mode == "train")
    assert [m.training for m in model.modules()] == [m is not model.body[1] and mode == "train"
                                                      for m in model.modules()]
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert hook_state(model) == hooks  # no hooks, no Opacus attributes on modules
    assert [vars(p) for p in model.parameters()] == params  # no grad_sample & co. on parameters
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_buffers_changed_by_forward_are_restored(estimator):
    model = DropoutNet(count_calls=True).eval()
    batch = (torch.randn(5, 6), torch.randint(0, 3, (5,)))
    measure_lnp(model, F.cross_entropy, batch, batch, estimator=estimator)
    assert model.counter.calls.item() == 0


def test_batchnorm_in_training_mode_is_refused():
    model = DropoutNet().train()
    with pytest.raises(ValueError, match="module 'body.1' is a BatchNorm1d that normalizes with the statistics of the batch \\(training mode\\).*model.eval"):
        measure_lnp(model, F.cross_entropy, (torch.randn(5, 6), torch.randint(0, 3, (5,))))


def test_training_with_measurements_is_bit_identical():
    def train(measure_every):
        torch.manual_seed(0)
        model, loss_fn, _, _ = cases.llama()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(1)
        probe_generator = torch.Generator().manual_seed(2)
        for step in range(6):
            tokens = torch.randint(0, 11, (4, 5), generator=data)
            held_out = torch.randint(0, 11, (4, 5), generator=data)
            optimizer.zero_grad()
            logits = model(tokens)
            loss = loss_fn(logits, tokens)
            loss.backward()
            if measure_every and step % measure_every == 0:
                measure_lnp_at_step(
                    model, loss_fn, (tokens, tokens), (held_out, held_out),
                    grad_a=[p.grad for p in model.parameters()], outputs_a=logits,
                    estimator="hutchinson", probes=2, generator=probe_generator,
                )
                measure_lnp(model, loss_fn, (held_out, held_out), estimator="exact")
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    plain, measured = train(None), train(2)
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))


def test_at_step_reuses_the_training_gradient(float64):
    model, loss_fn, batch_a, batch_b = cases.build("mlp")
    logits = model(batch_a[0])
    loss_fn(logits, batch_a[1]).backward()
    grad_a = {name: p.grad for name, p in model.named_parameters()}
    reused = measure_lnp_at_step(model, loss_fn, batch_a, batch_b, grad_a=grad_a, outputs_a=logits)
    fresh = measure_lnp(model, loss_fn, batch_a, batch_b)
    for name in ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position"):
        assert getattr(reused, name) == pytest.approx(getattr(fresh, name), rel=1e-12)
    # The gradient given is the one used: doubling a layer's share below the readout (which the
    # readout's closed-form check cannot see) adds that layer's part of D once more.
    readout = list(model.modules())[-1]
    below = {name for name, p in model.named_parameters() if all(p is not q for q in readout.parameters())}
    assert below
    doubled = measure_lnp_at_step(
        model, loss_fn, batch_a, batch_b, outputs_a=logits,
        grad_a={k: 2 * g if k in below else g for k, g in grad_a.items()})
    model.zero_grad()
    loss_fn(model(batch_b[0]), batch_b[1]).backward()
    share_below = sum(float((grad_a[k] * p.grad).sum()) for k, p in model.named_parameters() if k in below)
    assert doubled.grad_dot == pytest.approx(fresh.grad_dot + share_below, rel=1e-10)
    assert reused.step_gradient_reused and doubled.step_gradient_reused and not fresh.step_gradient_reused


def test_at_step_needs_the_step_outputs_with_its_gradient():
    model, loss_fn, batch_a, batch_b = cases.build("mlp")
    grads = [torch.zeros_like(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="grad_a needs outputs_a"):
        measure_lnp_at_step(model, loss_fn, batch_a, batch_b, grad_a=grads)
