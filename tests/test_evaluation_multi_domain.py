"""The multi-domain evaluator: routing per dataset, means, report files, distributed sums."""
from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.utils import comm
from PIL import Image
from torch import nn

from rein_d2.errors import ConfigError
from rein_d2.evaluation import MultiDomainSemSegEvaluator, evaluate_on_domains
from test_data_layouts import make_prepared_tree, stripes, write_ids
from test_evaluation_metrics import one_hot

CITYS, BDD = "dg_cityscapes_val", "dg_bdd_val"


def two_domain_batch(folder: Path) -> tuple[list[dict], list[dict]]:
    """Citys: two images, left half road / right half car, all predicted road.
    BDD: one image, road / car / ignore, predicted perfectly."""
    inputs, outputs = [], []
    for i in range(2):
        label = write_ids(folder / f"c{i}.png", stripes((0, 13)))
        inputs.append({"file_name": f"c{i}.jpg", "sem_seg_file_name": str(label),
                       "dataset_name": CITYS})
        outputs.append({"sem_seg": one_hot(np.zeros((32, 64)))})
    label = write_ids(folder / "b.png", stripes((0, 13, 255)))
    inputs.append({"file_name": "b.jpg", "sem_seg_file_name": str(label), "dataset_name": BDD})
    perfect = stripes((0, 13, 5))  # any class where the label is ignored
    outputs.append({"sem_seg": one_hot(perfect)})
    return inputs, outputs


# By hand. Citys: road tp 2048 of 2048 labelled, 4096 predicted -> IoU 50; car IoU 0;
# mIoU 25, mAcc (100 + 0) / 2 = 50, aAcc 50. BDD: road and car perfect -> 100 everywhere.
EXPECTED = {CITYS: {"mIoU": 25.0, "mAcc": 50.0, "aAcc": 50.0, "IoU-road": 50.0, "IoU-car": 0.0},
            BDD: {"mIoU": 100.0, "mAcc": 100.0, "aAcc": 100.0, "IoU-road": 100.0, "IoU-car": 100.0}}


def check(results: dict, mean_miou: float) -> None:
    for name, expected in EXPECTED.items():
        for key, value in expected.items():
            assert math.isclose(results[name]["sem_seg"][key], value), (name, key)
        assert math.isnan(results[name]["sem_seg"]["IoU-bus"])  # absent class
    assert math.isclose(results["mean"]["sem_seg"]["mIoU"], mean_miou)


def test_two_domains_are_scored_apart_and_reported(tmp_path):
    inputs, outputs = two_domain_batch(tmp_path)
    out_dir = tmp_path / "inference"
    evaluator = MultiDomainSemSegEvaluator([CITYS, BDD], output_dir=str(out_dir))
    evaluator.reset()
    evaluator.process(inputs[:2], outputs[:2])
    evaluator.process(inputs[2:], outputs[2:])
    results = evaluator.evaluate()
    assert list(results) == [CITYS, BDD, "mean"]
    check(results, mean_miou=62.5)
    assert all(isinstance(v, float) for r in results.values() for v in r["sem_seg"].values())

    report = json.loads((out_dir / "dg_results.json").read_text())
    assert report["datasets"][CITYS]["mIoU"] == 25.0 and report["datasets"][BDD]["domain"] == "bdd"
    assert report["datasets"][CITYS]["IoU"]["bus"] is None and report["mean"]["mIoU"] == 62.5
    markdown = (out_dir / "dg_results.md").read_text()
    assert "| dg_cityscapes_val | citys" in markdown and "62.50" in markdown
    with Image.open(out_dir / "dg_results.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 100
    assert sorted(p.name for p in out_dir.iterdir()) == ["dg_results.json", "dg_results.md",
                                                        "dg_results.png"]  # no temporaries

    only_citys = MultiDomainSemSegEvaluator([CITYS, BDD], mean_over=[CITYS], distributed=False)
    only_citys.process(inputs, outputs)
    check(only_citys.evaluate(), mean_miou=25.0)
    with pytest.raises(ValueError, match="mean_over names"):
        MultiDomainSemSegEvaluator([CITYS], mean_over=[BDD])
    with pytest.raises(ConfigError, match="comes from dataset 'dg_bdd_val'"):
        MultiDomainSemSegEvaluator([CITYS]).process(inputs[2:], outputs[2:])


def test_distributed_sum_of_two_processes_matrices(tmp_path, monkeypatch):
    inputs, outputs = two_domain_batch(tmp_path)
    rank0, rank1 = (MultiDomainSemSegEvaluator([CITYS, BDD]) for _ in range(2))
    rank0.process(inputs[:1], outputs[:1])  # each process saw part of the data
    rank1.process(inputs[1:], outputs[1:])
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, rank1._confusions])
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    check(rank0.evaluate(), mean_miou=62.5)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert rank1.evaluate() is None  # only the main process reports


def _gloo_worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        inputs, outputs = two_domain_batch(Path(folder) / f"rank{rank}")
        shard = slice(0, 1) if rank == 0 else slice(1, 3)
        evaluator = MultiDomainSemSegEvaluator([CITYS, BDD])
        evaluator.process(inputs[shard], outputs[shard])
        results = evaluator.evaluate()
        (Path(folder) / f"result{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_distributed_gather_with_two_gloo_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imports, so the test stays fast
    mp.start_processes(_gloo_worker, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    check(json.loads((tmp_path / "result0.json").read_text()), mean_miou=62.5)
    assert json.loads((tmp_path / "result1.json").read_text()) is None


class ConstantRoad(nn.Module):
    """Predicts road everywhere at the requested output size; records what it was fed."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        self.seen += [(x["dataset_name"], tuple(x["image"].shape)) for x in batched_inputs]
        return [{"sem_seg": one_hot(np.zeros((x["height"], x["width"])))} for x in batched_inputs]


def test_evaluate_on_domains_runs_the_whole_chain(dg_root):
    make_prepared_tree(dg_root)  # labels: road / car / ignore stripes
    cfg = get_cfg()
    cfg.DATASETS.TEST = (CITYS, BDD)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(dg_root / "output")
    model = ConstantRoad()
    results = evaluate_on_domains(cfg, model, mean_over=[CITYS, BDD])
    # Citys 64 columns: 22 road, 21 car, 21 ignored -> road IoU 22/43; BDD 80: 27/27/26 -> 1/2
    citys_miou, bdd_miou = 100 * 22 / 43 / 2, 25.0
    assert math.isclose(results[CITYS]["sem_seg"]["mIoU"], citys_miou)
    assert math.isclose(results[BDD]["sem_seg"]["mIoU"], bdd_miou)
    assert math.isclose(results["mean"]["sem_seg"]["mIoU"], (citys_miou + bdd_miou) / 2)
    assert sorted(set(model.seen)) == [(BDD, (3, 720, 1280)), (CITYS, (3, 512, 1024))]
    assert (dg_root / "output" / "inference" / "dg_results.png").is_file()
