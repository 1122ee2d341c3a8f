"""Compare token statistics of a pretrained encoder with the same architecture at random initialisation.

Usage (from the repository root):
    python -m benchmarks.eval_encoder_features ENCODER.ckpt FOLDER PATTERN [--every 12] [--count 30]

Reads every ``--every``-th matching file of FOLDER (at most ``--count``). Each file is normalised
as Modmap does (``normalize_depth`` with the encoder's mode, or ``normalize_gray``) and resized to
224x168. Two numbers are printed per encoder. The first is the mean cosine similarity between the
class tokens of different frames, where 1 means the class token ignores the input. The second is
the effective rank of the centred patch tokens: the exponential of the entropy of the normalised
squared singular values.
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

from anomalib_modmap.encoder_checkpoint import load_encoder
from anomalib_modmap.pretraining.sources import find_files, read_depth, read_gray
from sim3d_datamodule.transforms import normalize_depth, normalize_gray


def token_statistics(backbone: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Return the mean class-token cosine between images and the effective rank of the patch tokens."""
    with torch.no_grad():
        tokens = backbone.forward_features(images)
    classes = F.normalize(tokens[:, 0], dim=-1)
    patches = F.normalize(tokens[:, backbone.num_prefix_tokens :].flatten(0, 1), dim=-1)
    off_diagonal = ~torch.eye(len(classes), dtype=torch.bool)
    cosine = (classes @ classes.t())[off_diagonal].mean().item()
    singular = torch.linalg.svdvals(patches - patches.mean(dim=0))
    share = singular**2 / (singular**2).sum()
    rank = torch.exp(-(share * share.clamp_min(1e-12).log()).sum()).item()
    return cosine, rank


def main() -> None:
    """Print the token statistics of the encoder and of its randomly initialised twin."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoder", help="encoder checkpoint written by modmap pretrain-depth/-image")
    parser.add_argument("folder", help="folder of depth maps or images")
    parser.add_argument("pattern", help="file-name pattern, e.g. '*.depth.png'")
    parser.add_argument("--every", type=int, default=12, help="use every n-th matching file")
    parser.add_argument("--count", type=int, default=30, help="maximum number of files")
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone, checkpoint = load_encoder(args.encoder)
    random_backbone = timm.create_model(checkpoint.timm_name, pretrained=False, **checkpoint.timm_kwargs).eval()
    files = find_files([f"folder:{args.folder}"], checkpoint.modality, args.pattern)[:: args.every][: args.count]

    images = []
    for source in files:
        if checkpoint.modality == "depth":
            depth, valid = read_depth(source)
            view = normalize_depth(torch.from_numpy(depth), torch.from_numpy(valid), checkpoint.depth_normalization)
            view = view[None, None]
        else:
            gray = torch.from_numpy(read_gray(source))[None, None]
            view = normalize_gray(gray, channels=checkpoint.timm_kwargs["in_chans"])
        images.append(F.interpolate(view, size=(168, 224), mode="nearest"))
    batch = torch.cat(images)

    for name, network in (("random weights", random_backbone), ("pretrained", backbone)):
        cosine, rank = token_statistics(network, batch)
        print(f"{checkpoint.modality} {name}: class-token cosine between frames {cosine:.3f}, patch-token effective rank {rank:.1f}")


if __name__ == "__main__":
    main()
