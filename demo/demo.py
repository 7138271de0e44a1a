"""Semantic segmentation of your own images, folders, dash-cam videos or a webcam.

    python demo/demo.py --config-file CONFIG.yaml --input photos/ more/*.jpg --output out/ \\
        --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file CONFIG.yaml --video-input drive.mp4 --output out/
    python demo/demo.py --config-file CONFIG.yaml --webcam
    python demo/demo.py --config-file CONFIG.yaml --input photos/ --output out/ \\
        --backend onnxruntime --onnx model.onnx

Each image gives <output>/<name>_seg.png: the predicted classes over the image in the
colours of the model's dataset, with a legend of the classes present (--side-by-side puts
the input on the left). Class names and colours come from the MetadataCatalog entry of
--dataset, by default the config's first DATASETS.TEST (else DATASETS.TRAIN) dataset; a
dataset without `stuff_colors` (e.g. Detectron2's ADE20K) gets a fixed generated palette,
the same on every run. A video gives <output>/<name>_seg.mp4 at the input's frame size and rate.
Semantic segmentation needs no confidence threshold: every pixel gets its most likely
class. With --backend onnxruntime, the network is an ONNX file from tools/export_onnx.py, run
by onnxruntime on the CPU, and everything around it (resizing, the sliding window of
TEST.SLIDE, colouring) is the same as with PyTorch; the config still gives the classes and
the test resize. Unreadable inputs are reported and skipped, inputs are never overwritten,
and outputs appear only once complete. Exit code: 0 when something was processed, 1 when
nothing could be, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import itertools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from PIL import Image
from predictor import Legend, SemanticPredictor, visualize
from tqdm import tqdm

from rein_d2.config import load_config
from rein_d2.data.class_check import model_classes
from rein_d2.errors import ReinD2Error
from rein_d2.export.onnx_runtime import OnnxSemanticSegmentor
from rein_d2.utils.atomic import atomic_write_image
from rein_d2.utils.cli import user_errors
from rein_d2.utils.video import VideoSink

logger = logging.getLogger("rein_d2.demo")

OUTPUT_SUFFIX = "_seg"  # ends every output name; folder inputs skip files named so
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
DEFAULT_FPS = 30.0
WINDOW = "rein-d2"
ESC = 27
BACKENDS = ("pytorch", "onnxruntime")
Render = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (BGR image, label map) -> what is shown or written


class DemoError(ReinD2Error):
    """A usage problem the user can fix; reported without a traceback, exit code 2."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="path to a config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="images, folders of images, or glob patterns such as 'imgs/*.jpg'")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0, shown in a window")
    parser.add_argument("--output", metavar="PATH",
                        help="a folder (or a file, for one image or a video); without it, results "
                             "are shown in a window")
    parser.add_argument("--side-by-side", action="store_true",
                        help="put the input left of the result")
    parser.add_argument("--dataset", metavar="NAME",
                        help="registered dataset whose class names and colours to show (default: the "
                             "config's first DATASETS.TEST, else DATASETS.TRAIN)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="video frames per model call (default: %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                        help="what runs the network (default: %(default)s)")
    parser.add_argument("--onnx", metavar="FILE",
                        help="the ONNX file of --backend onnxruntime, from tools/export_onnx.py")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. --opts MODEL.WEIGHTS model.pth "
                             "MODEL.DEVICE cpu")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but no GPU is available: running on the CPU",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def legend_for(cfg: CfgNode, dataset: str | None) -> Legend:
    """The legend of `dataset`, else of the config's first test (or training) dataset; refused
    unless the model predicts that dataset's number of classes."""
    name = dataset or next(iter([*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]), None)
    if name is None:
        raise DemoError("the config names no dataset (DATASETS.TEST and DATASETS.TRAIN are empty) to take "
                        "the class names and colours from; pass --dataset NAME")
    legend = Legend(model_classes(cfg, name))
    logger.info("class names and colours of dataset '%s' (%d classes)", name, len(legend.names))
    return legend


def make_predictor(cfg: CfgNode, args: argparse.Namespace) -> SemanticPredictor:
    """The predictor of --backend: the PyTorch model of the config, or its ONNX export in onnxruntime."""
    if args.backend == "pytorch":
        return SemanticPredictor(cfg)
    return SemanticPredictor(cfg, model=OnnxSemanticSegmentor.from_config(cfg, args.onnx))


def is_folder(output: str) -> bool:
    """An existing folder, or a path ending with a separator or without a file suffix."""
    return output.endswith(("/", os.sep)) or Path(output).is_dir() or not Path(output).suffix


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files named by paths, glob patterns and folders (their files, except earlier outputs)."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                            and not p.stem.endswith(OUTPUT_SUFFIX))
        elif any(c in pattern for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
            if not matches:
                logger.warning("no file matches %s", pattern)
            files += matches
        else:
            files.append(path)
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def image_outputs(inputs: list[Path], output: str) -> list[Path]:
    """Where each input's result goes; refuses any plan that would overwrite an input."""
    if not is_folder(output):
        target = Path(output)
        if len(inputs) != 1:
            raise DemoError(f"--output {output} names one file but {len(inputs)} images were "
                            "given; pass a folder instead")
        if not cv2.haveImageWriter(str(target)):
            raise DemoError(f"cannot write an image named {output}; use a .png or .jpg name "
                            "or a folder")
        if same_file(target, inputs[0]):
            raise DemoError(f"refusing to overwrite the input {inputs[0]}; choose another --output")
        return [target]
    folder, used, targets = Path(output), set(), []
    for path in inputs:
        names = (f"{path.stem}{'' if k == 1 else f'-{k}'}{OUTPUT_SUFFIX}.png"
                 for k in itertools.count(1))
        name = next(n for n in names if n not in used)
        used.add(name)
        targets.append(folder / name)
    sources = {p.resolve() for p in inputs}
    for target in targets:
        if target.resolve() in sources:
            raise DemoError(f"refusing to overwrite the input {target}; choose another --output")
    return targets


def video_output(source: Path, output: str) -> Path:
    target = Path(output)
    if is_folder(output):
        target = target / f"{source.stem}{OUTPUT_SUFFIX}.mp4"
    if same_file(target, source):
        raise DemoError(f"refusing to overwrite the input video {source}; choose another --output")
    return target


def require_display() -> None:
    """Fail before any work when results cannot be shown in a window."""
    displays = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not displays:
        raise DemoError("no display to show results on (DISPLAY is not set); pass --output to "
                        "write files instead")


def show(frame: np.ndarray, wait_ms: int) -> bool:
    """Show `frame`; False once the user pressed Esc."""
    try:
        cv2.imshow(WINDOW, frame)
    except cv2.error as e:
        raise DemoError(f"OpenCV cannot open a window ({str(e).strip()}); pass --output to "
                        "write files instead, or install opencv-python instead of "
                        "opencv-python-headless") from e
    return cv2.waitKey(wait_ms) != ESC


def run_images(predictor: SemanticPredictor, inputs: list[Path], targets: list[Path] | None,
               render: Render) -> int:
    """Segment every readable image; the number of images done."""
    done = 0
    for index, path in enumerate(tqdm(inputs, desc="segmenting", unit="img")):
        try:
            image = np.ascontiguousarray(read_image(str(path), format="BGR"))
        except UNREADABLE as e:
            logger.warning("skipped %s: not a readable image (%s)", path, e)
            continue
        result = render(image, predictor(image))
        if targets is None:
            if not show(result, 0):
                break
        else:
            atomic_write_image(targets[index], result)
        done += 1
    return done


def read_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def batched(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def stream(predictor: SemanticPredictor, frames: Iterable[np.ndarray], target: Path | None,
           fps: float, render: Render, batch_size: int, total: int | None = None) -> int:
    """Segment frames in batches into the video `target` (or a window); the number of frames done.

    The video is opened at the first frame, so its size is the real frame size.
    """
    done = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=total, desc="segmenting", unit="frame"))
        sink = None
        for batch in batched(frames, batch_size):
            for frame, labels in zip(batch, predictor.predict_batch(batch)):
                result = render(frame, labels)
                if target is None:
                    if not show(result, 1):
                        return done
                else:
                    if sink is None:
                        size = (result.shape[1], result.shape[0])
                        sink = stack.enter_context(VideoSink(target, fps, size))
                    sink.write(result)
                done += 1
                bar.update()
    return done


def run_video(predictor: SemanticPredictor, source: Path, target: Path | None, render: Render,
              batch_size: int) -> int:
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        logger.error("cannot open video %s: the file is missing or not a video OpenCV can "
                     "decode", source)
        return 0
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and fps > 0):
        logger.warning("%s does not say its frame rate; writing %g frames per second",
                       source, DEFAULT_FPS)
        fps = DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    try:
        done = stream(predictor, read_frames(capture), target, fps, render, batch_size, total)
    finally:
        capture.release()
    if not done:
        logger.error("no frame of %s could be decoded", source)
    return done


def run_webcam(predictor: SemanticPredictor, render: Render) -> int:
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise DemoError("cannot open camera 0: no camera is connected, or another program uses it; "
                        "try --video-input or --input instead")
    try:
        return stream(predictor, read_frames(capture), None, 0.0, render, batch_size=1)
    finally:
        capture.release()
        cv2.destroyAllWindows()


@user_errors
def main(argv: list[str] | None = None) -> int:
    """0 when every input was segmented, 1 when none could be read; usage errors exit with 2."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if (args.backend == "onnxruntime") != (args.onnx is not None):
        parser.error("--backend onnxruntime and --onnx FILE go together")
    cfg = setup_cfg(args)
    render = functools.partial(visualize, legend=legend_for(cfg, args.dataset), side_by_side=args.side_by_side)
    if args.webcam:
        if args.output:
            raise DemoError("--webcam shows results in a window; --output cannot be used "
                            "with it")
        require_display()
        return 0 if run_webcam(make_predictor(cfg, args), render) else 1
    if args.output is None:
        require_display()
    if args.video_input:
        source = Path(args.video_input)
        target = video_output(source, args.output) if args.output else None
        done = run_video(make_predictor(cfg, args), source, target, render, args.batch_size)
        if done and target is not None:
            logger.info("%d frames segmented into %s", done, target)
        return 0 if done else 1
    inputs = expand_inputs(args.input)
    if not inputs:
        logger.error("no input found in %s", " ".join(args.input))
        return 1
    targets = image_outputs(inputs, args.output) if args.output else None
    done = run_images(make_predictor(cfg, args), inputs, targets, render)
    logger.info("%d of %d inputs segmented%s", done, len(inputs),
                f" into {args.output}" if args.output else "")
    if not done:
        logger.error("nothing was processed: no input could be read as an image")
    return 0 if done else 1


if __name__ == "__main__":
    setup_logger(name="fvcore")
    setup_logger()
    setup_logger(name="rein_d2")
    sys.exit(main())
