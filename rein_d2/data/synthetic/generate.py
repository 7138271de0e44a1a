"""The on-disk cache of the synthetic benchmark: each split is generated once, then reused.

A split folder holds `images/<id>.png` (BGR in its domain's style) and
`labels/<id>_labelTrainIds.png` (the benchmark's class ids, `classes.py`), and a
`manifest.json` written last: a folder without a manifest matching the requested
parameters is incomplete or stale and is generated again. Every file is written
atomically, so an interrupted run never leaves a truncated image behind, and concurrent
runs write identical bytes. Splits of one scene set (the source val split and every
target domain) are generated together: each street is rendered once, then styled per domain.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.atomic import atomic_write_bytes, atomic_write_image
from .classes import benchmark_labels
from .domains import STYLES, domain_code, stylise
from .raster import Rendered
from .scenes import render_scene

logger = logging.getLogger(__name__)

# Bump when the renderer or a style changes, so that old caches are regenerated.
RENDER_VERSION = 2
MANIFEST = "manifest.json"
HEIGHT, WIDTH = 128, 256  # the benchmark's default image size
PREFIX = "synthetic_dg"
# Scene sets: "val" scenes are shared by the source val split and every target domain,
# so their label maps are identical across domains; "pretrain" streets are the unlabelled
# world the quickstart's foundation model is pretrained on (pretraining.py), none of them
# a benchmark street.
SCENE_SETS = {"train": 0, "val": 1, "video": 2, "pretrain": 3}


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


def render_street(spec: SplitSpec, index: int) -> Rendered:
    """Scene `index` of the split's scene set, before any domain style."""
    return render_scene(scene_rng(spec.seed, spec.scenes, index), spec.height, spec.width)


def style_street(spec: SplitSpec, index: int, rendered: Rendered) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image in the split's domain, uint8 benchmark labels) of a rendered scene."""
    style = style_rng(spec.seed, spec.scenes, index, spec.domain)
    return stylise(rendered, spec.domain, style), benchmark_labels(rendered.labels)


def render_sample(spec: SplitSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, uint8 benchmark labels) of scene `index` of a split."""
    return style_street(spec, index, render_street(spec, index))


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


def _street(spec: SplitSpec) -> tuple:
    """What fixes a split's streets: splits that agree on it share their renders."""
    return spec.seed, spec.scenes, spec.height, spec.width


def _write_street(specs: list[SplitSpec], root: Path, index: int) -> None:
    """Render street `index` once and write it in the style of every split that has it."""
    rendered = render_street(specs[0], index)
    for spec in (s for s in specs if index < s.count):
        image, labels = style_street(spec, index, rendered)
        image_file, label_file = _files(index)
        atomic_write_image(root / spec.folder / image_file, image)
        atomic_write_image(root / spec.folder / label_file, labels)


def _generate(specs: list[SplitSpec], root: Path, workers: int) -> None:
    """Write every street of these splits (one street set), by `workers` processes; manifests last."""
    count = max(spec.count for spec in specs)
    names = ", ".join(spec.name for spec in specs)
    logger.info("generating %s (%d streets of %dx%d) in %s", names, count, specs[0].height, specs[0].width, root)
    for spec in specs:
        (root / spec.folder / MANIFEST).unlink(missing_ok=True)
    write = functools.partial(_write_street, specs, root)
    progress = dict(total=count, desc=f"generating {len(specs)} split(s)", unit="street")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in tqdm(pool.map(write, range(count), chunksize=8), **progress):
                pass
    else:
        for index in tqdm(range(count), **progress):
            write(index)
    for spec in specs:
        atomic_write_bytes(root / spec.folder / MANIFEST, json.dumps(_manifest(spec), indent=1).encode())


def ensure_splits(specs: Iterable[SplitSpec], root: str | Path, workers: int = 1) -> list[list[dict]]:
    """Detectron2 records of each split under `root`, generating the incomplete ones first
    (by `workers` processes; the files do not depend on their number)."""
    root, specs = Path(root), list(specs)
    missing = sorted((s for s in specs if not is_complete(s, root / s.folder)), key=_street)
    for _, group in itertools.groupby(missing, key=_street):
        _generate(list(group), root, workers)
    return [_records(spec, root / spec.folder, _manifest(spec)["files"]) for spec in specs]


def ensure_split(spec: SplitSpec, root: str | Path) -> list[dict]:
    """Detectron2 records of the split under `root`, generating it first if needed."""
    return ensure_splits([spec], root)[0]
