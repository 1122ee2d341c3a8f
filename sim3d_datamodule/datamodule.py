"""SiM3D multi-view datamodule for anomalib."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import TestSplitMode, ValSplitMode
from torch.utils.data import DataLoader

from sim3d_datamodule.datasets import GridReference, SiM3DInstanceDataset, SiM3DViewDataset, SiM3DViewPairDataset
from sim3d_datamodule.io import SiM3DFormatError, read_ground_truth
from sim3d_datamodule.layout import VIEW_SAMPLINGS, InstanceFiles, check_setup, check_view_counts, find_instances, select_views

logger = logging.getLogger(__name__)

_VAL_SPLIT_MODES = (ValSplitMode.NONE, ValSplitMode.SAME_AS_TEST, ValSplitMode.FROM_TEST)


class SiM3D(AnomalibDataModule):
    """Multi-view RGB-D anomaly detection data in the SiM3D folder layout.

    By default every batch is a :class:`~sim3d_datamodule.items.MultiViewBatch`
    with all selected views of each instance. With ``flatten=True`` every
    batch is a :class:`~sim3d_datamodule.items.ViewBatch` of single views with
    xyz maps, so single-view anomalib models (Patchcore, Padim, CFM) run
    unchanged. With ``train_pairs=True`` the training loader yields ordered
    view pairs (``V = 2``) instead of whole instances.

    Args:
        root: folder that contains the category folders.
        category: category folder name, e.g. ``"plastic_stool"``.
        setup: ``"real2real"`` trains on ``<category>_real``, ``"synth2real"``
            on the renders in ``<category>_synth``.
        image_size: side of the square images after edge-padding and resizing, pixels.
        views: ``"all"``, a number of views, or explicit view indices (positions in
            the sorted view list).
        view_sampling: how a number of views is chosen: ``"even"`` (evenly
            spaced from view 0), ``"first"`` or ``"random"`` (drawn with ``seed``).
        flatten: serve single views as anomalib ``DepthBatch``-compatible batches.
        train_pairs: serve ordered view pairs of the training instances for training.
        normalize_image: standardise grayscale with the SiM3D mean 0.445 and
            std 0.269; false gives gray in [0, 1], for models whose
            pre-processor normalises with its own statistics.
        cache_views: keep preprocessed training views in memory (per loader
            process), which pays off when ``train_pairs`` loads each view many
            times; about 16 MB per view at ``image_size=896``.
        voxel_size: voxel edge in metres for nominal test instances without a
            ground-truth file when no instance of the category has one.
        train_batch_size: instances (or views, or pairs) per training batch.
        eval_batch_size: instances (or views) per validation and test batch.
        num_workers: data-loading worker processes.
        val_split_mode: ``"same_as_test"`` (default), ``"from_test"`` or ``"none"``.
        val_split_ratio: fraction of test instances moved to validation with ``"from_test"``.
        seed: seed of the random view sampling and of the validation split.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/SiM3D",
        category: str = "plastic_stool",
        setup: str = "real2real",
        image_size: int = 896,
        views: int | list[int] | str = "all",
        view_sampling: str = "even",
        flatten: bool = False,
        train_pairs: bool = False,
        normalize_image: bool = True,
        cache_views: bool = False,
        voxel_size: float | None = None,
        train_batch_size: int = 1,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = 0,
    ) -> None:
        check_setup(setup)
        if view_sampling not in VIEW_SAMPLINGS:
            msg = f"Unknown view_sampling {view_sampling!r}; choose one of {list(VIEW_SAMPLINGS)}."
            raise ValueError(msg)
        if ValSplitMode(val_split_mode) not in _VAL_SPLIT_MODES:
            msg = f"val_split_mode {val_split_mode!r} is not supported by SiM3D; choose one of {[mode.value for mode in _VAL_SPLIT_MODES]}."
            raise ValueError(msg)
        if isinstance(image_size, Sequence):
            # anomalib's get_datamodule turns image_size into a tuple.
            if len(set(image_size)) != 1:
                msg = f"image_size must be one side length (images are square), got {image_size}."
                raise ValueError(msg)
            image_size = image_size[0]
        if int(image_size) < 1:
            msg = f"image_size must be a positive number of pixels, got {image_size}."
            raise ValueError(msg)
        if flatten and train_pairs:
            msg = "flatten and train_pairs exclude each other: flattened batches hold single views."
            raise ValueError(msg)
        if voxel_size is not None and voxel_size <= 0:
            msg = f"voxel_size must be a positive length in metres, got {voxel_size}."
            raise ValueError(msg)

        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        self.root = Path(root)
        self.category = category
        self.setup_name = setup
        self.image_size = int(image_size)
        self.views = views
        self.view_sampling = view_sampling
        self.flatten = flatten
        self.train_pairs = train_pairs
        self.normalize_image = normalize_image
        self.cache_views = cache_views
        self.voxel_size = voxel_size
        self.view_indices: list[int] = []

    def prepare_data(self) -> None:
        """Check that the category folder exists; SiM3D is never downloaded."""
        find_instances(self.root, self.category, self.setup_name)

    def _grid_reference(self, test: Sequence[InstanceFiles]) -> GridReference | None:
        """Return the origin and voxel size shared by the category's ground-truth files."""
        with_ground_truth = [instance for instance in test if instance.ground_truth_path is not None]
        if not with_ground_truth:
            if self.voxel_size is None:
                logger.warning(
                    "No test instance of category '%s' has a ground-truth file, so nominal instances get no voxel grid. "
                    "Pass voxel_size to voxelise them from their depth maps.",
                    self.category,
                )
                return None
            return GridReference(origin=torch.zeros(3, dtype=torch.float64), voxel_size=self.voxel_size, source="the voxel_size option")

        reference = with_ground_truth[0]
        grid = read_ground_truth(reference.ground_truth_path)
        for other in with_ground_truth[1:]:
            other_grid = read_ground_truth(other.ground_truth_path)
            if abs(other_grid.voxel_size - grid.voxel_size) > 1e-9 * grid.voxel_size:
                msg = (
                    f"{other.ground_truth_path}: voxel_size {other_grid.voxel_size} differs from {grid.voxel_size} in "
                    f"{reference.ground_truth_path}. All ground truth of a category must share one voxel size."
                )
                raise SiM3DFormatError(msg)
        return GridReference(origin=grid.origin, voxel_size=grid.voxel_size, source=str(reference.ground_truth_path))

    def _setup(self, _stage: str | None = None) -> None:
        train, test = find_instances(self.root, self.category, self.setup_name)
        if self.views == "all":
            check_view_counts([*train, *test])
        fewest = min(instance.num_views for instance in [*train, *test])
        self.view_indices = select_views(fewest, self.views, self.view_sampling, self.seed)

        common = {"view_indices": self.view_indices, "image_size": self.image_size, "normalize_image": self.normalize_image}
        if self.flatten:
            self.train_data = SiM3DViewDataset(train, **common)
            self.test_data = SiM3DViewDataset(test, **common)
            self._warn_if_output_images_collide(test)
            return

        reference = self._grid_reference(test)
        train_class = SiM3DViewPairDataset if self.train_pairs else SiM3DInstanceDataset
        self.train_data = train_class(train, **common, cache_views=self.cache_views)
        self.test_data = SiM3DInstanceDataset(test, **common, grid_reference=reference)

    def _warn_if_output_images_collide(self, test: Sequence[InstanceFiles]) -> None:
        """Warn when anomalib's ImageVisualizer would write every instance's view to the same file.

        In anomalib 2.7 the visualizer keeps the folders of ``image_path`` below a
        folder named like the datamodule (``SiM3D``, any case) and its category.
        Without such a folder it keeps only the parent folder (``rgb``), so every
        instance writes ``images/rgb/<view>_2.png`` and overwrites the others.
        """
        parts = [part.lower() for part in Path(test[0].views[0].image_path).parts] if test else []
        if self.name.lower() in parts:
            return
        logger.warning(
            "Dataset root %s has no folder named %s in its path, so anomalib's image visualizer will save every "
            "test instance's views as images/rgb/<view>_2.png and later instances overwrite earlier ones. "
            "Keep the category under a folder named %s (the default root is ./datasets/SiM3D) or link it there.",
            self.root,
            self.name,
            self.name,
        )

    def pair_dataloader(self, batch_size: int | None = None, shuffle: bool = True) -> DataLoader:
        """Return a loader over all ordered view pairs of the training instances (``V = 2`` batches)."""
        if not hasattr(self, "train_data"):
            self.setup()
        train = [self.train_data.instances[name] for name in dict.fromkeys(self.train_data.samples.instance)]
        pairs = SiM3DViewPairDataset(train, self.view_indices, self.image_size, self.normalize_image, cache_views=self.cache_views)
        return DataLoader(
            pairs,
            batch_size=batch_size or self.train_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=pairs.collate_fn,
        )

