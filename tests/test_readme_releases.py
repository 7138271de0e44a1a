"""The README's table of official releases: every row names configs that exist (tests/test_configs.py
builds every config) and, where a file was released, its download URL."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADER = "| release (official README) | config | official mIoU |"


def release_rows() -> list[list[str]]:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_release_row_names_existing_configs_and_a_release_url():
    rows = release_rows()
    assert len(rows) >= 9
    urls = 0
    for release, configs, score in rows:
        names = re.findall(r"`([^`]+\.yaml)`", configs)
        assert names, configs
        assert all((REPO / "configs" / name).is_file() for name in names), names
        assert re.search(r"\d\d\.\d", score), score
        urls += bool(re.search(r"\(https://github\.com/w1oves/Rein/releases/download/[^)]+\.pth\)", release))
    assert urls == 7
