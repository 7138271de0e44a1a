"""DGSS datasets for Detectron2; importing this package registers every split.

Names start with `dg_` (Detectron2 already registers `cityscapes_fine_*`). Registration
only records paths under $DETECTRON2_DATASETS; the disk is read when a split is loaded.
A user's own datasets are registered from dataset files (DATASETS.FILES) or register_sem_seg_folder.
"""
from .catalog import ACDC_CONDITIONS, CITYSCAPES_C_CORRUPTIONS, DG_DATASETS, DGSS_CLASSES, DGDataset
from .dataset_classes import DatasetClasses
from .dataset_file import DatasetFileError, SemSegSplit, read_dataset_file
from .label_io import LabelError, read_train_ids
from .loader import DatasetLayoutError, load_dg_dataset
from .records import dataset_records
from .register import EVALUATOR_TYPE, register_dg_datasets
from .sem_seg_folder import register_dataset_file, register_sem_seg_folder
from .synthetic import make_synthetic_video, register_synthetic_dg
from .test_mapper import DGTestDatasetMapper, ImageReadError, fit_in

register_dg_datasets()
register_synthetic_dg()  # default sizes; the quickstart and tests re-register with their own

__all__ = [
    "ACDC_CONDITIONS", "CITYSCAPES_C_CORRUPTIONS", "DGSS_CLASSES", "DG_DATASETS", "DGDataset",
    "DGTestDatasetMapper", "DatasetClasses", "DatasetFileError", "DatasetLayoutError", "EVALUATOR_TYPE",
    "ImageReadError", "LabelError", "SemSegSplit", "dataset_records", "fit_in", "load_dg_dataset",
    "make_synthetic_video", "read_dataset_file", "read_train_ids", "register_dataset_file",
    "register_dg_datasets", "register_sem_seg_folder", "register_synthetic_dg",
]
