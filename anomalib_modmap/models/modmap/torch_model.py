"""Modmap in plain PyTorch: view modulators, crossmodal mappers and batched view pairing.

For every ordered pair of views (source s, target t) of one instance, the
source view's image tokens are modulated by the (s, t) pair, mapped to the
depth feature space and compared with the target view's depth tokens. The
same runs from depth to image. Trained on a nominal instance, the mappers learn the
nominal relation between the modalities across views, so a token whose mapped
features disagree with the observed ones for every source view is anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_modmap.backbones import ViTEncoder
from sim3d_datamodule.transforms import DepthNormalization, normalize_depth

from .anomaly_map import AnomalyMapGenerator, Aggregation, clean_foreground, foreground_tokens
from .loss import ModmapLoss, cosine_distance

Pairing = Literal["all", "same_view"]
PAIRINGS: tuple[str, ...] = ("all", "same_view")


class ViewModulator(nn.Module):
    """Per-channel FiLM of source tokens conditioned on the (source view, target view) pair.

    A 2-layer MLP (hidden width ``hidden``, GELU) maps one-hot(source) ++
    one-hot(target) to a scale and a shift per channel. The last layer starts at
    zero, so the modulator starts as the identity (scale 1, shift 0).

    Args:
        channels: token width ``C``.
        max_views: size of each one-hot code; view indices must lie in ``[0, max_views)``.
        hidden: hidden width of the MLP.

    Shapes: tokens ``(P, N, C)``, ``source`` and ``target`` ``(P,)`` int64 view
    indices; output ``(P, N, C)``.
    """

    def __init__(self, channels: int, max_views: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.channels = channels
        self.max_views = max_views
        self.mlp = nn.Sequential(nn.Linear(2 * max_views, hidden), nn.GELU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Apply the (source, target) modulation to ``tokens``."""
        for name, views in (("source", source), ("target", target)):
            if views.numel() and (int(views.min()) < 0 or int(views.max()) >= self.max_views):
                msg = f"{name} view index {int(views.max())} is outside [0, {self.max_views}); raise max_views to cover every view."
                raise ValueError(msg)
        code = torch.cat(
            (F.one_hot(source, self.max_views), F.one_hot(target, self.max_views)),
            dim=-1,
        ).to(tokens.dtype)
        scale_delta, shift = self.mlp(code).chunk(2, dim=-1)
        return tokens * (1.0 + scale_delta[:, None, :]) + shift[:, None, :]


class CrossModalMapper(nn.Module):
    """Token-wise MLP from one modality's feature space to the other's.

    Linear(in, h), GELU, Linear(h, h), GELU, Linear(h, out) with
    ``h = (in + out) // 2`` by default (576 for 768 <-> 384). Shapes:
    ``(..., in_features)`` -> ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or (in_features + out_features) // 2
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map ``tokens`` to the other modality."""
        return self.layers(tokens)


@dataclass
class ViewFeatures:
    """Frozen-encoder features of the views of one instance.

    Attributes:
        image: ``(V, N, C_image)`` image patch tokens.
        depth: ``(V, N, C_depth)`` depth patch tokens on the same token grid.
        foreground: ``(V, H, W)`` bool pixel foreground (cleaned valid depth).
        foreground_tokens: ``(V, N)`` bool, tokens more than half inside the foreground.
        grid: token grid ``(h, w)`` with ``N = h * w``.
        view_index: ``(V,)`` int64 view indices within the category.
    """

    image: torch.Tensor
    depth: torch.Tensor
    foreground: torch.Tensor
    foreground_tokens: torch.Tensor
    grid: tuple[int, int]
    view_index: torch.Tensor

    def to(self, device: torch.device | str) -> ViewFeatures:
        """Return a copy whose tensors live on ``device``."""
        return ViewFeatures(
            self.image.to(device),
            self.depth.to(device),
            self.foreground.to(device),
            self.foreground_tokens.to(device),
            self.grid,
            self.view_index.to(device),
        )


@dataclass
class PairDistances:
    """Per-target-view token distances after the minimum over source views.

    Attributes:
        image_to_depth: ``(V, N)`` ``1 - cosine`` between image tokens mapped to depth and the target's depth tokens.
        depth_to_image: ``(V, N)`` the same from depth to image.
    """

    image_to_depth: torch.Tensor
    depth_to_image: torch.Tensor


class ModmapModel(nn.Module):
    """Cross-view crossmodal feature mapping between a frozen image and a frozen depth encoder.

    Args:
        image_encoder: frozen encoder of normalised grayscale images ``(V, 3, H, W)``.
        depth_encoder: frozen encoder of normalised depth ``(V, 1, H, W)``.
        depth_normalization: how depth in metres becomes [0, 1] per view (``"max"`` or ``"minmax"``).
        max_views: one-hot size of the view modulators.
        aggregation: combination of the two directions in the anomaly maps.
        encoder_batch_size: views per encoder pass.
        pair_batch_size: view pairs per batched step at inference.
        pairing: ``"all"`` maps every ordered view pair ``(s, t)``, including
            ``s = t``; ``"same_view"`` maps each view only onto itself, which is
            single-view crossmodal feature mapping (no information across views).
        modulation: apply the view modulators; ``False`` feeds the frozen tokens
            to the mappers unchanged (the modulators are still built, so
            checkpoints keep one layout).
    """

    def __init__(
        self,
        image_encoder: ViTEncoder,
        depth_encoder: ViTEncoder,
        depth_normalization: DepthNormalization = "max",
        max_views: int = 64,
        aggregation: Aggregation = "max",
        encoder_batch_size: int = 8,
        pair_batch_size: int = 48,
        pairing: Pairing = "all",
        modulation: bool = True,
    ) -> None:
        super().__init__()
        if pairing not in PAIRINGS:
            msg = f"Unknown pairing {pairing!r}; choose one of {PAIRINGS}."
            raise ValueError(msg)
        self.pairing = pairing
        self.modulation = modulation
        self.image_encoder = image_encoder
        self.depth_encoder = depth_encoder
        self.depth_normalization = depth_normalization
        self.encoder_batch_size = encoder_batch_size
        self.pair_batch_size = pair_batch_size
        image_dim, depth_dim = image_encoder.embed_dim, depth_encoder.embed_dim
        self.image_modulator = ViewModulator(image_dim, max_views)
        self.depth_modulator = ViewModulator(depth_dim, max_views)
        self.image_to_depth = CrossModalMapper(image_dim, depth_dim)
        self.depth_to_image = CrossModalMapper(depth_dim, image_dim)
        self.loss = ModmapLoss()
        self.anomaly_map_generator = AnomalyMapGenerator(aggregation)

    @torch.no_grad()
    def extract_features(
        self,
        image: torch.Tensor,
        depth: torch.Tensor,
        valid_depth: torch.Tensor,
        view_index: torch.Tensor,
    ) -> ViewFeatures:
        """Encode every view of one instance once per modality.

        Args:
            image: ``(V, 3, H, W)`` normalised grayscale repeated to 3 channels.
            depth: ``(V, 1, H, W)`` depth in metres, 0 where invalid.
            valid_depth: ``(V, 1, H, W)`` bool.
            view_index: ``(V,)`` int64 view indices within the category.
        """
        valid = valid_depth.bool()[:, 0] & (depth[:, 0] > 0)
        foreground = clean_foreground(valid)
        normalized = normalize_depth(depth[:, 0], valid, self.depth_normalization)[:, None]
        if self.depth_encoder.in_chans != 1:
            normalized = normalized.expand(-1, self.depth_encoder.in_chans, -1, -1)
        image = image.float()
        if image.shape[1] != self.image_encoder.in_chans:
            image = image[:, :1].expand(-1, self.image_encoder.in_chans, -1, -1)

        image_tokens, image_grid = self._encode(self.image_encoder, image)
        depth_tokens, depth_grid = self._encode(self.depth_encoder, normalized)
        if depth_grid != image_grid:
            depth_tokens = _resample_tokens(depth_tokens, depth_grid, image_grid)
        return ViewFeatures(
            image=image_tokens.float(),
            depth=depth_tokens.float(),
            foreground=foreground,
            foreground_tokens=foreground_tokens(foreground, image_grid),
            grid=image_grid,
            view_index=view_index.long(),
        )

    def _encode(self, encoder: ViTEncoder, views: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        chunks = []
        grid = encoder.token_grid(*views.shape[-2:])
        for start in range(0, views.shape[0], self.encoder_batch_size):
            tokens, grid = encoder(views[start : start + self.encoder_batch_size])
            chunks.append(tokens)
        return torch.cat(chunks), grid

    def map_pairs(
        self,
        features: ViewFeatures,
        source: torch.Tensor,
        target: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the source views' tokens of pairs ``(source[p], target[p])`` to the other modality.

        ``source`` and ``target`` are ``(P,)`` positions into the views of
        ``features``. Returns image->depth ``(P, N, C_depth)`` and depth->image
        ``(P, N, C_image)`` predictions for the target views.
        """
        image = features.image[source]
        depth = features.depth[source]
        if self.modulation:
            source_view = features.view_index[source]
            target_view = features.view_index[target]
            image = self.image_modulator(image, source_view, target_view)
            depth = self.depth_modulator(depth, source_view, target_view)
        return self.image_to_depth(image), self.depth_to_image(depth)

    def view_pairs(self, num_views: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Return the ``(P, 2)`` int64 (source, target) positions that ``pairing`` selects among ``num_views`` views.

        ``"all"`` gives ``P = V * V`` pairs in row-major order, ``"same_view"`` the ``V`` pairs ``(v, v)``.
        """
        if self.pairing == "same_view":
            positions = torch.arange(num_views, device=device, dtype=torch.long)
            return torch.stack((positions, positions), dim=1)
        return torch.tensor(list(product(range(num_views), repeat=2)), device=device, dtype=torch.long).reshape(-1, 2)

    def pair_loss(self, features: ViewFeatures, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss over the pairs ``(source[p], target[p])``, on the target views' foreground tokens."""
        predicted_depth, predicted_image = self.map_pairs(features, source, target)
        return self.loss(
            predicted_depth,
            features.depth[target],
            predicted_image,
            features.image[target],
            features.foreground_tokens[target],
        )

    @torch.no_grad()
    def pair_distances(self, features: ViewFeatures) -> PairDistances:
        """Evaluate the selected view pairs and keep, per target view, the minimum over source views.

        With ``pairing="all"`` these are all V x V ordered pairs; with
        ``"same_view"`` each target view has only itself as source.

        Pairs run in batches of ``pair_batch_size``, and each batch folds into a
        running ``(V, N)`` minimum, so peak memory grows with V and the batch size,
        not with V x V.
        """
        num_views, num_tokens = features.image.shape[:2]
        device = features.image.device
        image_to_depth = torch.full((num_views, num_tokens), float("inf"), device=device)
        depth_to_image = torch.full((num_views, num_tokens), float("inf"), device=device)
        pairs = self.view_pairs(num_views, device)

        for start in range(0, pairs.shape[0], self.pair_batch_size):
            source, target = pairs[start : start + self.pair_batch_size].unbind(dim=1)
            predicted_depth, predicted_image = self.map_pairs(features, source, target)
            index = target[:, None].expand(-1, num_tokens)
            image_to_depth.scatter_reduce_(0, index, cosine_distance(predicted_depth, features.depth[target]), reduce="amin")
            depth_to_image.scatter_reduce_(0, index, cosine_distance(predicted_image, features.image[target]), reduce="amin")
        return PairDistances(image_to_depth, depth_to_image)

    @torch.no_grad()
    def anomaly_maps(self, features: ViewFeatures) -> torch.Tensor:
        """Return the per-view anomaly maps ``(V, H, W)`` of one instance."""
        distances = self.pair_distances(features)
        return self.anomaly_map_generator(distances.image_to_depth, distances.depth_to_image, features.grid, features.foreground)


def _resample_tokens(tokens: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample tokens ``(B, h*w, C)`` from ``grid`` to ``target_grid``."""
    batch, _, channels = tokens.shape
    spatial = tokens.transpose(1, 2).reshape(batch, channels, *grid)
    spatial = F.interpolate(spatial, size=target_grid, mode="bilinear", align_corners=False)
    return spatial.flatten(2).transpose(1, 2)
