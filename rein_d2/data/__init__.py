"""DGSS datasets for Detectron2; importing this package registers every split.

Names start with `dg_` (Detectron2 already registers `cityscapes_fine_*`). Registration
only records paths under $DETECTRON2_DATASETS; the disk is read when a split is loaded.
"""
from .catalog import ACDC_CONDITIONS, CITYSCAPES_C_CORRUPTIONS, DG_DATASETS, DGDataset
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS, IGNORE_LABEL, NUM_CLASSES
from .label_io import LabelError, read_train_ids
from .loader import DatasetLayoutError, load_dg_dataset
from .register import EVALUATOR_TYPE, register_dg_datasets
from .synthetic import make_synthetic_video, register_synthetic_dg
from .test_mapper import DGTestDatasetMapper, ImageReadError, fit_in

register_dg_datasets()
register_synthetic_dg()  # default sizes; the quickstart and tests re-register with their own

__all__ = [
    "ACDC_CONDITIONS", "CITYSCAPES_CLASSES", "CITYSCAPES_COLORS", "CITYSCAPES_C_CORRUPTIONS",
    "DG_DATASETS", "DGDataset", "DGTestDatasetMapper", "DatasetLayoutError", "EVALUATOR_TYPE",
    "IGNORE_LABEL", "ImageReadError", "LabelError", "NUM_CLASSES", "fit_in", "load_dg_dataset",
    "make_synthetic_video", "read_train_ids", "register_dg_datasets", "register_synthetic_dg",
]
