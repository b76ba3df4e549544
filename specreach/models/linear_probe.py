"""Linear probes: a frozen backbone and a new trainable linear head on its final-layer representation.

θ of a probe is the head only, so its eNTK is the linear kernel of the backbone's features and
stays fixed during probing (paper, Section 5). The backbone can be a trained checkpoint
(``load_model``) or a fresh random one (``build_model``).
"""

from __future__ import annotations

from torch import Tensor, nn

from specreach.models.base import representation_of


class LinearProbe(nn.Module):
    def __init__(self, backbone: nn.Module, representation_size: int, outputs: int):
        super().__init__()
        representation_of(backbone)  # refuse a backbone without one, before anything is built
        self.backbone = backbone.requires_grad_(False)
        self.head = nn.Linear(representation_size, outputs)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(representation_of(self.backbone)(inputs))

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # the backbone is a fixed feature map, whatever the probe's mode
        return self
