"""The on-disk cache of the synthetic benchmark: each split is generated once, then reused.

A split folder holds `images/<id>.png` (BGR in its domain's style) and
`labels/<id>_labelTrainIds.png` (train ids), and a `manifest.json` written last: a
folder without a manifest matching the requested parameters is incomplete or stale and
is generated again. Every file is written atomically, so an interrupted run never
leaves a truncated image behind, and concurrent runs write identical bytes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.atomic import atomic_write_bytes, atomic_write_image
from .domains import STYLES, domain_code, stylise
from .scenes import render_scene

logger = logging.getLogger(__name__)

# Bump when the renderer or a style changes, so that old caches are regenerated.
RENDER_VERSION = 1
MANIFEST = "manifest.json"
PREFIX = "synthetic_dg"
# Scene sets: "val" scenes are shared by the source val split and every target domain,
# so their label maps are identical across domains.
SCENE_SETS = {"train": 0, "val": 1, "video": 2}


@dataclass(frozen=True)
class SplitSpec:
    """One split: `count` scenes of a scene set, rendered in one domain's style."""

    domain: str
    scenes: str
    count: int
    height: int
    width: int
    seed: int = 0

    def __post_init__(self):
        if self.domain not in STYLES:
            raise ValueError(f"unknown synthetic domain '{self.domain}'; choose from "
                             f"{', '.join(STYLES)}")
        if self.scenes not in ("train", "val"):
            raise ValueError(f"unknown scene set '{self.scenes}' for {self.name}; use 'train' "
                             "or 'val'")
        if self.count < 1 or min(self.height, self.width) < 16:
            raise ValueError(f"{self.name}: need at least 1 image of at least 16x16 pixels, got "
                             f"{self.count} images of {self.height}x{self.width}")

    @property
    def name(self) -> str:
        """The dataset name in Detectron2's catalogs."""
        return f"{PREFIX}_{self.domain}_{self.scenes}"

    @property
    def folder(self) -> str:
        return f"{self.domain}_{self.scenes}"


def scene_rng(seed: int, scenes: str, index: int) -> np.random.Generator:
    """The generator of one street layout: same (seed, set, index), same street."""
    return np.random.default_rng([seed, SCENE_SETS[scenes], index])


def style_rng(seed: int, scenes: str, index: int, domain: str) -> np.random.Generator:
    """The generator of one image's weather and corruption effects."""
    return np.random.default_rng([seed, SCENE_SETS[scenes], index, domain_code(domain)])


def render_sample(spec: SplitSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, uint8 train-id labels) of scene `index` of a split."""
    rendered = render_scene(scene_rng(spec.seed, spec.scenes, index), spec.height, spec.width)
    style = style_rng(spec.seed, spec.scenes, index, spec.domain)
    return stylise(rendered, spec.domain, style), rendered.labels


def _files(index: int) -> tuple[str, str]:
    return f"images/{index:05d}.png", f"labels/{index:05d}_labelTrainIds.png"


def _manifest(spec: SplitSpec) -> dict:
    return {"render_version": RENDER_VERSION, **asdict(spec),
            "files": [list(_files(i)) for i in range(spec.count)]}


def _records(spec: SplitSpec, folder: Path, files: list[list[str]]) -> list[dict]:
    return [{"file_name": str(folder / image), "sem_seg_file_name": str(folder / label),
             "height": spec.height, "width": spec.width, "image_id": f"{spec.folder}_{i:05d}",
             "dataset_name": spec.name} for i, (image, label) in enumerate(files)]


def is_complete(spec: SplitSpec, folder: Path) -> bool:
    """Whether `folder` holds this exact split: matching manifest and every file present."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest == _manifest(spec) and all(
        (folder / name).is_file() for pair in manifest["files"] for name in pair)


def ensure_split(spec: SplitSpec, root: str | Path) -> list[dict]:
    """Detectron2 records of the split under `root`, generating it first if needed."""
    folder = Path(root) / spec.folder
    manifest = _manifest(spec)
    if not is_complete(spec, folder):
        logger.info("generating %s (%d images of %dx%d) in %s", spec.name, spec.count,
                    spec.height, spec.width, folder)
        (folder / MANIFEST).unlink(missing_ok=True)
        for index in tqdm(range(spec.count), desc=f"generating {spec.name}", unit="img"):
            image, labels = render_sample(spec, index)
            image_file, label_file = _files(index)
            atomic_write_image(folder / image_file, image)
            atomic_write_image(folder / label_file, labels)
        atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return _records(spec, folder, manifest["files"])
