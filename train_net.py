"""Train or evaluate Rein (or Freeze / Full baselines) with Detectron2.

  python train_net.py --config-file configs/....yaml [--num-gpus N] [--resume] [KEY VALUE ...]
  python train_net.py --config-file configs/....yaml --eval-only MODEL.WEIGHTS model_final.pth

Errors the user can fix are shown as one message (exit code 2); REIN_D2_TRACEBACK=1 shows
the traceback.
"""
from __future__ import annotations

import argparse

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.config import load_config
from rein_d2.engine import NonFiniteLossError, ReinTrainer  # noqa: F401  (NonFiniteLossError: for callers)
from rein_d2.engine.rank_failure import every_rank_stops_on_error
from rein_d2.errors import ConfigError
from rein_d2.evaluation.multi_domain import evaluate_with_tta
from rein_d2.utils.cli import exit_like_failed_worker, hide_user_error_tracebacks, user_errors


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # rein-d2's own messages (the per-domain table among them) go to the console and log.txt too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rein_d2", abbrev_name="rein_d2")
    hide_user_error_tracebacks()
    return cfg


@user_errors
def main(args: argparse.Namespace):
    with every_rank_stops_on_error():
        cfg = setup(args)
        if args.eval_only:
            if not cfg.DATASETS.TEST:
                raise ConfigError("--eval-only needs at least one dataset in DATASETS.TEST, "
                                  "e.g. DATASETS.TEST \"('dg_cityscapes_val',)\"")
            model = ReinTrainer.build_model(cfg)
            CompactCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                               resume=args.resume)
            results = ReinTrainer.test(cfg, model)
            if cfg.TEST.AUG.ENABLED:
                results.update(evaluate_with_tta(cfg, model))
            return results
        trainer = ReinTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        if cfg.TEST.AUG.ENABLED:  # after training, as Mask2Former's train_net
            trainer.register_hooks([hooks.EvalHook(0, lambda: evaluate_with_tta(cfg, trainer.model))])
        return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    exit_like_failed_worker(lambda: launch(main, args.num_gpus, num_machines=args.num_machines,
                                           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,)))
