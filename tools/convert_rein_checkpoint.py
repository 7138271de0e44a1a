"""Convert an officially released Rein checkpoint (MMSegmentation) into a rein-d2 checkpoint.

The input is an MMEngine checkpoint as released (its `state_dict` is converted; `meta`,
`message_hub` and `param_schedulers` are read as inert data and left out) or a bare state
dict, read by the restricted reader, which refuses any file that would run code. Every
tensor is renamed (rein_d2/checkpoint/official_rein.py) and checked against the model that
--config-file builds; an unknown key or a shape that does not fit stops the conversion.
Rein's query layers (`reins.transform`, `reins.merge`), which every official release carries,
are left out with a note when the config has no query link (MODEL.REIN.LINK_TOKEN_TO_QUERY).
The frozen VFM is not needed here: the output holds what the release holds (Rein and head),
and MODEL.VIT.WEIGHTS supplies the backbone at evaluation time.

  python tools/convert_rein_checkpoint.py dinov2_rein_and_head.pth rein_dinov2_large_gta_512.pth \
      --config-file configs/dinov2/rein_dinov2_large_gta_512.yaml
  python train_net.py --config-file configs/dinov2/rein_dinov2_large_gta_512.yaml --eval-only \
      MODEL.WEIGHTS rein_dinov2_large_gta_512.pth
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from rein_d2.config import load_config
from rein_d2.checkpoint.compact import IncompatibleCheckpointError
from rein_d2.checkpoint.official_rein import convert_official_rein, drop_unused_tensors
from rein_d2.checkpoint.vfm_weights import read_state_dict
from rein_d2.utils.atomic import atomic_output
from rein_d2.utils.cli import user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official Rein checkpoint (.pth: MMEngine checkpoint or state dict), "
                        "a path or an https:// URL (optionally ending in #sha256=<digest>)")
    parser.add_argument("output", type=Path, help="rein-d2 checkpoint to write (.pth)")
    parser.add_argument("--config-file", required=True, help="the rein-d2 config the checkpoint is for")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides, last")
    return parser.parse_args(argv)


def model_shapes(config_file: str, opts: list[str]) -> dict[str, torch.Size]:
    """Shapes of the model's tensors, built on the CPU without loading any weight file."""
    cfg = load_config(config_file, opts)
    cfg.MODEL.VIT.WEIGHTS = cfg.MODEL.CNN.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return {k: v.shape for k, v in build_model(cfg).state_dict().items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    converted = convert_official_rein(read_state_dict(args.input, "input"))
    shapes = model_shapes(args.config_file, args.opts)
    converted, notes = drop_unused_tensors(converted, shapes)
    for note in notes:
        print(f"note: {note}")
    problems = []
    for key, tensor in tqdm(converted.items(), desc="checking", unit="tensor"):
        if key not in shapes:
            problems.append(f"  {key}: not in the model of {args.config_file}")
        elif tensor.shape != shapes[key]:
            problems.append(f"  {key}: checkpoint {tuple(tensor.shape)} vs model {tuple(shapes[key])}")
    if problems:
        raise IncompatibleCheckpointError(f"{args.input} does not fit {args.config_file}:\n" + "\n".join(problems))
    missing = sorted(k for k in shapes if k not in converted and not k.startswith("backbone.vit."))
    with atomic_output(args.output) as tmp:
        torch.save({"model": converted}, tmp)
    print(f"wrote {len(converted)} tensors to {args.output}")
    if missing:
        print(f"not in the release (left as initialised): {', '.join(missing)}")


if __name__ == "__main__":
    setup_logger(name="rein_d2")  # shows what the restricted reader kept inert
    user_errors(main)()
