"""Timing paths for Modmap and its peers on one synthetic multi-view sample.

Three ways to score every view of one instance, built on the same encoders so
that their times can be compared in one process:

- ``modmap``: Modmap's batched pairing (each view encoded once, all V x V view
  pairs mapped in batches of ``pair_batch_size``).
- ``loop``: a per-pair loop that, for every target view, re-encodes every source
  view (2 backbone passes per pair, V x V pairs), as a straightforward
  implementation of the cross-view mapping would. Its anomaly maps equal the
  batched ones to float tolerance; :func:`check_loop_matches` asserts it.
- ``cfm``: the CFM SiM3D configuration: per-view crossmodal mapping, no
  cross-view pairs and no modulation, ViT-B/14 for both images and 3-channel
  depth, the two directions combined by their product.

NOTE: the ``cfm`` path is assembled here from Modmap's torch building blocks
(encoders, ``CrossModalMapper``, ``AnomalyMapGenerator``); it only times the
configuration and is not a trainable baseline.

The encoders have random weights: time and memory do not depend on the weight
values, so no pretrained file is needed. The sample is a ray-traced sphere seen
by V cameras on three rings, with a voxel grid on its surface, so that the end
to end time includes a real anomaly volume fusion.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anomalib_modmap.backbones import ViTEncoder, create_encoder
from anomalib_modmap.models.modmap.anomaly_map import AnomalyMapGenerator, aggregate_distances, clean_foreground
from anomalib_modmap.models.modmap.loss import cosine_distance
from anomalib_modmap.models.modmap.torch_model import CrossModalMapper, ModmapModel, PairDistances, ViewFeatures
from anomalib_modmap.volume import fuse_anomaly_volume
from benchmarks.bench_volume import ring_cameras, sphere_depth, sphere_surface_voxels
from sim3d_datamodule.geometry import VoxelGrid
from sim3d_datamodule.transforms import GRAY_MEAN, GRAY_STD, normalize_depth

IMAGE_ENCODER = "dinov2_vitb14_reg4"
DEPTH_ENCODER = "dino_depth_vits14"
CFM_ENCODER = "vit_base_patch14_dinov2"
PATHS = ("modmap", "loop", "cfm")


# ----------------------------------------------------------------------------------------------
# sample


@dataclass
class Sample:
    """One multi-view test sample, laid out as the SiM3D datamodule yields it (batch dimension dropped).

    Attributes:
        image: ``(V, 3, H, W)`` float32 normalised grayscale repeated to 3 channels.
        depth_map: ``(V, 1, H, W)`` float32 depth in metres, 0 where invalid.
        valid_depth: ``(V, 1, H, W)`` bool.
        intrinsics: ``(V, 3, 3)`` float64.
        world_to_camera: ``(V, 4, 4)`` float64.
        view_index: ``(V,)`` int64.
        grid: voxels on the object surface (metres).
    """

    image: torch.Tensor
    depth_map: torch.Tensor
    valid_depth: torch.Tensor
    intrinsics: torch.Tensor
    world_to_camera: torch.Tensor
    view_index: torch.Tensor
    grid: VoxelGrid

    @property
    def num_views(self) -> int:
        """Number of views V."""
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> Sample:
        """Return a copy on ``device``."""
        return Sample(
            *(getattr(self, name).to(device) for name in ("image", "depth_map", "valid_depth", "intrinsics", "world_to_camera", "view_index")),
            grid=self.grid.to(device),
        )

    def views(self, positions: torch.Tensor | slice) -> Sample:
        """Return the sample restricted to the views at ``positions``."""
        return Sample(
            *(getattr(self, name)[positions] for name in ("image", "depth_map", "valid_depth", "intrinsics", "world_to_camera", "view_index")),
            grid=self.grid,
        )

    def save(self, path: Path) -> None:
        """Write the sample's tensors to ``path`` (``torch.save``)."""
        tensors = {name: getattr(self, name) for name in ("image", "depth_map", "valid_depth", "intrinsics", "world_to_camera", "view_index")}
        tensors.update(grid_origin=self.grid.origin, grid_voxel_size=torch.tensor(self.grid.voxel_size), grid_coords=self.grid.coords)
        torch.save(tensors, path)

    @classmethod
    def load(cls, path: Path) -> Sample:
        """Read a sample written by :meth:`save`."""
        tensors = torch.load(path, weights_only=True)
        grid = VoxelGrid(tensors.pop("grid_origin"), float(tensors.pop("grid_voxel_size")), tensors.pop("grid_coords"))
        return cls(**tensors, grid=grid)


def synthetic_sample(num_views: int, image_size: int, seed: int = 0) -> Sample:
    """Render a sphere of radius 0.13 m from ``num_views`` cameras at ``image_size`` pixels.

    The voxel size scales with the image so that a 896-pixel sample lists about
    5 M surface voxels (0.5 mm voxels, as ``bench_volume``) and smaller images
    proportionally fewer. The image is shading from depth plus noise (``seed``).
    """
    radius = 0.13
    radius_voxels = 520.0 * image_size / 896
    voxel_size = radius / radius_voxels
    coords = sphere_surface_voxels(radius_voxels)
    grid = VoxelGrid(torch.zeros(3, dtype=torch.float64), voxel_size, coords)
    focal = 0.8 * (image_size / 2) / math.tan(math.asin(1.0 / 3.0))
    intrinsics, world_to_camera = ring_cameras(num_views, 3.0 * radius, focal, image_size)
    depth = torch.stack([sphere_depth(intrinsics[view], world_to_camera[view], radius, image_size) for view in range(num_views)]).float()
    valid = depth > 0
    generator = torch.Generator().manual_seed(seed)
    gray = torch.where(valid, 0.5 + 2.0 * (depth - depth[valid].mean()), torch.zeros_like(depth))
    gray = gray + 0.02 * torch.randn(gray.shape, generator=generator)
    image = ((gray - GRAY_MEAN) / GRAY_STD)[:, None].expand(-1, 3, -1, -1).contiguous()
    return Sample(
        image=image,
        depth_map=depth[:, None],
        valid_depth=valid[:, None],
        intrinsics=intrinsics,
        world_to_camera=world_to_camera,
        view_index=torch.arange(num_views),
        grid=grid,
    )


# ----------------------------------------------------------------------------------------------
# models


def random_encoder(name: str, modality: str, **timm_kwargs: object) -> ViTEncoder:
    """Build a frozen encoder with timm's random initialisation (timing only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        encoder, _ = create_encoder(name, weights="random", modality=modality, timm_kwargs=timm_kwargs or None)
    return encoder


@dataclass
class Models:
    """Modmap (image ViT + depth ViT, modulators, mappers) and the CFM SiM3D configuration's parts.

    Attributes:
        modmap: the Modmap torch model (encoders included).
        cfm_image: image encoder of the CFM configuration (shares Modmap's image encoder).
        cfm_depth: 3-channel ViT depth encoder of the CFM configuration.
        cfm_image_to_depth, cfm_depth_to_image: per-view mappers between the two ViT widths.
        cfm_maps: anomaly map generator with the product of the two directions.
    """

    modmap: ModmapModel
    cfm_image: ViTEncoder
    cfm_depth: ViTEncoder
    cfm_image_to_depth: CrossModalMapper
    cfm_depth_to_image: CrossModalMapper
    cfm_maps: AnomalyMapGenerator = field(default_factory=lambda: AnomalyMapGenerator("product"))

    def to(self, device: torch.device | str) -> Models:
        """Move every module to ``device`` in place and return ``self``."""
        for module in (self.modmap, self.cfm_image, self.cfm_depth, self.cfm_image_to_depth, self.cfm_depth_to_image):
            module.to(device).eval()
        return self


def build_models(
    image_encoder: str = IMAGE_ENCODER,
    depth_encoder: str = DEPTH_ENCODER,
    cfm_encoder: str = CFM_ENCODER,
    pair_batch_size: int = 48,
    encoder_batch_size: int = 8,
    seed: int = 0,
) -> Models:
    """Build Modmap and the CFM SiM3D configuration with random-initialised encoders."""
    torch.manual_seed(seed)
    image = random_encoder(image_encoder, "image")
    depth = random_encoder(depth_encoder, "depth")
    modmap = ModmapModel(image, depth, pair_batch_size=pair_batch_size, encoder_batch_size=encoder_batch_size)
    # Random modulators: the identity start would hide a wrong (source, target) pairing in the loop check.
    for modulator in (modmap.image_modulator, modmap.depth_modulator):
        torch.nn.init.normal_(modulator.mlp[-1].weight, std=0.05)
    cfm_depth = random_encoder(cfm_encoder, "image")
    cfm_image = image if image.embed_dim == cfm_depth.embed_dim else random_encoder(cfm_encoder, "image")
    width = cfm_depth.embed_dim
    return Models(modmap, cfm_image, cfm_depth, CrossModalMapper(width, width), CrossModalMapper(width, width)).to("cpu")


# ----------------------------------------------------------------------------------------------
# inference paths


def modmap_maps(models: Models, sample: Sample) -> torch.Tensor:
    """Modmap's batched pairing: anomaly maps ``(V, H, W)``."""
    model = models.modmap
    features = model.extract_features(sample.image, sample.depth_map, sample.valid_depth, sample.view_index)
    return model.anomaly_maps(features)


@torch.no_grad()
def loop_distances(models: Models, sample: Sample, targets: int | None = None) -> tuple[PairDistances, torch.Tensor]:
    """Per-pair loop: for each target view, re-encode every source view, map it and keep the minimum.

    ``targets`` limits the loop to the first target views (the cost is linear in
    them). Returns the distances ``(T, N)`` and the foreground ``(V, H, W)``.
    """
    model = models.modmap
    valid = sample.valid_depth.bool()[:, 0] & (sample.depth_map[:, 0] > 0)
    foreground = clean_foreground(valid)
    normalized = normalize_depth(sample.depth_map[:, 0], valid, model.depth_normalization)[:, None]
    image_encoder, depth_encoder = model.image_encoder, model.depth_encoder
    normalized = normalized.expand(-1, depth_encoder.in_chans, -1, -1)
    image = sample.image[:, : image_encoder.in_chans] if image_encoder.in_chans == 3 else sample.image[:, :1]

    def encode(view: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_tokens, grid = image_encoder(image[view : view + 1])
        depth_tokens, depth_grid = depth_encoder(normalized[view : view + 1])
        if depth_grid != grid:
            depth_tokens = torch.nn.functional.interpolate(
                depth_tokens.transpose(1, 2).reshape(1, -1, *depth_grid), size=grid, mode="bilinear", align_corners=False
            ).flatten(2).transpose(1, 2)
        return image_tokens.float(), depth_tokens.float()

    num_views = sample.num_views
    rows_i2d, rows_d2i = [], []
    for target in range(num_views if targets is None else min(targets, num_views)):
        target_image, target_depth = encode(target)
        best_i2d = best_d2i = None
        for source in range(num_views):
            source_image, source_depth = encode(source)  # recomputed for every pair
            source_view, target_view = sample.view_index[source : source + 1], sample.view_index[target : target + 1]
            predicted_depth = model.image_to_depth(model.image_modulator(source_image, source_view, target_view))
            predicted_image = model.depth_to_image(model.depth_modulator(source_depth, source_view, target_view))
            i2d = cosine_distance(predicted_depth, target_depth)[0]
            d2i = cosine_distance(predicted_image, target_image)[0]
            best_i2d = i2d if best_i2d is None else torch.minimum(best_i2d, i2d)
            best_d2i = d2i if best_d2i is None else torch.minimum(best_d2i, d2i)
        rows_i2d.append(best_i2d)
        rows_d2i.append(best_d2i)
    return PairDistances(torch.stack(rows_i2d), torch.stack(rows_d2i)), foreground


def loop_maps(models: Models, sample: Sample, targets: int | None = None) -> torch.Tensor:
    """Anomaly maps ``(T, H, W)`` of the per-pair loop."""
    distances, foreground = loop_distances(models, sample, targets)
    grid = models.modmap.image_encoder.token_grid(*sample.image.shape[-2:])
    count = distances.image_to_depth.shape[0]
    return models.modmap.anomaly_map_generator(distances.image_to_depth, distances.depth_to_image, grid, foreground[:count])


@torch.no_grad()
def cfm_maps(models: Models, sample: Sample) -> torch.Tensor:
    """CFM SiM3D configuration: per-view mapping only, product of the two directions, maps ``(V, H, W)``."""
    model = models.modmap
    valid = sample.valid_depth.bool()[:, 0] & (sample.depth_map[:, 0] > 0)
    foreground = clean_foreground(valid)
    normalized = normalize_depth(sample.depth_map[:, 0], valid, model.depth_normalization)[:, None]
    normalized = normalized.expand(-1, models.cfm_depth.in_chans, -1, -1)
    image_tokens, grid = model._encode(models.cfm_image, sample.image)  # noqa: SLF001
    depth_tokens, _ = model._encode(models.cfm_depth, normalized)  # noqa: SLF001
    image_tokens, depth_tokens = image_tokens.float(), depth_tokens.float()
    i2d = cosine_distance(models.cfm_image_to_depth(image_tokens), depth_tokens)
    d2i = cosine_distance(models.cfm_depth_to_image(depth_tokens), image_tokens)
    return models.cfm_maps(i2d, d2i, grid, foreground)


MAP_PATHS: dict[str, Callable[[Models, Sample], torch.Tensor]] = {"modmap": modmap_maps, "loop": loop_maps, "cfm": cfm_maps}


def check_loop_matches(models: Models, sample: Sample, atol: float = 2e-4) -> float:
    """Assert that the per-pair loop and Modmap's batched pairing give the same distances; return the max difference."""
    model = models.modmap
    features = model.extract_features(sample.image, sample.depth_map, sample.valid_depth, sample.view_index)
    batched = model.pair_distances(features)
    looped, _ = loop_distances(models, sample)
    difference = max(
        float((batched.image_to_depth - looped.image_to_depth).abs().max()),
        float((batched.depth_to_image - looped.depth_to_image).abs().max()),
    )
    if difference > atol:
        msg = f"Batched pairing and per-pair loop differ by {difference:.2e} (> {atol:.0e})."
        raise AssertionError(msg)
    return difference


# ----------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on CUDA devices; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@dataclass
class Measurement:
    """One timed run: seconds and peak memory in MiB above the memory in use before it (``None`` when unmeasured)."""

    seconds: float
    peak_mib: float | None = None


def timed(run: Callable[[], object], device: torch.device) -> Measurement:
    """Time ``run`` once with synchronisation; on CUDA also its peak allocated memory above the start."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    tick = time.perf_counter()
    run()
    synchronize(device)
    seconds = time.perf_counter() - tick
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return Measurement(seconds, peak)


def model_only(models: Models, path: str, sample: Sample, device: torch.device, bf16: bool, loop_targets: int | None = None) -> Callable[[], torch.Tensor]:
    """Return a callable that scores ``sample`` (already on ``device``) with ``path``: anomaly maps, no volume."""

    def run() -> torch.Tensor:
        with autocast(device, bf16):
            if path == "loop":
                return loop_maps(models, sample, loop_targets)
            return MAP_PATHS[path](models, sample)

    return run


def end_to_end(models: Models, path: str, sample_file: Path, device: torch.device, bf16: bool, loop_targets: int | None = None) -> Callable[[], torch.Tensor]:
    """Return a callable that loads the sample file, moves it to ``device``, scores it and fuses the anomaly volume."""

    def run() -> torch.Tensor:
        sample = Sample.load(sample_file).to(device)
        maps = model_only(models, path, sample, device, bf16, loop_targets)().float()
        if maps.shape[0] < sample.num_views:  # loop on the first target views only: fuse every view all the same
            maps = torch.cat((maps, maps.new_zeros(sample.num_views - maps.shape[0], *maps.shape[1:])))
        scores = fuse_anomaly_volume(
            maps, sample.depth_map[:, 0], sample.valid_depth[:, 0], sample.intrinsics, sample.world_to_camera, sample.grid
        )
        return scores.cpu()

    return run


@contextlib.contextmanager
def sample_file(sample: Sample) -> Iterator[Path]:
    """Write ``sample`` to a temporary file and yield its path."""
    with tempfile.TemporaryDirectory(prefix="modmap_bench_") as folder:
        path = Path(folder) / "sample.pt"
        sample.save(path)
        yield path


# ----------------------------------------------------------------------------------------------
# training epochs


def _pair_chunks(num_views: int, pair_batch_size: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return list(torch.randperm(num_views * num_views, generator=generator).split(pair_batch_size))


def training_epoch(models: Models, sample: Sample, device: torch.device, bf16: bool, cached: ViewFeatures | None) -> Callable[[], None]:
    """Return a callable that runs one training epoch over all V x V ordered pairs of ``sample``.

    With ``cached`` features the epoch only runs the modulators and mappers
    (Modmap's training); without, each optimiser step first re-encodes the views
    its pairs use.
    """
    model = models.modmap
    parameters = [parameter for name, parameter in model.named_parameters() if not name.startswith(("image_encoder.", "depth_encoder."))]
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    num_views = sample.num_views

    def run() -> None:
        for chunk in _pair_chunks(num_views, model.pair_batch_size, seed=0):
            source, target = (chunk // num_views).to(device), (chunk % num_views).to(device)
            if cached is not None:
                features = cached
            else:
                used, inverse = torch.unique(torch.cat((source, target)), return_inverse=True)
                with autocast(device, bf16):
                    features = model.extract_features(sample.image[used], sample.depth_map[used], sample.valid_depth[used], sample.view_index[used])
                source, target = inverse[: source.numel()], inverse[source.numel() :]
            with autocast(device, bf16):
                loss = model.pair_loss(features, source, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


# ----------------------------------------------------------------------------------------------
# CPU peak memory


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc``)."""
    return _status_field("VmRSS")


def reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """Resident-set high-water mark of this process since the last reset, in MiB."""
    return _status_field("VmHWM")


def _status_field(name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    msg = f"/proc/self/status has no {name}; peak memory on CPU needs Linux."
    raise RuntimeError(msg)


def timed_rss(run: Callable[[], object]) -> Measurement:
    """Time ``run`` and measure its peak resident memory above the resident memory before it."""
    base = rss_mib()
    reset_peak_rss()
    tick = time.perf_counter()
    run()
    seconds = time.perf_counter() - tick
    return Measurement(seconds, peak_rss_mib() - base)


# Large blocks straight from mmap and back at free, so that a freed tensor leaves the resident set at once.
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def child_env() -> dict[str, str]:
    """Environment of a child process that measures CPU memory."""
    return {**os.environ, **CPU_MEMORY_ENV}
