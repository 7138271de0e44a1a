"""Export a trained model's network on one crop to ONNX, checked in onnxruntime against PyTorch.

    python tools/export_onnx.py --config-file configs/dinov2/rein_dinov2_large_gta_512.yaml \\
        --output model.onnx --opts MODEL.WEIGHTS output/model_final.pth

The file takes a batch of normalised crops [batch, 3, H, W] of the config's TEST.SLIDE.CROP_SIZE
(the batch dimension is dynamic) and returns the class logits [batch, Q, K+1] and mask logits
[batch, Q, H/4, W/4] of Mask2Former: the VFM with Rein (its weights-only tensors folded in as
constants), the pixel decoder and the transformer decoder. The sliding window, resizing and
colouring stay in Python: `demo/demo.py --backend onnxruntime --onnx model.onnx` runs them around
an onnxruntime session. Before the file is put in place, onnxruntime (CPU) runs it on random
crops (batches of 1 and 2) against PyTorch; a max abs difference above 1e-3 fails the export.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detectron2.utils.logger import setup_logger

from rein_d2.checkpoint.trained_model import build_trained_model
from rein_d2.config import load_config
from rein_d2.export.onnx_export import CHECK_BATCHES, TOLERANCE, export_crop_network
from rein_d2.utils.cli import user_errors

logger = logging.getLogger("rein_d2.export_onnx")
DEFAULT_NAME = "model.onnx"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config file")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help=f"where to write the ONNX file (default: OUTPUT_DIR/{DEFAULT_NAME})")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. --opts MODEL.WEIGHTS model_final.pth")
    return parser.parse_args(argv)


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # exported and checked on the CPU, where onnxruntime's check runs
    cfg.freeze()
    output = args.output or Path(cfg.OUTPUT_DIR) / DEFAULT_NAME
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: exporting the model's initial weights")
    model = build_trained_model(cfg)
    crop_size = tuple(cfg.TEST.SLIDE.CROP_SIZE)
    logger.info("exporting the network on crops of %dx%d to %s ...", *crop_size, output)
    report = export_crop_network(model, crop_size, output, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    differences = ", ".join(f"{name} {value:.3g}" for name, value in report.max_abs_diff.items())
    logger.info("wrote %s (%.1f MB; input [batch, 3, %d, %d]) in %.1f s; onnxruntime vs PyTorch on random crops "
                "(batches %s), max abs difference: %s (tolerance %g), checked in %.1f s",
                report.path, report.file_bytes / 2**20, *report.input_size, report.export_seconds,
                " and ".join(map(str, CHECK_BATCHES)), differences, TOLERANCE, report.check_seconds)
    return 0


if __name__ == "__main__":
    setup_logger(name="fvcore")
    setup_logger()
    setup_logger(name="rein_d2")
    sys.exit(main())
