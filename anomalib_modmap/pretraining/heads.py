"""Projection head shared by the DINO class-token objective and the iBOT patch objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """MLP projection head with an L2-normalised bottleneck and a weight-normalised prototype layer.

    Maps features ``(..., in_dim)`` to prototype logits ``(..., prototypes)``: ``layers`` linear
    layers with GELU between them (``in_dim -> hidden_dim -> ... -> bottleneck_dim``), an L2
    normalisation, then a bias-free linear layer whose rows (the prototypes) are normalised to unit
    length on every call, which is weight normalisation with the gain fixed at 1. DINOv2 ViT-S
    defaults: 3 layers, hidden 2048, bottleneck 256, 65536 prototypes.
    """

    def __init__(
        self,
        in_dim: int,
        prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
    ) -> None:
        super().__init__()
        if layers < 1:
            msg = f"DINOHead needs at least one MLP layer, got layers={layers}."
            raise ValueError(msg)

        widths = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        modules: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            if index > 0:
                modules.append(nn.GELU())
            modules.append(nn.Linear(width_in, width_out))
        self.mlp = nn.Sequential(*modules)
        self.last_layer = nn.Linear(bottleneck_dim, prototypes, bias=False)
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``(..., in_dim)`` features to ``(..., prototypes)`` logits."""
        bottleneck = F.normalize(self.mlp(features), dim=-1, eps=1e-6)
        prototypes = F.normalize(self.last_layer.weight, dim=-1, eps=1e-6)
        return F.linear(bottleneck, prototypes)
