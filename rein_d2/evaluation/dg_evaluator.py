"""Multi-domain evaluator: one confusion matrix per dataset, scored and reported together."""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from rein_d2.data.dataset_classes import DatasetClasses

from ..errors import ConfigError
from .metrics import confusion_matrix
from .report import DomainReport

logger = logging.getLogger(__name__)


class MultiDomainSemSegEvaluator(DatasetEvaluator):
    """Scores semantic segmentation on several datasets in one pass.

    Each input is routed to its dataset's confusion matrix by its "dataset_name" (set by
    rein_d2.data.dataset_records); `evaluate()` sums the matrices of all processes, then reports
    mIoU / mAcc / aAcc and per-class IoU per dataset plus the mean over `mean_over`
    (default: all), as in the official DG evaluation. The datasets must share one class list
    (their MetadataCatalog stuff_classes); each label is read with its own dataset's ignore label.
    """

    def __init__(self, dataset_names: Sequence[str], *, mean_over: Sequence[str] | None = None,
                 output_dir: str | None = None, distributed: bool = True):
        if not dataset_names:
            raise ValueError("MultiDomainSemSegEvaluator needs at least one dataset name")
        self._names = list(dataset_names)
        self._mean_over = list(mean_over) if mean_over else list(self._names)
        unknown = sorted(set(self._mean_over) - set(self._names))
        if unknown:
            raise ConfigError(f"mean_over names {unknown} are not evaluated datasets {self._names}")
        self._classes = [DatasetClasses.of(name) for name in self._names]
        self._class_names = list(self._classes[0].names)
        for name, classes in zip(self._names[1:], self._classes[1:]):
            if list(classes.names) != self._class_names:
                raise ConfigError(f"datasets '{self._names[0]}' ({len(self._class_names)} classes) and '{name}' "
                                  f"({classes.num_classes} classes) have different class lists (MetadataCatalog "
                                  "stuff_classes): one model's predictions cannot be scored on both; evaluate "
                                  "datasets whose labels use the same classes in the same order")
        self._domains = [MetadataCatalog.get(name).get("domain", name) for name in self._names]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._output_dir = output_dir
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        n = len(self._class_names)
        self._confusions = np.zeros((len(self._names), n, n), dtype=np.int64)

    def _dataset_index(self, record: dict) -> int:
        name = record.get("dataset_name", self._names[0] if len(self._names) == 1 else None)
        if name not in self._index:
            raise ConfigError(f"input {record.get('file_name')} comes from dataset {name!r}, which "
                           f"this evaluator does not score (it scores {self._names})")
        return self._index[name]

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for record, output in zip(inputs, outputs):
            index = self._dataset_index(record)
            label_path = record.get("sem_seg_file_name")
            if label_path is None:
                raise ConfigError(f"{record.get('file_name')}: dataset '{self._names[index]}' has "
                                 "no labels (a test split): it can be predicted, not scored")
            gt = self._classes[index].read_labels(label_path)
            pred = output["sem_seg"].argmax(dim=0).cpu().numpy()
            if pred.shape != gt.shape:
                raise ValueError(f"prediction for {record.get('file_name')} is {pred.shape[1]}x"
                                 f"{pred.shape[0]} but its label {label_path} is {gt.shape[1]}x"
                                 f"{gt.shape[0]}: the model must resize its output to the "
                                 "input's height and width")
            self._confusions[index] += confusion_matrix(gt, pred, len(self._class_names),
                                                        self._classes[index].ignore_label)

    def confusions(self) -> np.ndarray:
        """[datasets, C, C] summed over all processes (on the main process; None elsewhere)."""
        if not self._distributed or comm.get_world_size() == 1:
            return self._confusions
        comm.synchronize()
        parts = comm.gather(self._confusions, dst=0)
        return np.sum(parts, axis=0) if comm.is_main_process() else None

    def evaluate(self) -> OrderedDict | None:
        confusions = self.confusions()
        if confusions is None:
            return None
        report = DomainReport.from_confusions(self._class_names, self._names, self._domains,
                                              confusions, self._mean_over)
        logger.info("Semantic segmentation per domain:\n%s\n%s", report.summary_table("github"),
                    report.class_table("github"))
        if self._output_dir:
            paths = report.write(self._output_dir)
            logger.info("Multi-domain report written to %s", ", ".join(map(str, paths.values())))
        return report.results()
