"""An independent ground truth: the explicit eNTK in float64, built by a plain autograd loop
(one ``torch.autograd.grad`` per output coordinate, no torch.func, no hooks) and evaluated
with numpy, straight from the definitions in lnp-math.md."""

from __future__ import annotations

import math

import numpy as np
import torch


def jacobian_and_output_grad(model, loss_fn, inputs, targets):
    params = [p for p in model.parameters() if p.requires_grad]
    outputs = model(inputs)
    flat = outputs.reshape(-1)
    rows = []
    for k in range(flat.numel()):
        grads = torch.autograd.grad(flat[k], params, retain_graph=True, allow_unused=True)
        rows.append(np.concatenate([
            _real_entries(p, g) for p, g in zip(params, grads)
        ]))
    detached = outputs.detach().requires_grad_(True)
    (output_grad,) = torch.autograd.grad(loss_fn(detached, targets), detached)
    return np.stack(rows), output_grad.double().reshape(-1).numpy()


def _real_entries(param, grad):
    """A parameter's gradient as real coordinates: a complex entry is two, its real and imaginary
    parts (autograd's gradient of a real function, ∂/∂Re + i ∂/∂Im), so that inner products are
    Re Σ conj(a)·b (lnp-math §9)."""
    if grad is None:
        return np.zeros(param.numel() * (2 if param.is_complex() else 1))
    grad = grad.detach().to_dense()
    if grad.is_complex():
        grad = torch.view_as_real(grad)
    return grad.double().reshape(-1).numpy()


def lnp_reference(model, loss_fn, batch_a, batch_b=None):
    j_a, g_a = jacobian_and_output_grad(model, loss_fn, *batch_a)
    j_b, g_b = (j_a, g_a) if batch_b is None else jacobian_and_output_grad(model, loss_fn, *batch_b)
    theta_ba = j_b @ j_a.T
    m_a = batch_a[1].numel()
    m_b = m_a if batch_b is None else batch_b[1].numel()
    d = float(g_b @ theta_ba @ g_a)
    chi_loss_a, chi_loss_b = float(g_a @ g_a), float(g_b @ g_b)
    chi_net_a, chi_net_b = float((j_a**2).sum()), float((j_b**2).sum())
    loss_mag = math.sqrt(chi_loss_a * chi_loss_b)
    net_mag = math.sqrt(chi_net_a * chi_net_b)
    return {
        "grad_dot": d,
        "loss_magnitude": loss_mag,
        "network_magnitude": net_mag,
        "spectral_position": d / (loss_mag * net_mag),
        "loss_magnitude_normalized": loss_mag * math.sqrt(m_a * m_b),
        "network_magnitude_normalized": net_mag / math.sqrt(m_a * m_b),
        "chi_loss_a": chi_loss_a,
        "chi_loss_b": chi_loss_b,
        "chi_net_a": chi_net_a,
        "chi_net_b": chi_net_b,
    }


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def counted_rows(outputs, mask):
    """Flat indices of the output coordinates whose position counts (mask over the leading dims)."""
    if mask is None:
        return np.arange(outputs.numel())
    keep = mask.reshape(*mask.shape, *([1] * (outputs.dim() - mask.dim()))).expand_as(outputs)
    return np.flatnonzero(keep.reshape(-1).numpy())


def masked_jacobian_and_output_grad(model, loss_fn, inputs, targets, mask=None):
    """J rows for the counted output coordinates only, by a plain autograd loop; any input kind."""
    params = [p for p in model.parameters() if p.requires_grad]
    outputs = _call(model, inputs)
    flat = outputs.reshape(-1)
    rows = []
    for k in counted_rows(outputs, mask):
        grads = torch.autograd.grad(flat[int(k)], params, retain_graph=True, allow_unused=True)
        rows.append(np.concatenate([
            _real_entries(p, g) for p, g in zip(params, grads)
        ]))
    detached = outputs.detach().requires_grad_(True)
    (output_grad,) = torch.autograd.grad(loss_fn(detached, targets), detached)
    return np.stack(rows), output_grad.double().reshape(-1).numpy()[counted_rows(outputs, mask)]


def lnp_reference_masked(model, loss_fn, batch_a, batch_b=None, mask_a=None, mask_b=None):
    """:func:`lnp_reference` where ignored positions are not outputs (lnp-math §8) and m counts the rest."""
    j_a, g_a = masked_jacobian_and_output_grad(model, loss_fn, *batch_a, mask=mask_a)
    if batch_b is None:
        j_b, g_b, mask_b, batch_b = j_a, g_a, mask_a, batch_a
    else:
        j_b, g_b = masked_jacobian_and_output_grad(model, loss_fn, *batch_b, mask=mask_b)
    m_a = int(mask_a.sum()) if mask_a is not None else batch_a[1].numel()
    m_b = int(mask_b.sum()) if mask_b is not None else batch_b[1].numel()
    d = float(g_b @ (j_b @ j_a.T) @ g_a)
    chi_loss_a, chi_loss_b = float(g_a @ g_a), float(g_b @ g_b)
    chi_net_a, chi_net_b = float((j_a**2).sum()), float((j_b**2).sum())
    loss_mag, net_mag = math.sqrt(chi_loss_a * chi_loss_b), math.sqrt(chi_net_a * chi_net_b)
    return {
        "grad_dot": d, "loss_magnitude": loss_mag, "network_magnitude": net_mag,
        "spectral_position": d / (loss_mag * net_mag),
        "loss_magnitude_normalized": loss_mag * math.sqrt(m_a * m_b),
        "network_magnitude_normalized": net_mag / math.sqrt(m_a * m_b),
        "chi_loss_a": chi_loss_a, "chi_loss_b": chi_loss_b, "chi_net_a": chi_net_a, "chi_net_b": chi_net_b,
    }
