"""muP's coordinate check: train a few steps at several widths and watch activation scales.

Under a correct muP every layer's typical activation size stays put as the width grows; under
standard parameterization with Adam, the output logits grow with width after a few steps
(the update of the readout adds up over the width). The check records, for every module with
parameters and at each step, the mean absolute value of its output coordinates.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from specreach.models.parameterization import ModelRecipe, Parameterization, build_model, builder_for, optimizer_for

# coordinate scales: width -> layer path -> list over steps
Scales = dict[int, dict[str, list[float]]]


def _record_scales(model: nn.Module, store: dict[str, list[float]]) -> list:
    handles = []
    for path, module in model.named_modules():
        if path and any(True for _ in module.parameters(recurse=False)):
            def hook(_module, _inputs, output, path=path):
                if isinstance(output, torch.Tensor):
                    store.setdefault(path, []).append(float(output.detach().abs().mean()))
            handles.append(module.register_forward_hook(hook))
    return handles


def coord_check(kind: str, params: dict, widths: list[int], parameterization: Parameterization,
                steps: int = 4, lr: float = 1e-2, batch_size: int = 8, seed: int = 0) -> Scales:
    """Activation scales of every parameterized layer, per width and step (forward before each update)."""
    builder = builder_for(kind)
    base_params = builder.Params(**params)
    scales: Scales = {}
    for width in widths:
        width_params = builder.at_width(base_params, width).model_dump()
        model = build_model(ModelRecipe(kind=kind, params=width_params, parameterization=parameterization, seed=seed))
        optimizer = optimizer_for(model, parameterization, lr=lr)
        inputs, targets = builder.example_batch(builder.Params(**width_params), batch_size,
                                                torch.Generator().manual_seed(seed))  # the check needs no real data
        store: dict[str, list[float]] = {}
        handles = _record_scales(model, store)
        try:
            for _ in range(steps + 1):
                optimizer.zero_grad()
                logits = model(inputs)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
                loss.backward()
                optimizer.step()
        finally:
            for handle in handles:
                handle.remove()
        scales[width] = store
    return scales


def plot_coord_check(scales: Scales, path: str | Path, title: str) -> Path:
    """One panel per step: mean |activation| of each layer against width, log–log (mup's plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted(scales)
    steps = len(next(iter(scales[widths[0]].values())))
    fig, axes = plt.subplots(1, steps, figsize=(3.2 * steps, 3.2), sharey=True, squeeze=False)
    for step, ax in enumerate(axes[0]):
        for layer in scales[widths[0]]:
            ax.plot(widths, [scales[w][layer][step] for w in widths], marker="o", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="width", title=f"step {step}")
    axes[0][0].set_ylabel("mean |activation|")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
