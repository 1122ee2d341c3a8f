"""Find categories, instances and views in a SiM3D-layout folder tree.

Layout of ``<root>/<category>/``:

- ``<category>_real/``: nominal training instance of the ``real2real`` setup,
  with ``rgb/<view>_2.png``, ``depth/<view>.npy`` and ``cameras.json``;
- ``<category>_synth/``: training renders of the ``synth2real`` setup, with
  ``RGB/<view>_2.png``, ``DEPTH/<view>_depth.exr`` and ``cameras.json``;
- every other folder: a test instance laid out like the real one, plus
  ``gt/anomaly_volume.npz``. A name containing ``bad`` marks it anomalous.

Views are ordered by sorted file stem. Only file names are inspected here;
:mod:`sim3d_datamodule.io` reads and validates the contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sim3d_datamodule.io import SiM3DFormatError

Setup = Literal["real2real", "synth2real"]
SETUPS: tuple[str, ...] = ("real2real", "synth2real")

ViewSampling = Literal["even", "first", "random"]
VIEW_SAMPLINGS: tuple[str, ...] = ("even", "first", "random")

# The SiM3D categories as spelled in the published folders.
SIM3D_CATEGORIES: tuple[str, ...] = (
    "plastic_stool",
    "rubbish_bin",
    "wicker_vase",
    "bathroom_forniture",
    "container",
    "plastic_vase",
    "sink_cabinet",
    "wooden_stool",
)

CAMERAS_FILE = "cameras.json"
GROUND_TRUTH_FILE = Path("gt") / "anomaly_volume.npz"


@dataclass(frozen=True)
class _FileNaming:
    """Folder and file-name pattern of one instance kind."""

    image_folder: str
    image_suffix: str
    depth_folder: str
    depth_suffix: str


_REAL_NAMING = _FileNaming("rgb", "_2.png", "depth", ".npy")
_SYNTH_NAMING = _FileNaming("RGB", "_2.png", "DEPTH", "_depth.exr")


@dataclass(frozen=True)
class ViewFiles:
    """Files of one view: ``name`` is the shared file stem."""

    name: str
    image_path: Path
    depth_path: Path


@dataclass(frozen=True)
class InstanceFiles:
    """Files of one instance.

    Attributes:
        name: folder name.
        directory: instance folder.
        label: 1 for an anomalous instance, 0 otherwise.
        split: ``"train"`` or ``"test"``.
        synthetic: true for rendered training data (EXR depth).
        views: all views found, sorted by name.
        cameras_path: ``cameras.json``, or ``None`` when absent (allowed for training).
        ground_truth_path: ``gt/anomaly_volume.npz``, or ``None`` when absent.
    """

    name: str
    directory: Path
    label: int
    split: str
    synthetic: bool
    views: tuple[ViewFiles, ...]
    cameras_path: Path | None
    ground_truth_path: Path | None

    @property
    def num_views(self) -> int:
        """Number of views found on disk."""
        return len(self.views)


def check_setup(setup: str) -> None:
    """Raise ``ValueError`` for a setup other than ``real2real`` or ``synth2real``."""
    if setup not in SETUPS:
        msg = f"Unknown setup {setup!r}; choose one of {list(SETUPS)}."
        raise ValueError(msg)


def list_categories(root: str | Path) -> list[str]:
    """Return the sorted category folder names under ``root``."""
    root = Path(root)
    if not root.is_dir():
        msg = f"Dataset root {root} does not exist or is not a folder. Pass the folder that contains the category folders."
        raise FileNotFoundError(msg)
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def category_dir(root: str | Path, category: str) -> Path:
    """Return ``root/category``; a missing category raises ``FileNotFoundError`` listing the existing ones."""
    directory = Path(root) / category
    if not directory.is_dir():
        existing = list_categories(root)
        msg = f"Category folder {directory} not found. Categories under {root}: {existing or 'none'}."
        raise FileNotFoundError(msg)
    return directory


def _kind_part(folder_name: str, category: str) -> str:
    """Return the part of an instance folder name after the category prefix, lower-cased."""
    name = folder_name.lower()
    prefix = category.lower()
    return name[len(prefix) :] if name.startswith(prefix) else name


def find_views(directory: Path, synthetic: bool) -> tuple[ViewFiles, ...]:
    """Return the views of one instance folder, sorted by name.

    Raises :class:`SiM3DFormatError` when the image or depth folder is missing,
    when no view is found, or when a view lacks its image or depth partner.
    """
    naming = _SYNTH_NAMING if synthetic else _REAL_NAMING
    image_dir = directory / naming.image_folder
    depth_dir = directory / naming.depth_folder
    for folder in (image_dir, depth_dir):
        if not folder.is_dir():
            msg = f"{folder}: folder not found. A {'synthetic' if synthetic else 'real'} instance needs '{naming.image_folder}/' and '{naming.depth_folder}/'."
            raise SiM3DFormatError(msg)

    images = {path.name[: -len(naming.image_suffix)]: path for path in image_dir.iterdir() if path.name.endswith(naming.image_suffix)}
    depths = {path.name[: -len(naming.depth_suffix)]: path for path in depth_dir.iterdir() if path.name.endswith(naming.depth_suffix)}

    without_depth = sorted(set(images) - set(depths))
    if without_depth:
        expected = [str(depth_dir / f"{name}{naming.depth_suffix}") for name in without_depth[:3]]
        msg = f"{directory}: views {without_depth} have an image but no depth map; expected {expected}. Add the depth maps or remove the images."
        raise SiM3DFormatError(msg)
    without_image = sorted(set(depths) - set(images))
    if without_image:
        expected = [str(image_dir / f"{name}{naming.image_suffix}") for name in without_image[:3]]
        msg = f"{directory}: views {without_image} have a depth map but no image; expected {expected}. Add the images or remove the depth maps."
        raise SiM3DFormatError(msg)
    if not images:
        msg = f"{directory}: no views found; expected files '{naming.image_folder}/<view>{naming.image_suffix}' and '{naming.depth_folder}/<view>{naming.depth_suffix}'."
        raise SiM3DFormatError(msg)

    return tuple(ViewFiles(name, images[name], depths[name]) for name in sorted(images))


def _instance_files(directory: Path, split: str, synthetic: bool, label: int) -> InstanceFiles:
    cameras = directory / CAMERAS_FILE
    ground_truth = directory / GROUND_TRUTH_FILE
    return InstanceFiles(
        name=directory.name,
        directory=directory,
        label=label,
        split=split,
        synthetic=synthetic,
        views=find_views(directory, synthetic),
        cameras_path=cameras if cameras.is_file() else None,
        ground_truth_path=ground_truth if ground_truth.is_file() else None,
    )


def find_instances(root: str | Path, category: str, setup: str) -> tuple[list[InstanceFiles], list[InstanceFiles]]:
    """Return the training and test instances of ``category`` for ``setup``, each sorted by name.

    Training instances are the folders whose name (after the category prefix)
    contains ``real`` for ``real2real`` or ``synth`` for ``synth2real``. Test
    instances are the folders containing neither; ``bad`` in the name gives
    label 1. Test instances need ``cameras.json``, and anomalous ones need
    ``gt/anomaly_volume.npz``. View counts are not compared here (see
    :func:`check_view_counts`).
    """
    check_setup(setup)
    directory = category_dir(root, category)
    train_key = "real" if setup == "real2real" else "synth"

    train, test = [], []
    for folder in sorted(entry for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith(".")):
        kind = _kind_part(folder.name, category)
        if "real" in kind or "synth" in kind:
            if train_key in kind:
                train.append(_instance_files(folder, "train", synthetic=train_key == "synth", label=0))
            continue
        instance = _instance_files(folder, "test", synthetic=False, label=int("bad" in kind))
        if instance.cameras_path is None:
            msg = f"{folder / CAMERAS_FILE}: cameras.json not found. Test instances need calibration to build anomaly volumes."
            raise SiM3DFormatError(msg)
        if instance.label == 1 and instance.ground_truth_path is None:
            msg = f"{folder / GROUND_TRUTH_FILE}: ground-truth file not found. Anomalous instance '{folder.name}' needs it to be scored."
            raise SiM3DFormatError(msg)
        test.append(instance)

    if not train:
        expected = f"{category}_{train_key}"
        msg = f"{directory}: no training instance for setup '{setup}'; expected a folder such as '{expected}'. Pick the other setup or add the folder."
        raise SiM3DFormatError(msg)
    if not test:
        msg = f"{directory}: no test instance found; every folder not named '*real*' or '*synth*' is a test instance."
        raise SiM3DFormatError(msg)
    return train, test


def check_view_counts(instances: Sequence[InstanceFiles]) -> None:
    """Raise :class:`SiM3DFormatError` unless every instance has the same number of views."""
    reference = instances[0]
    for instance in instances[1:]:
        if instance.num_views != reference.num_views:
            msg = (
                f"Instance '{instance.name}' has {instance.num_views} views but '{reference.name}' has "
                f"{reference.num_views}. Give every instance of the category the same views, or request a subset "
                "with the 'views' option."
            )
            raise SiM3DFormatError(msg)


def select_views(num_views: int, views: str | int | Sequence[int] = "all", sampling: str = "even", seed: int | None = 0) -> list[int]:
    """Return sorted view indices to use out of ``num_views``.

    ``views`` is ``"all"``, a count, or explicit indices (then ``sampling`` is
    ignored). For a count, ``sampling`` picks evenly spaced views starting at
    view 0 (``"even"``), the first views (``"first"``), or a sorted random
    subset drawn with ``seed`` (``"random"``).
    """
    if sampling not in VIEW_SAMPLINGS:
        msg = f"Unknown view_sampling {sampling!r}; choose one of {list(VIEW_SAMPLINGS)}."
        raise ValueError(msg)
    if isinstance(views, str) and views.strip().isdigit():
        # Command lines and YAML files may deliver a count as text.
        views = int(views)
    if isinstance(views, str):
        if views != "all":
            msg = f"views must be 'all', a count or a list of indices, got {views!r}."
            raise ValueError(msg)
        return list(range(num_views))

    if isinstance(views, int) and not isinstance(views, bool):
        if not 1 <= views <= num_views:
            msg = f"views={views} is out of range: instances have {num_views} views."
            raise ValueError(msg)
        if sampling == "first":
            return list(range(views))
        if sampling == "even":
            return [index * num_views // views for index in range(views)]
        generator = np.random.default_rng(seed)
        return sorted(int(index) for index in generator.choice(num_views, size=views, replace=False))

    indices = [int(index) for index in views]
    if not indices:
        msg = "views must not be an empty list."
        raise ValueError(msg)
    out_of_range = [index for index in indices if not 0 <= index < num_views]
    if out_of_range:
        msg = f"View indices {out_of_range} are out of range: instances have {num_views} views (0 to {num_views - 1})."
        raise ValueError(msg)
    if len(set(indices)) != len(indices):
        msg = f"View indices {indices} contain duplicates."
        raise ValueError(msg)
    return sorted(indices)
