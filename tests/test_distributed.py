"""Two CPU processes (gloo) through Detectron2's launch: training, resuming and evaluation.

The command-line features run `train_net.py --num-gpus 2 MODEL.DEVICE cpu` as a user
would, on the synthetic benchmark that `import rein_d2` registers under
$DETECTRON2_DATASETS (generated here once, at its default size, as a user's first run
does). A Python audit hook (tests/audit_writes/sitecustomize.py) records which process
writes which file, so "written once, by the main process" is observed, not assumed.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import SimpleTrainer, launch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from safetensors.torch import load_file, save_file

from rein_d2 import add_rein_config
from rein_d2.data import register_synthetic_dg
from rein_d2.engine import DistributedDeviceError, ReinTrainer
from rein_d2.engine.distributed import ddp_device_ids
from rein_d2.modeling.backbone import create_timm_vfm
from rein_d2.modeling.criterion import SetCriterion
from test_train_net import CONFIG, REPO, TINY

AUDIT_HOOK = Path(__file__).resolve().parent / "audit_writes"
# Training reads the source domain's val split: its 50 images are generated in a quarter of
# the time of the 200-image train split, and a few iterations use a handful of them anyway.
# Whole-image inference: sharding and gathering do not depend on how each image is predicted.
COMMON = ["DATASETS.TRAIN", "('synthetic_dg_source_val',)", "TEST.SLIDE.ENABLED", "False"]
TRAIN = ["DATASETS.TEST", "('synthetic_dg_night_val',)", "SOLVER.CHECKPOINT_PERIOD", "2"]
SPLITS = ("synthetic_dg_source_val", "synthetic_dg_night_val", "synthetic_dg_fog_val")
RUN_TIMEOUT = 600  # seconds; a rank waiting for a peer that never comes would otherwise hang


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """$DETECTRON2_DATASETS with the default synthetic benchmark's splits that the tests read."""
    root = tmp_path_factory.mktemp("datasets")
    register_synthetic_dg(root / "synthetic_dg")
    for name in SPLITS:
        DatasetCatalog.get(name)  # generated now, so that the processes under test only read it
    yield root
    register_synthetic_dg()


@pytest.fixture(scope="module")
def vfm(tmp_path_factory) -> Path:
    """The frozen ViT's weights: compact checkpoints leave it out, so every run must load the same one."""
    path = tmp_path_factory.mktemp("vfm") / "vit.safetensors"
    save_file(create_timm_vfm("vit_small_patch14_dinov2", 16, 64, embed_dim=32, depth=4, num_heads=2).state_dict(),
              str(path))
    return path


def train_net_cli(out: Path, datasets: Path, vfm: Path, *opts: str, processes: int = 2,
                  flags: tuple[str, ...] = ()) -> None:
    """`train_net.py --num-gpus <processes> <flags> <TINY> <opts>` (TINY has MODEL.DEVICE cpu), audited under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(AUDIT_HOOK), os.environ.get("PYTHONPATH", "")]),
               REIN_D2_AUDIT_DIR=str(out), REIN_D2_AUDIT_LOG=str(out.parent / f"{out.name}.writes"))
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG, "--num-gpus", str(processes),
           "--dist-url", "auto", *flags, *TINY, *COMMON, "MODEL.VIT.WEIGHTS", str(vfm), *opts, "OUTPUT_DIR", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]


def writers(out: Path) -> dict[str, list[int]]:
    """File name (relative to `out`) -> pid of every write of it, in order."""
    seen: dict[str, list[int]] = {}
    for line in (out.parent / f"{out.name}.writes").read_text().splitlines():
        pid, path = line.split("\t")
        seen.setdefault(str(Path(path).relative_to(out.resolve())), []).append(int(pid))
    return seen


def main_pid(seen: dict[str, list[int]]) -> int:
    """The rank-0 process: the one that writes log.txt (rank r writes log.txt.rank<r>)."""
    (pid,) = set(seen["log.txt"])
    assert set(seen["log.txt.rank1"]) != {pid}
    return pid


def metrics_iterations(out: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(datasets, vfm, tmp_path_factory):
    """Iterations 0-3 in two processes, a checkpoint every 2, then the end-of-training evaluation."""
    out = tmp_path_factory.mktemp("train") / "run"
    train_net_cli(out, datasets, vfm, *TRAIN, "SOLVER.MAX_ITER", "4")
    return out


def test_two_process_training_writes_every_file_once_from_the_main_process(trained):
    seen = writers(trained)
    pid = main_pid(seen)
    assert {p for name, pids in seen.items() if not name.startswith("log.txt") for p in pids} == {pid}
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "metrics.json", "config.yaml",
                 "inference/dg_results.json", "inference/dg_results.md", "inference/dg_results.png"):
        assert seen[name] == [pid], name
    assert seen["last_checkpoint"] == [pid] * 3  # re-tagged by each of the three saves
    assert (trained / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(trained / "model_final.pth", weights_only=True)["iteration"] == 3
    assert metrics_iterations(trained) == [3, 4]  # the last step, then the evaluation after training
    assert "Rank of current process: 1. World size: 2" in (trained / "log.txt.rank1").read_text()


def test_resume_in_two_processes_continues_at_the_next_iteration(trained, datasets, vfm, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    train_net_cli(out, datasets, vfm, *TRAIN, "SOLVER.MAX_ITER", "6", flags=("--resume",))
    for log in ("log.txt", "log.txt.rank1"):  # every rank loads the same file and continues from it
        text = (out / log).read_text().split("Rank of current process")[-1]
        assert f"Loading from {out / 'model_final.pth'}" in text
        assert "Starting training from iteration 4" in text
    assert metrics_iterations(out) == [3, 4, 5, 6]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 5
    seen = writers(out)
    assert seen["model_0000005.pth"] == seen["model_final.pth"] == [main_pid(seen)]


def test_evaluation_in_two_processes_scores_like_one(trained, datasets, vfm, tmp_path):
    reports = {}
    for processes in (1, 2):
        out = tmp_path / f"processes{processes}"
        train_net_cli(out, datasets, vfm, "MODEL.WEIGHTS", str(trained / "model_final.pth"), processes=processes,
                      flags=("--eval-only",))
        reports[processes] = json.loads((out / "inference" / "dg_results.json").read_text())
    assert set(reports[2]["datasets"]) == {"synthetic_dg_night_val", "synthetic_dg_fog_val"}
    assert reports[2] == reports[1]
    seen = writers(tmp_path / "processes2")
    for name in ("dg_results.json", "dg_results.md", "dg_results.png"):
        assert seen[f"inference/{name}"] == [main_pid(seen)]


# ---- one step in two processes against one process with the whole batch ----------------------

# Mask losses are divided by the mask count averaged over processes, and DDP averages the
# processes' gradients: together the sum over the whole batch divided by its mask count.
# The two halves hold 1 + 2 and 5 + 6 of the synthetic benchmark's 6 classes, so a per-process
# count (3 and 11 instead of 7) changes the gradients. The class loss is a weighted mean per process (as in the official
# Mask2Former); with NO_OBJECT_WEIGHT 1 its weights are equal, so the mean of the halves'
# means is the whole batch's mean.
EXACT = ["MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", "1.0", "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO", "0.0"]
CLASSES_PER_IMAGE = (1, 2, 5, 6)
REAL_RAND = torch.rand


def fixed_points(*size, device=None, dtype=None) -> torch.Tensor:
    """Stand-in for torch.rand during the step: one fixed point set [P, 2] for every mask.

    The matcher and the criterion draw their sample points with torch.rand, per image and
    per batch of masks: one process with 4 images and two with 2 would draw different
    points. With the same points for every mask (and no importance sampling, whose top-k
    could swap near-equal points), each mask's loss depends on its own prediction only.
    """
    shape = torch.Size(size[0] if len(size) == 1 and not isinstance(size[0], int) else size)
    points = REAL_RAND(shape[-2:], generator=torch.Generator().manual_seed(0))
    return points.expand(shape).to(device=device, dtype=dtype or torch.get_default_dtype()).contiguous()


def local_num_masks(targets: list[dict], device: torch.device) -> float:
    """The mistake the test must catch: this process's own mask count as the normaliser."""
    return max(float(sum(len(t["labels"]) for t in targets)), 1.0)


VARIANTS = {
    "mean_num_masks": contextlib.nullcontext,  # the code as it is
    "local_num_masks": lambda: mock.patch.object(SetCriterion, "_average_num_masks", staticmethod(local_num_masks)),
}


def whole_batch() -> list[dict]:
    """4 images with vertical stripes of 1, 2, 5 and 6 classes (mapped inputs: no augmentation)."""
    generator = torch.Generator().manual_seed(1)
    batch = []
    for count in CLASSES_PER_IMAGE:
        columns = torch.arange(64) * count // 64
        sem_seg = torch.arange(count)[columns].expand(64, 64).clone()
        image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator)
        batch.append({"image": image, "sem_seg": sem_seg})
    return batch


def one_step(datasets: str, out: str, variants: tuple[str, ...]) -> None:
    """One step of ReinTrainer's model, DDP wrapper and optimizer on this process's share of the batch.

    Runs in every process of `launch`; saves each variant's gradients and updated parameters.
    """
    register_synthetic_dg(Path(datasets) / "synthetic_dg")  # the trainer builds its (unused) loader
    rank, world = comm.get_rank(), comm.get_world_size()
    batch = whole_batch()
    share = batch[rank * len(batch) // world:(rank + 1) * len(batch) // world]
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*TINY, *COMMON, *EXACT, "OUTPUT_DIR", out])
    for variant in variants:
        torch.manual_seed(0)
        trainer = ReinTrainer(cfg)
        step = SimpleTrainer(trainer.model, [share], trainer.optimizer)
        with EventStorage(0), mock.patch.object(torch, "rand", fixed_points), VARIANTS[variant]():
            step.run_step()
        model = getattr(trainer.model, "module", trainer.model)
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        save_file({**{f"grad.{n}": p.grad for n, p in trained.items()},
                   **{f"param.{n}": p.detach() for n, p in trained.items()}},
                  str(Path(out) / f"{variant}_world{world}_rank{rank}.safetensors"))


def test_two_processes_step_like_one_process_with_the_whole_batch(datasets, tmp_path):
    """After one step, both processes hold one process's gradients for all 4 images, and equal parameters.

    No randomness is compared: the inputs are already mapped (no augmentation), every run
    builds its model from the same seed, and the sample points of the matcher and the loss
    are one fixed set (`fixed_points`). What stays is what the test is about: each process's
    loss on its half, normalised by the averaged mask count, and DDP's gradient averaging;
    the same step with a per-process count must differ (the last assertion).

    Gradients are compared at a tolerance of 1e-6 of the largest one: some are zero in exact
    arithmetic (a bias before GroupNorm, attention key biases) and hold float noise, which
    AdamW's first step, about lr * sign(gradient), turns into lr-sized parameter changes; so
    parameters are compared between the two processes, and gradients with the reference.
    """
    launch(one_step, 1, args=(str(datasets), str(tmp_path), ("mean_num_masks",)))
    launch(one_step, 2, dist_url="auto", args=(str(datasets), str(tmp_path), ("mean_num_masks", "local_num_masks")))
    reference = load_file(tmp_path / "mean_num_masks_world1_rank0.safetensors")
    ranks = [load_file(tmp_path / f"mean_num_masks_world2_rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == reference.keys()
    for key in reference:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # DDP: the same step in every process
    grads = [key for key in reference if key.startswith("grad.")]
    assert any(key.startswith("grad.backbone.reins.") for key in grads)
    atol = 1e-6 * max(reference[key].abs().max().item() for key in grads)
    for key in grads:
        torch.testing.assert_close(ranks[0][key], reference[key], rtol=1e-4, atol=atol, msg=key)
    wrong = load_file(tmp_path / "local_num_masks_world2_rank0.safetensors")
    assert max((wrong[key] - reference[key]).abs().max().item() for key in grads) > 1000 * atol


@pytest.mark.parametrize(("device", "backend", "expected"), [("cuda", "nccl", [3]), ("cpu", "gloo", None),
                                                             ("cpu", None, None), ("cuda", None, [3])])
def test_ddp_gets_device_ids_only_for_a_gpu_model(device, backend, expected):
    assert ddp_device_ids(device, backend, 3) == expected


def test_a_cpu_model_in_nccl_processes_is_refused_with_the_way_out():
    with pytest.raises(DistributedDeviceError, match="NCCL.*CUDA_VISIBLE_DEVICES= .*MODEL.DEVICE cpu"):
        ddp_device_ids("cpu", "nccl", 0)


def bad_label_job(tmp_path: Path, *launch: str) -> tuple[list[str], dict[str, str]]:
    """train_net.py on two GTAV images, one with a label value outside the classes: each step
    gives one image to each of the two ranks, so one rank fails while the other waits in DDP's
    all-reduce."""
    from test_data_layouts import stripes, write_ids, write_rgb

    root = tmp_path / "datasets"
    for i, values in ((1, (0, 13, 255)), (2, (0, 40, 255))):
        write_rgb(root / "gta" / "images" / f"{i:05d}.png", seed=i)
        write_ids(root / "gta" / "labels" / f"{i:05d}_labelTrainIds.png", stripes(values))
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG, *launch, *TINY,
           "DATASETS.TRAIN", "('dg_gtav_train',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "4",
           "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19",  # GTAV's classes (TINY's are the synthetic benchmark's)
           "OUTPUT_DIR", str(tmp_path / "run")]
    return cmd, env


BAD_LABEL_MESSAGE = "00002_labelTrainIds.png contains value(s) 40"


def test_a_bad_label_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    """The launcher ends the waiting rank at once; the user reads the message once, without a
    traceback, exit code 2."""
    cmd, env = bad_label_job(tmp_path, "--num-gpus", "2", "--dist-url", "auto")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 2, done.stderr[-4000:]
    assert done.stderr.count("error: label ") == 1 and BAD_LABEL_MESSAGE in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_bad_label_on_one_machine_stops_the_other_machine_with_its_message(tmp_path):
    """Two machines of one process each, simulated on this one: the launcher of the failing
    machine cannot end the other machine's rank, which would wait in its all-reduce (with NCCL,
    until the 30-minute timeout). Both machines stop within seconds, both print the message
    (the other one says which rank raised it), without a traceback, and exit with code 2."""
    url = f"tcp://127.0.0.1:{free_port()}"
    machines = []
    for rank in (0, 1):
        cmd, env = bad_label_job(tmp_path, "--num-gpus", "1", "--num-machines", "2",
                                 "--machine-rank", str(rank), "--dist-url", url)
        machines.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    outputs = [machine.communicate(timeout=RUN_TIMEOUT) for machine in machines]
    codes = [machine.returncode for machine in machines]
    stderrs = [err for _, err in outputs]
    assert codes == [2, 2], "\n---\n".join(err[-3000:] for err in stderrs)
    assert all(BAD_LABEL_MESSAGE in err and err.count("error: label ") == 1 for err in stderrs), stderrs
    told = [err for err in stderrs if "every rank of the job has stopped" in err]
    assert len(told) == 1 and "(raised on rank " in told[0], stderrs
    assert not any("Traceback" in out + err for out, err in outputs), stderrs
