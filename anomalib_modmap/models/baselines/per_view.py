"""Single-view anomalib models on multi-view data: per-view anomaly maps fused into anomaly volumes.

Any anomalib model (Patchcore, Padim, CFM, EfficientAd, ...) trains and tests
unchanged on SiM3D's flattened mode (``SiM3D(flatten=True)``), where every batch
contains single views: ``image`` ``(B, 3, S, S)`` and the camera-frame xyz map
``depth_map`` ``(B, 3, S, S)``. :class:`PerViewVolumeFusion` is a Lightning
callback that gathers the model's test anomaly maps by (instance, view),
reloads each test instance's depth, calibration and ground-truth voxel grid
from the same category, fuses the views into one anomaly volume with
:func:`~anomalib_modmap.volume.fuse_anomaly_volume` and scores the volumes
with :class:`~anomalib_modmap.metrics.VoxelAUPRO` and
:class:`~anomalib_modmap.metrics.InstanceAUROC`, the metrics Modmap reports.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch import Callback, LightningModule, Trainer
from tqdm import tqdm

from anomalib_modmap.models.modmap.anomaly_map import clean_foreground

logger = logging.getLogger(__name__)

POINTMAE_URL = "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth"
EFFICIENTAD_WEIGHTS_URL = "https://github.com/open-edge-platform/anomalib/releases/download/efficientad_pretrained_weights/efficientad_pretrained_weights.zip"
EFFICIENTAD_MIN_INPUT = 256
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"


@dataclass
class InstanceVolume:
    """The fused anomaly volume of one test instance.

    Attributes:
        instance: instance folder name.
        label: 1 for an anomalous instance, 0 for a nominal one.
        scores: ``(M,)`` float32 voxel scores aligned with ``grid.coords``.
        grid: the instance's ground-truth ``VoxelGrid`` (``None`` when the category has none).
        anomaly_maps: ``(V, S, S)`` per-view anomaly maps used for the fusion, on the CPU.
    """

    instance: str
    label: int
    scores: torch.Tensor | None
    grid: Any
    anomaly_maps: torch.Tensor


def instance_datamodule(datamodule: Any) -> Any:  # noqa: ANN401
    """Return a multi-view ``SiM3D`` over the same category, views and image size as a flattened one."""
    from sim3d_datamodule.datamodule import SiM3D

    multi_view = SiM3D(
        root=datamodule.root,
        category=datamodule.category,
        setup=datamodule.setup_name,
        image_size=datamodule.image_size,
        views=datamodule.views,
        view_sampling=datamodule.view_sampling,
        normalize_image=datamodule.normalize_image,
        voxel_size=datamodule.voxel_size,
        seed=datamodule.seed,
        val_split_mode="none",
    )
    multi_view.setup("test")
    return multi_view


def fuse_view_maps(
    view_maps: dict[tuple[str, int], torch.Tensor],
    instances: Sequence[Any],
    views: Sequence[int] | None = None,
    progress: bool = False,
) -> list[InstanceVolume]:
    """Fuse per-view anomaly maps into one anomaly volume per instance.

    Args:
        view_maps: ``(instance, view position) -> (H, W)`` anomaly map at any resolution;
            maps are resized bilinearly to the instance's ``S x S`` views.
        instances: multi-view items (``MultiViewItem``) with ``depth_map``, ``valid_depth``,
            ``intrinsics``, ``world_to_camera``, ``view_index``, ``instance``, ``gt_label``
            and ``gt_volume``.
        views: view positions to fuse (a test-view ablation); ``None`` fuses every view of the item.
        progress: show a tqdm bar over the instances.

    Raises:
        KeyError: when a view of an instance has no anomaly map (the model was not
            tested on that view), naming the instance and the view.
    """
    from anomalib_modmap.volume import fuse_anomaly_volume

    volumes = []
    for item in tqdm(instances, desc="Fusing anomaly volumes", unit="instance", disable=not progress):
        positions = [int(view) for view in item.view_index]
        keep = [index for index, view in enumerate(positions) if views is None or view in views]
        if not keep:
            msg = f"None of the requested views {list(views or [])} is among the views {positions} of instance {item.instance}."
            raise ValueError(msg)
        size = tuple(item.depth_map.shape[-2:])
        maps = []
        for index in keep:
            key = (item.instance, positions[index])
            if key not in view_maps:
                msg = f"No anomaly map for view {positions[index]} of instance {item.instance}; test the model on every view of the category."
                raise KeyError(msg)
            view_map = view_maps[key].float().reshape(1, 1, *view_maps[key].shape[-2:])
            maps.append(F.interpolate(view_map, size=size, mode="bilinear", align_corners=False)[0, 0])
        anomaly_maps = torch.stack(maps)

        select = torch.tensor(keep)
        depth = item.depth_map[select][:, 0]
        foreground = clean_foreground(item.valid_depth[select][:, 0].bool() & (depth > 0))
        anomaly_maps = torch.where(foreground, anomaly_maps, torch.zeros_like(anomaly_maps))
        grid = item.gt_volume
        scores = None
        if grid is not None:
            scores = fuse_anomaly_volume(anomaly_maps, depth, foreground, item.intrinsics[select], item.world_to_camera[select], grid)
        volumes.append(InstanceVolume(str(item.instance), int(item.gt_label), scores, grid, anomaly_maps))
    return volumes


class PerViewVolumeFusion(Callback):
    """Gather a single-view model's test anomaly maps and score them as anomaly volumes.

    Attach it to the trainer (``Engine(callbacks=[PerViewVolumeFusion()])``) and
    test on ``SiM3D(flatten=True)``. At the end of the test epoch it fuses the
    views of each instance (:func:`fuse_view_maps`) and logs
    ``voxel_AUPRO@1%`` (``fpr_limit`` in percent) and ``instance_AUROC``; the
    engine's test results then carry them. ``volumes`` keeps the fused
    :class:`InstanceVolume` list for reports and plots.

    Args:
        views: view positions to fuse at test time; ``None`` fuses all tested views.
        fpr_limit: FPR limit of the V-AUPRO.
        progress: show a progress bar while fusing.
    """

    def __init__(self, views: Sequence[int] | None = None, fpr_limit: float = 0.01, progress: bool = True) -> None:
        super().__init__()
        self.views = None if views is None else [int(view) for view in views]
        self.fpr_limit = fpr_limit
        self.progress = progress
        self.view_maps: dict[tuple[str, int], torch.Tensor] = {}
        self.volumes: list[InstanceVolume] = []
        self.metrics: dict[str, float] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the maps of an earlier test run."""
        del trainer, pl_module
        self.view_maps.clear()
        self.volumes = []
        self.metrics = {}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: ANN401
        """Store every view's anomaly map under (instance, view position)."""
        del trainer, pl_module, batch_idx, dataloader_idx
        source = outputs if getattr(outputs, "anomaly_map", None) is not None else batch
        anomaly_map = getattr(source, "anomaly_map", None)
        instances = getattr(batch, "instance", None)
        view_index = getattr(batch, "view_index", None)
        if anomaly_map is None or instances is None or view_index is None:
            msg = (
                "PerViewVolumeFusion needs test batches with anomaly_map, instance and view_index; "
                "test on SiM3D(flatten=True) with a model that outputs anomaly maps."
            )
            raise ValueError(msg)
        maps = anomaly_map.detach().float().cpu()
        maps = maps.reshape(maps.shape[0], *maps.shape[-2:])
        for position, (instance, view) in enumerate(zip(instances, view_index.tolist(), strict=True)):
            self.view_maps[(str(instance), int(view))] = maps[position]

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fuse and score the anomaly volumes, and log the volumetric metrics."""
        datamodule = trainer.datamodule
        if datamodule is None or not getattr(datamodule, "flatten", False):
            msg = "PerViewVolumeFusion needs the trainer's datamodule to be SiM3D with flatten=True."
            raise ValueError(msg)
        multi_view = instance_datamodule(datamodule)
        items = (multi_view.test_data[index] for index in range(len(multi_view.test_data)))
        self.volumes = fuse_view_maps(self.view_maps, list(items), self.views, progress=self.progress)
        self.metrics = score_volumes(self.volumes, self.fpr_limit)
        for name, value in self.metrics.items():
            pl_module.log(name, value, batch_size=1)


def score_volumes(volumes: Sequence[InstanceVolume], fpr_limit: float = 0.01) -> dict[str, float]:
    """Return V-AUPRO (``voxel_AUPRO@<limit>%``) and ``instance_AUROC`` of fused anomaly volumes.

    An instance without a voxel grid takes part in neither metric, and a warning names it.
    """
    from anomalib_modmap.metrics.instance_auroc import _InstanceAUROC
    from anomalib_modmap.metrics.voxel_aupro import _VoxelAUPRO

    scored = [volume for volume in volumes if volume.scores is not None]
    for volume in volumes:
        if volume.scores is None:
            logger.warning("Instance %s has no voxel grid, so it is left out of the volumetric metrics.", volume.instance)
    aupro = _VoxelAUPRO(fpr_limit=fpr_limit)
    auroc = _InstanceAUROC()
    labels = torch.tensor([volume.label for volume in scored])
    if scored:
        aupro.update([volume.scores for volume in scored], [volume.grid for volume in scored], labels)
        auroc.update([volume.scores for volume in scored], labels)
    return {f"voxel_AUPRO@{fpr_limit * 100:g}%": float(aupro.compute()), "instance_AUROC": float(auroc.compute())}


# Building anomalib models without downloads ---------------------------------------------------


class BaselineWeightsError(FileNotFoundError):
    """Raised when a baseline needs weight files that are not on this machine."""


def write_random_pointmae_weights(path: str | Path, group_size: int = 128, num_group: int = 1024, seed: int = 0) -> Path:
    """Save a randomly initialised Point-MAE checkpoint (``{"base_model": state_dict}``) for anomalib's CFM.

    Scores of a CFM built on it are not meaningful; it exists so that the
    pipeline runs without the pretrained file.
    """
    from anomalib.models.image.cfm.components import PointTransformer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = PointTransformer(group_size=group_size, num_group=num_group)
    torch.save({"base_model": backbone.state_dict()}, path)
    return path


def check_pointmae_weights(pointmae_weights: str | Path | None) -> Path:
    """Return the Point-MAE weights file, or raise :class:`BaselineWeightsError` saying where to get it.

    anomalib's CFM falls back to downloading the file when the path is missing,
    which fails on machines without internet access; this check comes first.
    """
    if pointmae_weights is not None and Path(pointmae_weights).is_file():
        return Path(pointmae_weights)
    where = "no pointmae_weights given" if pointmae_weights is None else f"{pointmae_weights} not found"
    msg = (
        f"CFM needs Point-MAE weights ({where}). Download {POINTMAE_URL} (the 'pretrain.pth' of Point-MAE), "
        "save it, e.g. as ./weights/pointmae_pretrain.pth, and pass that path as pointmae_weights. "
        "To try the pipeline without it, write random weights with "
        "anomalib_modmap.models.baselines.write_random_pointmae_weights (scores are then not meaningful)."
    )
    raise BaselineWeightsError(msg)


@contextlib.contextmanager
def timm_overrides(**overrides: Any) -> Iterator[None]:  # noqa: ANN401
    """Add keyword arguments to every ``timm.create_model`` call inside the block.

    anomalib's CFM creates its DINO image backbone with ``pretrained=True`` and a
    fixed 224-pixel input, and offers no switch for either. ``pretrained=False``
    builds it without a download, so its anomaly scores are not meaningful.
    ``img_size=S`` builds it for ``S x S`` inputs, and timm resamples the position
    embedding of pretrained weights to the new token grid.
    """
    import timm

    original = timm.create_model

    def create_with_overrides(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        kwargs.update(overrides)
        return original(*args, **kwargs)

    timm.create_model = create_with_overrides
    try:
        yield
    finally:
        timm.create_model = original


def random_timm_weights() -> contextlib.AbstractContextManager[None]:
    """Make ``timm.create_model`` build models with random weights inside the block."""
    return timm_overrides(pretrained=False)


def _import_class(class_path: str) -> type:
    if "." not in class_path:
        class_path = f"anomalib.models.{class_path}"
    module_path, _, name = class_path.rpartition(".")
    return getattr(import_module(module_path), name)


def build_per_view_model(
    class_path: str,
    init_args: dict[str, Any] | None = None,
    pretrained: bool = True,
    weights_dir: str | Path | None = None,
    input_size: int | None = None,
) -> Any:  # noqa: ANN401
    """Build a single-view anomalib model for :class:`PerViewVolumeFusion`.

    The model keeps raw scores (no normalisation or thresholding, which would
    clip scores before the fusion), and its own image-level evaluator and
    visualiser are off because flattened SiM3D batches carry no pixel masks; the
    volumetric metrics come from the fusion. Nothing is downloaded: a missing
    weight file or dataset raises :class:`BaselineWeightsError` with the address
    to fetch it from and the place to put it.

    Args:
        class_path: ``Patchcore``, ``Padim``, ``CFM``, ``EfficientAd``, ... or a dotted class path.
        init_args: the model's keyword arguments.
        pretrained: ``False`` builds the model with random weights wherever it would
            load pretrained ones, for machines without the weight files. Its scores are
            then not meaningful. CNN backbones get ``pre_trained=False``, CFM's DINO
            backbone random weights and EfficientAd a random teacher. With
            ``pretrained=False`` two placeholders also work: CFM's
            ``pointmae_weights: random`` writes random Point-MAE weights, and
            EfficientAd's ``imagenet_dir: random`` writes a folder of random texture
            images in place of Imagenette, both under ``weights_dir`` (default ``./weights``).
        weights_dir: folder for the placeholders above.
        input_size: resize every view to ``input_size x input_size`` pixels before the
            model, in place of the model's default size (224 for CFM, 256 for most
            others). CFM's DINO backbone is then built for that size. EfficientAd
            needs at least 256 pixels.

    Raises:
        BaselineWeightsError: when a weight file or dataset the model needs is not on
            this machine, or when building with ``pretrained=True`` fails for lack of a
            weights download.
    """
    from anomalib.post_processing import PostProcessor

    cls = _import_class(class_path)
    kwargs = dict(init_args or {})
    kwargs.setdefault("post_processor", PostProcessor(enable_normalization=False, enable_thresholding=False))
    kwargs.setdefault("evaluator", False)
    kwargs.setdefault("visualizer", False)
    if input_size is not None:
        kwargs.setdefault("pre_processor", cls.configure_pre_processor(image_size=(int(input_size), int(input_size))))
    weights_dir = Path(weights_dir or "weights")

    is_cfm = cls.__name__ == "CFM"
    if is_cfm:
        _prepare_cfm_arguments(kwargs, pretrained, weights_dir)
    is_efficient_ad = cls.__name__ == "EfficientAd"
    if is_efficient_ad and input_size is not None and input_size < EFFICIENTAD_MIN_INPUT:
        msg = f"EfficientAd needs inputs of at least {EFFICIENTAD_MIN_INPUT} pixels (its autoencoder halves the input five times and then needs an 8 x 8 map), got input_size={input_size}."
        raise ValueError(msg)
    if is_efficient_ad:
        _prepare_efficient_ad_arguments(kwargs, pretrained, weights_dir)
    if not pretrained and "pre_trained" in _init_parameters(cls):
        kwargs["pre_trained"] = False

    overrides: dict[str, Any] = {}
    if is_cfm and not pretrained:
        overrides["pretrained"] = False
    if is_cfm and input_size is not None:
        overrides["img_size"] = int(input_size)
    try:
        with timm_overrides(**overrides) if overrides else contextlib.nullcontext():
            model = cls(**kwargs)
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        backbone = _backbone_name(cls, kwargs)
        msg = (
            f"Building {cls.__name__} with pretrained backbone weights failed ({error}). "
            f"{_timm_weights_hint(backbone)} Or build with pretrained=False (random backbone; scores are then not meaningful)."
        )
        raise BaselineWeightsError(msg) from error
    if is_efficient_ad and not pretrained:
        _keep_random_teacher(model)
    return model


def _backbone_name(cls: type, kwargs: dict[str, Any]) -> str | None:
    """Return the timm backbone a model builds: its ``backbone`` / ``rgb_backbone`` argument or that argument's default."""
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    for name in ("backbone", "rgb_backbone"):
        if name in kwargs:
            return str(kwargs[name])
        if name in parameters and isinstance(parameters[name].default, str):
            return parameters[name].default
    return None


def _timm_weights_hint(backbone: str | None) -> str:
    """Say where timm looks for ``backbone``'s pretrained weights and how to put them there offline."""
    from huggingface_hub import constants

    if backbone is None:
        return f"Put the backbone's weights in the Hugging Face cache ({constants.HF_HUB_CACHE}) or the torch hub cache ({torch.hub.get_dir()})."
    try:
        import timm

        config = timm.models.get_pretrained_cfg(backbone)
    except (RuntimeError, ValueError):
        config = None
    repository = getattr(config, "hf_hub_id", None)
    if repository:
        return (
            f"timm loads the weights of {backbone!r} from the Hugging Face repository {repository}: on a machine with "
            f"internet access run `huggingface-cli download {repository}`, then copy that machine's "
            f"{constants.HF_HUB_CACHE}/models--{repository.replace('/', '--')} folder to the same place here "
            f"({constants.HF_HUB_CACHE})."
        )
    return f"Put the weights of {backbone!r} in the Hugging Face cache ({constants.HF_HUB_CACHE}) or the torch hub cache ({torch.hub.get_dir()})."


def per_view_data_defaults(class_path: str) -> dict[str, int]:
    """Return the SiM3D batch sizes a single-view model needs, for arguments the user left unset.

    anomalib's CFM takes the zero-padding mask of the first sample of a batch for
    every sample, while each view of an instance has its own foreground, so CFM
    runs one view per batch. EfficientAd trains on batches of one image by design.
    """
    name = class_path.rsplit(".", 1)[-1]
    if name == "CFM":
        return {"train_batch_size": 1, "eval_batch_size": 1}
    if name == "EfficientAd":
        return {"train_batch_size": 1}
    return {}


class EfficientAdTrainingQuantiles(Callback):
    """Set EfficientAd's anomaly-map quantiles from the nominal training views when training ends.

    EfficientAd scales its student and autoencoder maps by their 90% and 99.5%
    quantiles on nominal images before adding them, and anomalib computes these
    at the start of validation. Per-view benchmark jobs skip validation (SiM3D
    validates on its test instances), so without this callback the two maps
    would be added unscaled. The training views of a SiM3D category are nominal.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the quantiles on the training loader unless validation already set them."""
        model = pl_module.model
        if model.is_set(model.quantiles):
            return
        with torch.no_grad():
            model.quantiles.update(pl_module.map_norm_quantiles(trainer.datamodule.train_dataloader()))


def per_view_callbacks(class_path: str) -> list[Callback]:
    """Return the extra Lightning callbacks a single-view model needs in a per-view job (EfficientAd's quantiles)."""
    return [EfficientAdTrainingQuantiles()] if class_path.rsplit(".", 1)[-1] == "EfficientAd" else []


def check_per_view_data(class_path: str, image_size: int) -> None:
    """Raise ``ValueError`` when flattened SiM3D views of ``image_size`` pixels cannot feed the model.

    EfficientAd computes its teacher's channel statistics on the datamodule's
    images before its pre-processor resizes them, and its autoencoder needs at
    least 256 pixels, so its SiM3D ``image_size`` must be at least 256.
    """
    if class_path.rsplit(".", 1)[-1] == "EfficientAd" and int(image_size) < EFFICIENTAD_MIN_INPUT:
        msg = (
            f"EfficientAd needs SiM3D views of at least {EFFICIENTAD_MIN_INPUT} pixels, got image_size={image_size}; "
            f"set image_size: {EFFICIENTAD_MIN_INPUT} for this model (in a benchmark: the model's data section)."
        )
        raise ValueError(msg)


def _prepare_cfm_arguments(kwargs: dict[str, Any], pretrained: bool, weights_dir: Path) -> None:
    if kwargs.get("pointmae_weights") == "random":
        if pretrained:
            msg = "pointmae_weights='random' needs pretrained=False: a CFM with random Point-MAE weights gives meaningless scores."
            raise ValueError(msg)
        group_size, num_group = int(kwargs.get("group_size", 128)), int(kwargs.get("num_group", 1024))
        target = weights_dir / f"pointmae_random_g{group_size}_n{num_group}.pth"
        kwargs["pointmae_weights"] = str(target if target.is_file() else write_random_pointmae_weights(target, group_size, num_group))
    kwargs["pointmae_weights"] = str(check_pointmae_weights(kwargs.get("pointmae_weights")))


def efficient_ad_teacher_path(model_size: str = "small") -> Path:
    """Return where anomalib looks for EfficientAd's pretrained teacher of ``model_size`` (``small`` or ``medium``)."""
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModelSize
    from anomalib.utils.path import get_pretrained_weights_dir

    size = EfficientAdModelSize(getattr(model_size, "value", model_size)).value
    return get_pretrained_weights_dir() / "efficientad_pretrained_weights" / f"pretrained_teacher_{size}.pth"


def _prepare_efficient_ad_arguments(kwargs: dict[str, Any], pretrained: bool, weights_dir: Path) -> None:
    imagenet_dir = kwargs.get("imagenet_dir", "./datasets/imagenette")
    if imagenet_dir == "random":
        if pretrained:
            msg = "imagenet_dir='random' needs pretrained=False: EfficientAd trained against random textures gives meaningless scores."
            raise ValueError(msg)
        kwargs["imagenet_dir"] = str(write_penalty_images(weights_dir / "penalty_images"))
    elif not _has_images(Path(imagenet_dir)):
        msg = (
            f"EfficientAd needs the Imagenette images in imagenet_dir ({imagenet_dir} has none). Download "
            f"{IMAGENETTE_URL}, extract it there (class folders of JPEG images), or pass imagenet_dir='random' "
            "with pretrained=False for a trial run (scores are then not meaningful)."
        )
        raise BaselineWeightsError(msg)
    teacher = efficient_ad_teacher_path(kwargs.get("model_size", "small"))
    if pretrained and not teacher.is_file():
        msg = (
            f"EfficientAd needs its pretrained teacher {teacher}. Download {EFFICIENTAD_WEIGHTS_URL} and extract it "
            f"into {teacher.parent.parent}, or build with pretrained=False (random teacher; scores are then not meaningful)."
        )
        raise BaselineWeightsError(msg)


def _has_images(folder: Path) -> bool:
    suffixes = {".jpeg", ".jpg", ".png"}
    return folder.is_dir() and any(path.suffix.lower() in suffixes for path in folder.rglob("*"))


def write_penalty_images(folder: str | Path, count: int = 32, size: int = 256, seed: int = 0) -> Path:
    """Write ``count`` random texture images as one class folder, a stand-in for Imagenette.

    EfficientAd's training penalises the student on generic images; without the
    Imagenette download, these smooth random textures keep the pipeline running.
    Scores of a model trained this way are not meaningful. Existing images are kept.
    """
    from PIL import Image

    folder = Path(folder)
    target = folder / "textures"
    if _has_images(target):
        return folder
    target.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        coarse = torch.rand(1, 3, 8, 8, generator=generator)
        fine = torch.rand(1, 3, size, size, generator=generator)
        image = 0.8 * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False) + 0.2 * fine
        pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(target / f"texture_{index:03d}.png")
    return folder


def _keep_random_teacher(model: Any) -> None:  # noqa: ANN401
    """Make an EfficientAd skip loading its pretrained teacher at the start of training."""

    def keep_teacher() -> None:
        logger.warning("EfficientAd keeps a randomly initialised teacher (pretrained=False): its scores are not meaningful.")

    model.prepare_pretrained_model = keep_teacher


def _init_parameters(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)
