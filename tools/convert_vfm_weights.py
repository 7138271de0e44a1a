"""Convert a VFM's weights file (any family's official release, or timm's) into the timm model
rein-d2 builds.

Takes what each family's official config uses: DINOv2 / DINOv3 `.pth`, EVA02's checkpoint,
OpenAI's CLIP `ViT-L-14.pt` (a TorchScript archive, of which only the tensors are read), SAM's
`sam_vit_h_4b8939.pth`, MAE's `mae_pretrain_vit_large.pth`, or a timm file. Key names become
timm's, the patch kernel and position grid are resized as the family's official code does
(e.g. DINOv2-L/14 at 518 px -> patch 16 at 512 px), a file of another family is refused with
the tensors that differ, and the result is written as .safetensors (atomically), ready for
MODEL.VIT.WEIGHTS.

  python tools/convert_vfm_weights.py dinov2_vitl14_pretrain.pth dinov2_vitl16_512.safetensors \
      --timm-name vit_large_patch14_dinov2 --patch-size 16 --img-size 512
  python tools/convert_vfm_weights.py ViT-L-14.pt clip_vitl16_512.safetensors \
      --timm-name vit_large_patch14_clip_quickgelu_224 --patch-size 16 --img-size 512
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detectron2.utils.logger import setup_logger
from safetensors.torch import save_file
from tqdm import tqdm

from rein_d2.checkpoint.vfm_weights import fit_to_model, load_tensors, read_state_dict
from rein_d2.modeling.backbone import create_timm_vfm
from rein_d2.utils.atomic import atomic_output
from rein_d2.utils.cli import user_errors


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="an official release (DINOv2, DINOv3, EVA02, OpenAI CLIP, SAM, MAE) or a timm "
                        ".pth/.safetensors: a path or an https:// URL "
                        "(optionally ending in #sha256=<digest>); pickled files are read by the restricted "
                        "reader, which refuses any that would run code")
    parser.add_argument("output", type=Path, help="where to write the converted .safetensors")
    parser.add_argument("--timm-name", required=True, help="timm architecture, e.g. vit_large_patch14_dinov2")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=512, help="image size of the position grid")
    parser.add_argument("--no-dynamic-img-size", action="store_true", help="for timm models without it (SAM)")
    for name in ("embed-dim", "depth", "num-heads"):
        parser.add_argument(f"--{name}", type=int, default=0, help="architecture override (0: timm's)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.output.suffix != ".safetensors":
        raise SystemExit(f"output {args.output} must end in .safetensors")
    overrides = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth),
                                   ("num_heads", args.num_heads)) if v}
    model = create_timm_vfm(args.timm_name, args.patch_size, args.img_size,
                            dynamic_img_size=not args.no_dynamic_img_size, **overrides)
    state = fit_to_model(read_state_dict(args.input, "input"), model, args.input, "input")
    missing, unused = load_tensors(model, state, args.input, "input")  # refuses tensors of other shapes
    target = model.state_dict()
    converted = {key: tensor.contiguous() for key, tensor in tqdm(state.items(), desc="converting", unit="tensor")
                 if key in target}
    with atomic_output(args.output) as tmp:
        save_file(converted, str(tmp))
    print(f"wrote {len(converted)} tensors to {args.output}")
    if missing:
        print(f"missing from the input ({len(missing)}): {', '.join(missing)}")
    if unused:
        print(f"not used by {args.timm_name} ({len(unused)}): {', '.join(unused)}")


if __name__ == "__main__":
    setup_logger(name="rein_d2")  # shows what the restricted reader kept inert
    user_errors(main)()
