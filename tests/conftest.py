"""Fixtures shared by several test files."""
import pytest

from detectron2.data import DatasetCatalog

from rein_d2.data import register_dg_datasets, register_synthetic_dg


@pytest.fixture
def dg_root(tmp_path):
    """DGSS datasets registered under a fresh tmp root; the default registration comes back after."""
    register_dg_datasets(tmp_path)
    yield tmp_path
    register_dg_datasets()


@pytest.fixture(scope="module")
def synthetic_source_root(tmp_path_factory):
    """A $DETECTRON2_DATASETS holding the default synthetic source val split, generated beforehand
    (for train_net.py runs in subprocesses); the default registration comes back after."""
    root = tmp_path_factory.mktemp("datasets")
    register_synthetic_dg(root / "synthetic_dg")
    DatasetCatalog.get("synthetic_dg_source_val")
    yield root
    register_synthetic_dg()
