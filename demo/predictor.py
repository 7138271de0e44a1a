"""Inference and visualisation for the demo: BGR images in, label maps and overlays out.

`SemanticPredictor` works with any Detectron2 meta-architecture that returns
`{"sem_seg": [C, H, W]}` scores at the input's "height" and "width" (as Mask2Former does),
or with any callable that does the same (the onnxruntime backend, rein_d2.export.onnx_runtime).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from rein_d2.checkpoint.trained_model import build_trained_model
from rein_d2.data.dataset_classes import DatasetClasses
from rein_d2.errors import ConfigError


class SemanticPredictor:
    """Detectron2's DefaultPredictor for semantic segmentation: returns HxW train-id maps.

    Builds the model from `cfg` and loads `cfg.MODEL.WEIGHTS` if set, unless given a `model`;
    converts BGR images to `cfg.INPUT.FORMAT`, resizes them like DefaultPredictor when
    `cfg.INPUT.MIN_SIZE_TEST` > 0, and returns the argmax at the original image size.
    """

    def __init__(self, cfg: CfgNode, model: Callable[[list[dict]], list[dict]] | None = None):
        self.cfg = cfg.clone()
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ConfigError(f"INPUT.FORMAT is '{self.input_format}'; the demo feeds 'RGB' or "
                             "'BGR' images")
        self.model = build_trained_model(cfg) if model is None else model
        size = cfg.INPUT.MIN_SIZE_TEST
        self.resize = (T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
                       if size > 0 else None)
        self.device = torch.device(cfg.MODEL.DEVICE)

    def _model_input(self, image: np.ndarray) -> dict:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("expected a BGR uint8 image of shape (H, W, 3), got "
                             f"{image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        tensor = torch.as_tensor(chw, dtype=torch.float32)
        return {"image": tensor.to(self.device), "height": height, "width": width}

    @staticmethod
    def _label_map(output: dict, request: dict) -> np.ndarray:
        scores = output["sem_seg"]
        expected = (request["height"], request["width"])
        if tuple(scores.shape[-2:]) != expected:
            raise ValueError(f"the model returned sem_seg of size {tuple(scores.shape[-2:])} for "
                             f"an input of height x width {expected}; its meta-architecture must "
                             "resize its output to the input dict's 'height' and 'width'")
        if scores.shape[0] > 255:
            raise ValueError(f"{scores.shape[0]} classes do not fit the demo's uint8 label maps")
        return scores.argmax(dim=0).to(torch.uint8).cpu().numpy()

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps of several BGR images (e.g. video frames) in one model call."""
        inputs = [self._model_input(image) for image in images]
        with torch.inference_mode():
            outputs = self.model(inputs)
        return [self._label_map(output, request) for output, request in zip(outputs, inputs)]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The HxW uint8 label map of one BGR image."""
        return self.predict_batch([image])[0]


class Legend:
    """Names and colours of one dataset's classes: the palette of the overlays and their legend.

    The colours are the dataset's `stuff_colors`; a dataset without them (e.g. Detectron2's
    ADE20K) gets a fixed generated palette, the same on every run (DatasetClasses.palette).
    Ids without a class are grey, the ignore label black.
    """

    def __init__(self, classes: DatasetClasses):
        if classes.num_classes > 255:
            raise ConfigError(f"{classes.num_classes} classes do not fit the demo's 8-bit label maps")
        self.names = classes.names
        self.lut = np.full((256, 3), 128, np.uint8)  # BGR per label id
        self.lut[: classes.num_classes] = np.asarray(classes.palette(), np.uint8)[:, ::-1]
        if classes.ignore_label < 256:
            self.lut[classes.ignore_label] = 0
        self.ignore_label = classes.ignore_label

    @classmethod
    def of_dataset(cls, dataset_name: str) -> Legend:
        return cls(DatasetClasses.of(dataset_name))

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """The BGR colour image of a label map (one table lookup, no per-pixel loop)."""
        return self.lut[labels]

    def class_name(self, label: int) -> str:
        return self.names[label] if label < len(self.names) else f"class {label}"

    def entries(self, labels: np.ndarray) -> list[tuple[int, str]]:
        """(id, name) of the classes present in `labels`, in id order, the ignore label excluded."""
        return [(int(i), self.class_name(int(i))) for i in np.unique(labels) if i != self.ignore_label]


def draw_legend(image: np.ndarray, labels: np.ndarray, legend: Legend) -> np.ndarray:
    """`image` with a translucent legend (colour swatch and name per present class) at its top left.

    Rows scale with the image height; classes that do not fit in one column wrap into the next.
    """
    entries = legend.entries(labels)
    if not entries:
        return image
    height = image.shape[0]
    row = max(12, round(height / 28))
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = cv2.getFontScaleFromHeight(font, max(6, round(row * 0.55)))
    text_width = max(cv2.getTextSize(name, font, scale, 1)[0][0] for _, name in entries)
    column_width = row + text_width + row // 2
    per_column = max(1, (height - row // 2) // row)
    columns = -(-len(entries) // per_column)
    box_w = min(image.shape[1], columns * column_width + row // 4)
    box_h = min(len(entries), per_column) * row + row // 4
    out = image.copy()
    out[:box_h, :box_w] = out[:box_h, :box_w] // 3
    for k, (label, name) in enumerate(entries):
        x, y = (k // per_column) * column_width + row // 4, (k % per_column) * row + row // 4
        color = tuple(int(c) for c in legend.lut[label])
        cv2.rectangle(out, (x, y + 1), (x + row * 3 // 4, y + row * 3 // 4), color, -1)
        cv2.putText(out, name, (x + row, y + row * 3 // 4), font, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def visualize(image: np.ndarray, labels: np.ndarray, legend: Legend, side_by_side: bool = False,
              alpha: float = 0.6) -> np.ndarray:
    """The label map blended over the BGR image, with a legend; optionally input | overlay."""
    overlay = cv2.addWeighted(legend.colorize(labels), alpha, image, 1.0 - alpha, 0.0)
    overlay = draw_legend(overlay, labels, legend)
    return np.hstack([image, overlay]) if side_by_side else overlay
