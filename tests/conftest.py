"""Fixtures shared by several test files; the cores shared among pytest-xdist's workers."""
import os

import pytest
import torch
from detectron2.data import DatasetCatalog

from rein_d2.data import register_dg_datasets, register_synthetic_dg


def _share_cores_among_workers() -> None:
    """Under `pytest -n N`, each worker (and the commands its tests start) computes on its share of
    the cores: N processes each spinning up an OpenMP pool of every core would contend for them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_cores_among_workers()


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
