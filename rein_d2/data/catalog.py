"""The DGSS benchmark: its classes (DGSS_CLASSES) and its table of datasets, one row per split.

Every DGSS dataset is converted to the 19 Cityscapes train ids, so one model head and one
evaluator serve every domain; this module, the registration, the label maps, the synthetic
generator and the prepare scripts are the only ones that know those classes (everything
else reads a dataset's classes from its MetadataCatalog entry, see dataset_classes.py).
One loader serves all rows.

Paths are relative to $DETECTRON2_DATASETS and follow each dataset's official layout
(as the official Rein / DDB instructions and the datasets' own releases arrange them).
`test_scale` is the official test-time resize of the 512-crop configs as (long, short):
the image is scaled, keeping its aspect ratio, to fit in that box (MMSeg
`Resize(scale, keep_ratio=True)`); None keeps the image as it is. (Datasets registered
elsewhere have no `test_scale`; the test mapper resizes them by INPUT.MIN_SIZE_TEST.)
"""
from __future__ import annotations

from dataclasses import dataclass

from .classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS, IGNORE_LABEL
from .dataset_classes import DatasetClasses

DGSS_CLASSES = DatasetClasses(CITYSCAPES_CLASSES, IGNORE_LABEL, CITYSCAPES_COLORS)

ACDC_CONDITIONS = ("night", "snow", "fog", "rain")

# The 16 corruptions of the Cityscapes-C benchmark (Kamann & Rother): the 15 of
# ImageNet-C without zoom blur, pixelate and elastic transform, plus speckle noise,
# Gaussian blur, spatter and saturate; names as in the `imagecorruptions` package.
CITYSCAPES_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "saturate", "jpeg_compression",
)
CITYSCAPES_C_SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class DGDataset:
    """Where one split lives and how its images pair with their labels.

    An image `<image_dir>/<sub>/<image_prefix><id><image_suffix>` pairs with the label
    `<label_dir>/<sub>/<label_prefix><id><label_suffix>`; `label_dir` None means the
    split has no public labels (inference only).
    """

    name: str
    domain: str  # short name in tables and charts
    image_dir: str
    image_suffix: str
    label_dir: str | None
    label_suffix: str
    test_scale: tuple[int, int] | None
    prepare: str  # the command that creates or checks the train-id labels
    source: str  # what to download and where to extract it
    image_prefix: str = ""
    label_prefix: str = ""

    def layout(self) -> str:
        """The expected file patterns, for error messages and the README."""
        lines = [f"{self.image_dir}/**/{self.image_prefix}<id>{self.image_suffix}"]
        if self.label_dir is not None:
            lines.append(f"{self.label_dir}/**/{self.label_prefix}<id>{self.label_suffix}")
        return "\n".join(lines)


_CITYSCAPES_SOURCE = ("Cityscapes leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, "
                      "extracted to cityscapes/")
_ACDC_SOURCE = "ACDC rgb_anon_trainvaltest.zip and gt_trainval.zip, extracted to acdc/"


def _rows() -> tuple[DGDataset, ...]:
    rows = [
        DGDataset("dg_gtav_train", "gtav", "gta/images", ".png", "gta/labels",
                  "_labelTrainIds.png", (1280, 720), "python datasets/prepare_gtav.py",
                  "GTAV ('Playing for Data') image and label packages, extracted to gta/"),
        DGDataset("dg_synthia_train", "synthia", "synthia/RGB", ".png", "synthia/GT/LABELS",
                  "_labelTrainIds.png", None, "python datasets/prepare_synthia.py",
                  "SYNTHIA-RAND-CITYSCAPES, extracted to synthia/"),
        DGDataset("dg_urbansyn_train", "urbansyn", "urbansyn/rgb", ".png", "urbansyn/ss",
                  "_labelTrainIds.png", None, "python datasets/prepare_urbansyn.py",
                  "UrbanSyn rgb/ and ss/ folders, extracted to urbansyn/",
                  image_prefix="rgb_", label_prefix="ss_"),
    ]
    rows += [
        DGDataset(f"dg_cityscapes_{split}", "citys", f"cityscapes/leftImg8bit/{split}",
                  "_leftImg8bit.png", f"cityscapes/gtFine/{split}", "_gtFine_labelTrainIds.png",
                  (1024, 512), "python datasets/prepare_cityscapes.py", _CITYSCAPES_SOURCE)
        for split in ("train", "val")
    ]
    rows += [
        DGDataset(f"dg_bdd_{split}", "bdd", f"bdd100k/images/10k/{split}", ".jpg",
                  f"bdd100k/labels/sem_seg/masks/{split}", ".png", (1280, 720),
                  "python datasets/prepare_bdd.py",
                  "BDD100K 10K images and semantic segmentation labels, extracted to bdd100k/")
        for split in ("train", "val")
    ]
    mapillary = "Mapillary Vistas (v1.2 labels), extracted to mapillary/"
    rows += [
        DGDataset("dg_mapillary_train", "map", "mapillary/training/images", ".jpg",
                  "mapillary/cityscapes_trainIdLabel/train/label", ".png", (1024, 512),
                  "python datasets/prepare_mapillary.py", mapillary),
        DGDataset("dg_mapillary_val", "map", "mapillary/half/val_img", ".jpg",
                  "mapillary/half/val_label", ".png", (1024, 512),
                  "python datasets/prepare_mapillary.py", mapillary),
    ]
    rows += [
        DGDataset(f"dg_acdc_{cond}_{split}", f"acdc-{cond}", f"acdc/rgb_anon/{cond}/{split}",
                  "_rgb_anon.png", None if split == "test" else f"acdc/gt/{cond}/{split}",
                  "_gt_labelTrainIds.png", (960, 540), "python datasets/prepare_acdc.py",
                  _ACDC_SOURCE)
        for cond in ACDC_CONDITIONS for split in ("train", "val", "test")
    ]
    rows += [
        DGDataset(f"dg_cityscapes_c_{corruption}_{severity}", f"citys-c/{corruption}/{severity}",
                  f"cityscapes-c/{corruption}/{severity}/leftImg8bit/val", "_leftImg8bit.png",
                  "cityscapes/gtFine/val", "_gtFine_labelTrainIds.png", (1024, 512),
                  "python datasets/prepare_cityscapes.py && "
                  "python datasets/prepare_cityscapes_c.py", _CITYSCAPES_SOURCE)
        for corruption in CITYSCAPES_C_CORRUPTIONS for severity in CITYSCAPES_C_SEVERITIES
    ]
    return tuple(rows)


DG_DATASETS: tuple[DGDataset, ...] = _rows()
