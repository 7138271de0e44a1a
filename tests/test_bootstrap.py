"""tools/bootstrap.py's version floors: equal to setup.py's, and an older installed torch is refused."""
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import bootstrap  # noqa: E402


def test_floors_equal_setup_py_requirements():
    setup = (REPO / "setup.py").read_text()
    for package, (floor, _) in bootstrap.VERSION_FLOORS.items():
        assert re.search(rf'"{package}>={re.escape(floor)}"', setup), package


def test_installed_versions_meet_the_floors():
    for package, (floor, _) in bootstrap.VERSION_FLOORS.items():
        assert bootstrap.version_tuple(importlib.metadata.version(package)) >= bootstrap.version_tuple(floor)


def test_an_older_installed_torch_is_refused_with_the_fix(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.2.1+cu121" if name == "torch" else real(name))
    with pytest.raises(SystemExit, match=r"torch 2\.2\.1\+cu121 is installed, but rein-d2 needs torch>=2\.4 "
                                         r"\(torch\.get_autocast_dtype"):
        bootstrap.check_installed_floors()


def test_version_tuples_compare_releases():
    assert bootstrap.version_tuple("2.14.1+cu130") == (2, 14, 1)
    assert bootstrap.version_tuple("1.0.13") > bootstrap.version_tuple("1.0.9")
    assert bootstrap.version_tuple("2.4.0a0+git") == (2, 4, 0)
