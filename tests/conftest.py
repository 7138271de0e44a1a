"""Fixtures shared by several test files."""
import pytest

from rein_d2.data import register_dg_datasets


@pytest.fixture
def dg_root(tmp_path):
    """DGSS datasets registered under a fresh tmp root; the default registration comes back after."""
    register_dg_datasets(tmp_path)
    yield tmp_path
    register_dg_datasets()
