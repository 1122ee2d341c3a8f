"""``sim3d``: command-line tools that make data in the SiM3D layout."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from sim3d_datamodule.synthesis.defects import DEFECT_KINDS

KIND_CHOICE = click.Choice(DEFECT_KINDS)


def _parse_size(text: str) -> tuple[int, int]:
    width, separator, height = text.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        msg = f"Invalid image size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x480."
        raise click.BadParameter(msg)
    return int(width), int(height)


@click.group()
def main() -> None:
    """Make SiM3D-layout data: render meshes, build the demo category, import RGB-D sequences."""


@main.command()
@click.option("--mesh", "mesh_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="Triangle mesh: STL, OBJ, PLY, OFF or glTF.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root; renders go to OUT/CATEGORY/CATEGORY_synth.")
@click.option("--category", required=True, help="Category name, e.g. plastic_stool.")
@click.option("--views", type=int, default=12, show_default=True, help="Number of views of a ring or sphere rig (ignored with --cameras).")
@click.option("--rig", type=click.Choice(["ring", "sphere"]), default="ring", show_default=True, help="Camera placement around the mesh.")
@click.option("--cameras", "cameras_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Render from the views of this cameras.json (world frame = mesh frame, metres) instead of a rig.")
@click.option("--units", type=click.Choice(["m", "cm", "mm"]), default="mm", show_default=True, help="Length unit of the mesh coordinates.")
@click.option("--size", "size_text", default="640x480", show_default=True, help="Image size WIDTHxHEIGHT in pixels (rigs only).")
@click.option("--fov", type=float, default=40.0, show_default=True, help="Horizontal field of view of rig cameras, degrees.")
@click.option("--elevation", type=float, default=30.0, show_default=True, help="Elevation of the ring above the ground plane, degrees.")
@click.option("--up", "up_axis", type=click.Choice(["x", "y", "z"]), default="z", show_default=True, help="Mesh axis that points up.")
@click.option("--light", "--lights", "lights", multiple=True, help="Light 'head:I' (at each camera) or 'X,Y,Z:I' (from direction X,Y,Z); repeat for several. Default: head:0.55 and 0.3,-0.4,1:0.45.")
@click.option("--ambient", type=float, default=0.1, show_default=True, help="Ambient light, gray level times albedo.")
@click.option("--albedo", type=float, default=0.75, show_default=True, help="Surface albedo in [0, 1].")
@click.option("--defect", "defect_kinds", type=KIND_CHOICE, multiple=True, help="Add a defect of this kind (repeat for several); ground truth goes to OUT/CATEGORY/CATEGORY_bad_render/gt.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the defect placement.")
def render(mesh_path, out, category, views, rig, cameras_path, units, size_text, fov, elevation, up_axis, lights, ambient, albedo, defect_kinds, seed) -> None:
    """Render gray and depth views of a mesh as a CATEGORY_synth folder (synth2real training data)."""
    from sim3d_datamodule.synthesis.mesh_category import render_mesh_category  # noqa: PLC0415
    from sim3d_datamodule.synthesis.render import DEFAULT_LIGHTS, parse_light  # noqa: PLC0415

    try:
        parsed_lights = tuple(parse_light(text) for text in lights) if lights else DEFAULT_LIGHTS
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--light") from error
    width, height = _parse_size(size_text)
    try:
        written = render_mesh_category(
            mesh_path,
            out,
            category,
            views=views,
            rig=rig,
            cameras_path=cameras_path,
            units=units,
            size=(width, height),
            fov=fov,
            elevation=elevation,
            up_axis=up_axis,
            lights=parsed_lights,
            ambient=ambient,
            albedo=albedo,
            defect_kinds=defect_kinds,
            seed=seed,
        )
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    for folder in written:
        click.echo(f"wrote {folder}")


@main.command("make-demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root; the category goes to OUT/CATEGORY.")
@click.option("--category", type=click.Choice(["demo_stool", "demo_vase", "demo_bin", "demo_cabinet"]), default="demo_stool", show_default=True, help="Procedural object.")
@click.option("--views", type=int, default=8, show_default=True, help="Views per instance (a ring at 30 degrees elevation).")
@click.option("--image-size", type=int, default=192, show_default=True, help="Square image side in pixels.")
@click.option("--nominal", type=int, default=4, show_default=True, help="Nominal test instances.")
@click.option("--anomalous", type=int, default=4, show_default=True, help="Anomalous test instances.")
@click.option("--kind", "kinds", type=KIND_CHOICE, multiple=True, help="Defect kinds to use in turn (repeat); default all.")
@click.option("--defect-size", type=click.FloatRange(min=0.0, min_open=True), default=0.1, show_default=True, help="Defect radius as a fraction of the object's bounding radius.")
@click.option("--severity", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True, help="Defect depth and contrast multiplier.")
@click.option("--synth/--no-synth", default=False, show_default=True, help="Also write a clean CATEGORY_synth render.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of capture effects and defects.")
def make_demo(out, category, views, image_size, nominal, anomalous, kinds, defect_size, severity, synth, seed) -> None:
    """Write the embedded procedural demo category (no download needed)."""
    from sim3d_datamodule.synthesis.demo import make_demo_dataset  # noqa: PLC0415

    if views < 1 or image_size < 16 or nominal < 0 or anomalous < 0 or nominal + anomalous < 1:
        msg = (
            f"Invalid demo size: --views {views} (>= 1), --image-size {image_size} (>= 16), --nominal {nominal} and "
            f"--anomalous {anomalous} (>= 0, at least one test instance in total)."
        )
        raise click.BadParameter(msg)
    folder = make_demo_dataset(
        out,
        category=category,
        views=views,
        image_size=image_size,
        seed=seed,
        nominal=nominal,
        anomalous=anomalous,
        synth=synth,
        kinds=kinds or DEFECT_KINDS,
        defect_size=defect_size,
        severity=severity,
    )
    click.echo(f"wrote {folder}")


@main.command("import-rgbd")
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True, help="Sequence folder with frame-XXXXXX.{color.jpg,depth.png,pose.txt}.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root; the category goes to OUT/CATEGORY.")
@click.option("--category", required=True, help="Category name.")
@click.option("--views", type=int, default=8, show_default=True, help="View slots along the trajectory.")
@click.option("--nominal", type=int, default=4, show_default=True, help="Nominal test instances.")
@click.option("--anomalous", type=int, default=4, show_default=True, help="Anomalous test instances (with injected defects).")
@click.option("--frame-stride", type=int, default=3, show_default=True, help="Frames between the instances sharing a view slot.")
@click.option("--downsample", type=int, default=2, show_default=True, help="Integer image reduction factor (2: 640x480 -> 320x240).")
@click.option("--depth-scale", type=float, default=0.001, show_default=True, help="Metres per depth-PNG unit.")
@click.option("--max-depth", type=float, default=None, help="Depth beyond this many metres is marked missing.")
@click.option("--intrinsics", "intrinsics_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="3x3 K text file; default SRC/camera-intrinsics.txt.")
@click.option("--voxel-size", type=float, default=0.02, show_default=True, help="Ground-truth voxel edge, metres.")
@click.option("--kind", "kinds", type=KIND_CHOICE, multiple=True, help="Defect kinds to use in turn (repeat); default bump, dent, stain.")
@click.option("--defect-radius", type=float, default=0.08, show_default=True, help="Defect radius, metres.")
@click.option("--severity", type=float, default=1.0, show_default=True, help="Defect depth and contrast multiplier.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the defect placement.")
def import_rgbd_command(src, out, category, views, nominal, anomalous, frame_stride, downsample, depth_scale, max_depth, intrinsics_file, voxel_size, kinds, defect_radius, severity, seed) -> None:
    """Convert a posed RGB-D sequence (7-Scenes naming) into a SiM3D-layout category."""
    from sim3d_datamodule.synthesis.rgbd import import_rgbd  # noqa: PLC0415

    try:
        folder = import_rgbd(
            src,
            out,
            category,
            views=views,
            nominal=nominal,
            anomalous=anomalous,
            frame_stride=frame_stride,
            downsample=downsample,
            depth_scale=depth_scale,
            max_depth=max_depth,
            voxel_size=voxel_size,
            kinds=kinds or ("bump", "dent", "stain"),
            defect_radius=defect_radius,
            severity=severity,
            seed=seed,
            intrinsics_file=intrinsics_file,
        )
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {folder}")


@main.command("check-gt")
@click.argument("category_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check_gt(category_dir) -> None:
    """Check that every anomalous ground-truth voxel of CATEGORY_DIR's test instances is reached by some view's depth."""
    from sim3d_datamodule.synthesis.checks import check_ground_truth  # noqa: PLC0415

    instances = sorted(path.parent.parent for path in category_dir.glob("*/gt/anomaly_volume.npz"))
    if not instances:
        raise click.ClickException(f"No */gt/anomaly_volume.npz found under {category_dir}.")
    failed = 0
    click.echo(f"{'instance':<32} {'voxels':>8} {'anomalous':>9} {'unreached':>9} {'unreached anomalous':>19}")
    for instance in instances:
        try:
            result = check_ground_truth(instance)
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise click.ClickException(f"{instance}: {error}") from error
        failed += int(not result.ok)
        click.echo(f"{instance.name:<32} {result.voxels:>8} {result.anomalous:>9} {result.unreached:>9} {result.unreached_anomalous:>19}")
    if failed:
        raise click.ClickException(f"{failed} instance(s) have anomalous voxels that no view's depth reaches.")


if __name__ == "__main__":
    main()
