"""Multi-domain mIoU evaluation of DGSS models (per-domain scores and their mean)."""
from .dg_evaluator import MultiDomainSemSegEvaluator
from .metrics import SegScores, confusion_matrix
from .multi_domain import build_dg_evaluator, build_dg_test_loader, evaluate_on_domains
from .report import DomainReport

__all__ = [
    "DomainReport", "MultiDomainSemSegEvaluator", "SegScores", "build_dg_evaluator",
    "build_dg_test_loader", "confusion_matrix", "evaluate_on_domains",
]
