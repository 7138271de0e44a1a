"""Train or evaluate Rein (or Freeze / Full baselines) with Detectron2.

  python train_net.py --config-file configs/....yaml [--num-gpus N] [--resume] [KEY VALUE ...]
  python train_net.py --config-file configs/....yaml --eval-only MODEL.WEIGHTS model_final.pth
"""
from __future__ import annotations

import argparse

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from rein_d2 import add_rein_config
from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.engine import NonFiniteLossError, ReinTrainer  # noqa: F401  (NonFiniteLossError: for callers)


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = get_cfg()
    add_rein_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
    except KeyError as err:
        raise SystemExit(f"{args.config_file} (or one of its _BASE_ files): {err.args[0]}") from err
    try:
        cfg.merge_from_list(args.opts)
    except KeyError as err:
        raise SystemExit(f"command-line override: {err.args[0]}") from err
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace):
    cfg = setup(args)
    if args.eval_only:
        model = ReinTrainer.build_model(cfg)
        CompactCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = ReinTrainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = ReinTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
