"""The start-of-run check that the model and its datasets agree on the classes.

A model predicts MODEL.SEM_SEG_HEAD.NUM_CLASSES classes and is scored on the test datasets
with the class list of its training datasets; a mismatch would otherwise show up as a label
error deep in training, a wrong legend, or scores of one class under another's name.
"""
from __future__ import annotations

from detectron2.config import CfgNode

from ..errors import ConfigError
from .dataset_classes import DatasetClasses


def _named(classes: DatasetClasses) -> str:
    shown = ", ".join(classes.names[:4])
    return f"{classes.num_classes} classes: {shown}{', ...' if classes.num_classes > 4 else ''}"


def model_classes(cfg: CfgNode, dataset_name: str, role: str = "dataset") -> DatasetClasses:
    """The classes of `dataset_name`, refused unless the model predicts as many."""
    classes = DatasetClasses.of(dataset_name)
    predicted = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if predicted != classes.num_classes:
        raise ConfigError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {predicted} but {role} '{dataset_name}' has "
                          f"{classes.num_classes} classes (its MetadataCatalog stuff_classes): set "
                          f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {classes.num_classes}, or use datasets with "
                          f"{predicted} classes")
    return classes


def check_run_classes(cfg: CfgNode) -> None:
    """Refuse a run whose training and test datasets (DATASETS.TRAIN, DATASETS.TEST) do not share
    one class list, or whose model predicts another number of classes."""
    roles = {name: "training dataset" for name in cfg.DATASETS.TRAIN}
    roles.update((name, "test dataset") for name in cfg.DATASETS.TEST if name not in roles)
    if not roles:
        return
    first, *others = roles
    reference = DatasetClasses.of(first)
    for name in others:
        classes = DatasetClasses.of(name)
        if classes.names != reference.names:
            raise ConfigError(
                f"{roles[first]} '{first}' ({_named(reference)}) and {roles[name]} '{name}' ({_named(classes)}) "
                "have different class lists: one model predicts one list of classes. Train and test on "
                "datasets labelled with the same classes in the same order (convert the labels of one to "
                "the other's train ids, e.g. with a prepare script), or remove one of them from "
                "DATASETS.TRAIN / DATASETS.TEST.")
    model_classes(cfg, first, roles[first])
