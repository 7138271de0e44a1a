"""Values, not shapes: inference, losses and matching against numbers worked out by hand.

The tiny cases share one image of 2 x 2 pixels, 2 classes (+ "no object", index 2) and the mask
logits ln 3, 0, -ln 3, whose sigmoids are 3/4, 1/2, 1/4. Pixels are listed row by row:
(r0c0, r0c1, r1c0, r1c1).

Point sampling. The criterion draws its points with Detectron2's PointRend sampler, imported by
name into `rein_d2.modeling.criterion` (`criterion.get_uncertain_point_coords_with_randomness`,
called with (logits, uncertainty function, num_points, oversample_ratio,
importance_sample_ratio)); that module attribute is the seam the tests patch. The patched sampler
returns the 4 pixel centres, x and y in {1/4, 3/4}, where bilinear `grid_sample` with
align_corners=False reads each pixel exactly ((2 * 1/4 - 1 + 1) * 2 - 1) / 2 = 0 and likewise 1),
so the losses are exact sums over the 4 pixels. The matcher draws its own uniform points;
where it runs for real, every query has the same mask logits, so for any points its mask costs
are the same for each query of a target column and the assignment follows the class costs alone.
One test keeps the real sampler with zero mask logits: sampled logits are then 0 wherever the
points fall (the zero padding blends 0 with 0), and BCE(0, t) = -t ln 1/2 - (1 - t) ln 1/2 = ln 2
for every sampled target t in [0, 1].
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.config import load_config
from rein_d2.modeling import criterion as criterion_module
from rein_d2.modeling.criterion import SetCriterion
from rein_d2.modeling.matcher import HungarianMatcher
from rein_d2.modeling.meta_arch.mask_former_model import MaskFormer

from test_train_net import args_for, synthetic, train_net  # noqa: F401  (synthetic: the dataset fixture)

REPO = Path(__file__).resolve().parent.parent

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
# Mask logits: M -> sigmoid (3/4, 1/2, 1/2, 1/4); M2 -> sigmoid (1/4, 1/4, 3/4, 1/4).
M = [[LN3, 0.0], [0.0, -LN3]]
M2 = [[-LN3, -LN3], [LN3, -LN3]]
# Class logits: ln of (4, 1, 1) -> p = (4/6, 1/6, 1/6); (1, 2, 1) -> (1/4, 1/2, 1/4); (1, 1, 1) -> (1/3, 1/3, 1/3).
Q0, Q1, Q2 = [LN4, 0.0, 0.0], [0.0, LN2, 0.0], [0.0, 0.0, 0.0]
# Targets of the label map [[0, 0], [1, 255]]: class 0 -> (1, 1, 0, 0); class 1 -> (0, 0, 1, 0).
LABEL_MAP = [[0, 0], [1, 255]]
T0, T1 = [[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]
PIXEL_CENTRES = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])  # (x, y) in [0, 1]
CONFIG = str(REPO / "configs/dinov2/rein_dinov2_large_gta_512.yaml")

# Per matched pair, by hand (BCE: -ln sigmoid(x) where t = 1, -ln(1 - sigmoid(x)) where t = 0, mean of
# the 4 pixels; dice: 1 - (2 sum(s t) + 1) / (sum(s) + sum(t) + 1), s = sigmoid(x)):
# M vs T0: BCE (ln 4/3 + ln 2 + ln 2 + ln 4/3) / 4 = ln(8/3) / 2;  dice 1 - (2 * 5/4 + 1) / (2 + 2 + 1) = 3/10
# M vs T1: BCE (ln 4 + ln 2 + ln 2 + ln 4/3) / 4 = ln(64/3) / 4;   dice 1 - (2 * 1/2 + 1) / (2 + 1 + 1) = 1/2
# M2 vs T0: BCE (ln 4 + ln 4 + ln 4 + ln 4/3) / 4 = ln(256/3) / 4; dice 1 - (2 * 1/2 + 1) / (3/2 + 2 + 1) = 5/9
# M2 vs T1: BCE (4 ln 4/3) / 4 = ln(4/3);                          dice 1 - (2 * 3/4 + 1) / (3/2 + 1 + 1) = 2/7
BCE_M_T0, DICE_M_T0 = math.log(8 / 3) / 2, 3 / 10
BCE_M_T1, DICE_M_T1 = math.log(64 / 3) / 4, 1 / 2
BCE_M2_T0, DICE_M2_T0 = math.log(256 / 3) / 4, 5 / 9
BCE_M2_T1, DICE_M2_T1 = math.log(4 / 3), 2 / 7


def rein_cfg(*opts):
    """The official Rein recipe (CE 2, no-object 0.1, BCE 5, dice 5) with 4 training points."""
    return load_config(CONFIG, ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "4", *opts])


@pytest.fixture
def pixel_centre_points(monkeypatch):
    """Patch the criterion's point sampler to the 4 pixel centres; returns the calls it received."""
    calls = []

    def sample(logits, uncertainty, num_points, oversample_ratio, importance_sample_ratio):
        calls.append((tuple(logits.shape), num_points, oversample_ratio, importance_sample_ratio))
        return PIXEL_CENTRES.expand(logits.shape[0], -1, -1).clone()

    monkeypatch.setattr(criterion_module, "get_uncertain_point_coords_with_randomness", sample)
    return calls


class FixedMatcher(nn.Module):
    """Returns one given assignment (the real matcher is tested on its own below)."""

    def __init__(self, queries, targets):
        super().__init__()
        self.indices = [(torch.tensor(queries), torch.tensor(targets))]

    def forward(self, outputs, targets):
        return self.indices


class ImageAsFeatures(nn.Module):
    def forward(self, x):
        return {"image": x}


class FixedHead(nn.Module):
    """A mask-classification head that predicts the same logits and masks for every image."""

    num_classes, ignore_value = 2, 255

    def __init__(self, class_logits, mask_logits):
        super().__init__()
        self.class_logits, self.mask_logits = torch.tensor(class_logits), torch.tensor(mask_logits)

    def forward(self, features):
        batch = features["image"].shape[0]
        return {"pred_logits": self.class_logits.expand(batch, -1, -1),
                "pred_masks": self.mask_logits.expand(batch, -1, -1, -1)}


def mask_former(class_logits, mask_logits, criterion=None):
    return MaskFormer(backbone=ImageAsFeatures(), sem_seg_head=FixedHead(class_logits, mask_logits),
                      criterion=criterion, num_queries=len(class_logits), size_divisibility=0,
                      pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])


def test_semantic_inference_by_hand():
    """semseg[c] = sum_q softmax(class_q)[c] * sigmoid(mask_q), "no object" dropped.

    q0: p = (2/3, 1/6), sigmoid M = (3/4, 1/2, 1/2, 1/4); q1: p = (1/4, 1/2), mask logits 0 -> 1/2 everywhere.
    class 0: 2/3 * (3/4, 1/2, 1/2, 1/4) + 1/4 * 1/2 = (5/8, 11/24, 11/24, 7/24)
    class 1: 1/6 * (3/4, 1/2, 1/2, 1/4) + 1/2 * 1/2 = (3/8, 1/3, 1/3, 7/24)
    """
    model = mask_former([Q0, Q1], [M, [[0.0, 0.0], [0.0, 0.0]]]).eval()
    with torch.no_grad():
        sem_seg = model([{"image": torch.zeros(3, 2, 2)}])[0]["sem_seg"]
    expected = torch.tensor([[[5 / 8, 11 / 24], [11 / 24, 7 / 24]],
                             [[3 / 8, 1 / 3], [1 / 3, 7 / 24]]])
    torch.testing.assert_close(sem_seg, expected, rtol=0, atol=1e-6)


def test_criterion_losses_by_hand(pixel_centre_points):
    """Distinct masks, queries matched crosswise (q0 -> class 1, q1 -> class 0), q2 unmatched.

    CE, weighted mean with weights 1, 1 and 0.1 for "no object":
      q0 -> class 1: -ln(1/6) = ln 6;  q1 -> class 0: -ln(1/4) = ln 4;  q2 -> no object: -ln(1/3) = ln 3
      loss_ce = (ln 6 + ln 4 + 0.1 ln 3) / (1 + 1 + 0.1)
    BCE and dice: per matched mask, summed, divided by the 2 target masks:
      loss_mask = (BCE(M, T1) + BCE(M2, T0)) / 2,  loss_dice = (1/2 + 5/9) / 2 = 19/36
    """
    cfg = rein_cfg()
    criterion = SetCriterion(cfg, num_classes=2)
    criterion.matcher = FixedMatcher(queries=[0, 1], targets=[1, 0])
    outputs = {"pred_logits": torch.tensor([[Q0, Q1, Q2]]), "pred_masks": torch.tensor([[M, M2, M]])}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.tensor([T0, T1]).bool()}]
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert losses["loss_ce"].item() == pytest.approx((math.log(6) + LN4 + 0.1 * LN3) / 2.1, abs=1e-6)
    assert losses["loss_mask"].item() == pytest.approx((BCE_M_T1 + BCE_M2_T0) / 2, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(19 / 36, abs=1e-6)
    assert pixel_centre_points == [((2, 1, 2, 2), 4, 3.0, 0.75)]


def test_training_losses_are_weighted_2_5_5_by_hand(pixel_centre_points):
    """MaskFormer training on the label map [[0, 0], [1, 255]] with the real matcher.

    All queries predict mask M, so matching follows 2 * p(label) alone: q0 -> class 0 (2/3) and
    q1 -> class 1 (1/2) sum to 7/6, every other pairing to at most 1; q2 is "no object".
      loss_ce   = 2 * (-ln(2/3) - ln(1/2) + 0.1 * -ln(1/3)) / 2.1
      loss_mask = 5 * (ln(8/3) / 2 + ln(64/3) / 4) / 2
      loss_dice = 5 * (3/10 + 1/2) / 2 = 2
    """
    cfg = rein_cfg()
    model = mask_former([Q0, Q1, Q2], [M, M, M], SetCriterion(cfg, num_classes=2)).train()
    losses = model([{"image": torch.zeros(3, 2, 2), "sem_seg": torch.tensor(LABEL_MAP)}])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert losses["loss_ce"].item() == pytest.approx(2 * (math.log(3 / 2) + LN2 + 0.1 * LN3) / 2.1, abs=1e-6)
    assert losses["loss_mask"].item() == pytest.approx(5 * (BCE_M_T0 + BCE_M_T1) / 2, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(2.0, abs=1e-6)
    assert len(pixel_centre_points) == 1


def test_mask_bce_of_zero_logits_is_ln2_wherever_the_real_sampler_puts_points():
    cfg = rein_cfg("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "50")
    criterion = SetCriterion(cfg, num_classes=2)
    zeros = [[0.0, 0.0], [0.0, 0.0]]
    outputs = {"pred_logits": torch.tensor([[Q0, Q1, Q2]]), "pred_masks": torch.tensor([[zeros, zeros, zeros]])}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.tensor([T0, T1]).bool()}]
    torch.manual_seed(0)
    losses = criterion(outputs, targets)
    assert losses["loss_mask"].item() == pytest.approx(LN2, abs=1e-6)  # (ln 2 + ln 2) / 2
    assert losses["loss_ce"].item() == pytest.approx((math.log(3 / 2) + LN2 + 0.1 * LN3) / 2.1, abs=1e-6)


def test_matching_cost_by_hand():
    """cost[q, t] = 5 BCE + 5 dice - 2 p_q(label_t), at the 4 pixel centres (exact samples).

    q0 = (class logits Q0, mask M), q1 = (Q1, M2); targets (class 0, T0) and (class 1, T1).
    """
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=4)
    cost = matcher.cost_matrix(torch.tensor([Q0, Q1]), torch.tensor([M, M2]), torch.tensor([0, 1]),
                               torch.tensor([T0, T1]), PIXEL_CENTRES)
    expected = torch.tensor([
        [5 * BCE_M_T0 + 5 * DICE_M_T0 - 2 * 4 / 6, 5 * BCE_M_T1 + 5 * DICE_M_T1 - 2 * 1 / 6],
        [5 * BCE_M2_T0 + 5 * DICE_M2_T0 - 2 * 1 / 4, 5 * BCE_M2_T1 + 5 * DICE_M2_T1 - 2 * 2 / 4],
    ])
    torch.testing.assert_close(cost, expected, rtol=0, atol=1e-5)


def test_hungarian_matching_finds_the_non_greedy_optimum():
    """p(class 0), p(class 1) per query: q0 (0.5, 0.45), q1 (0.4, 0.05), q2 (0.05, 0.1).

    Greedy (class 0 takes its best query q0, class 1 the best left, q2) scores 0.5 + 0.1 = 0.6;
    the optimum is q1 -> class 0, q0 -> class 1: 0.4 + 0.45 = 0.85 (next best 0.6). Identical
    query masks add the same mask cost to every query of a target, whatever the points.
    """
    probs = torch.tensor([[0.5, 0.45, 0.05], [0.4, 0.05, 0.55], [0.05, 0.1, 0.85]])
    torch.manual_seed(0)
    masks = torch.randn(1, 2, 2).expand(3, -1, -1)
    outputs = {"pred_logits": probs.log()[None], "pred_masks": masks[None]}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 4, 4) > 0.5}]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=16)
    (queries, matched), = matcher(outputs, targets)
    assert queries.tolist() == [0, 1] and matched.tolist() == [1, 0]


def constant_class_checkpoint(cfg, path_dir, predicted_class):
    """Every trainable tensor moved off its initial value, the classifier made to predict one class."""
    model = train_net.ReinTrainer.build_model(cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
        classifier = model.sem_seg_head.predictor.class_embed
        classifier.weight.zero_()
        classifier.bias.fill_(-20.0)
        classifier.bias[predicted_class] = 20.0
    CompactCheckpointer(model, save_dir=str(path_dir)).save("model_final")
    return path_dir / "model_final.pth"


def pixel_fraction(dataset, cls, ignore_label):
    """Share of labelled pixels of class `cls` in the dataset's label files: the pixel accuracy
    (in %) of a model that predicts `cls` everywhere."""
    hits = labelled = 0
    for record in DatasetCatalog.get(dataset):
        label = np.asarray(Image.open(record["sem_seg_file_name"]))
        valid = label != ignore_label
        hits += int((label[valid] == cls).sum())
        labelled += int(valid.sum())
    return 100.0 * hits / labelled


def test_eval_only_scores_the_model_weights_checkpoint(synthetic, monkeypatch):
    """--eval-only MODEL.WEIGHTS: the evaluated model holds the file's tensors, and it predicts what
    the file's classifier says (one class everywhere: aAcc = that class's share of the pixels)."""
    vfm = synthetic / "vfm.safetensors"
    backbone = train_net.ReinTrainer.build_model(train_net.setup(args_for(synthetic / "build"))).backbone
    save_file(backbone.vit.state_dict(), str(vfm))
    # One frozen backbone file and one seed: the fresh model is the one the checkpoint was made from.
    common = ["MODEL.VIT.WEIGHTS", str(vfm), "SEED", "3"]
    predicted_class = 0
    checkpoint = constant_class_checkpoint(train_net.setup(args_for(synthetic / "ckpt", *common)), synthetic,
                                           predicted_class)
    evaluated = []
    original_test = train_net.ReinTrainer.test
    monkeypatch.setattr(train_net.ReinTrainer, "test",
                        classmethod(lambda cls, cfg, model: evaluated.append(model) or original_test(cfg, model)))
    loaded = train_net.main(args_for(synthetic / "loaded", *common, "MODEL.WEIGHTS", str(checkpoint), eval_only=True))
    fresh = train_net.main(args_for(synthetic / "fresh", *common, "MODEL.WEIGHTS", "", eval_only=True))

    saved = torch.load(checkpoint, weights_only=True)["model"]
    state = evaluated[0].state_dict()
    fresh_state = evaluated[1].state_dict()
    trainable = [k for k, p in evaluated[1].named_parameters() if p.requires_grad]
    assert trainable and set(trainable) <= set(saved)
    assert all(torch.equal(state[k].cpu(), v) for k, v in saved.items())
    assert not any(torch.equal(fresh_state[k].cpu(), saved[k]) for k in trainable)

    ignore = MetadataCatalog.get("synthetic_dg_night_val").ignore_label
    for dataset in ("synthetic_dg_night_val", "synthetic_dg_fog_val"):
        expected = pixel_fraction(dataset, predicted_class, ignore)
        assert 0 < expected < 100
        assert loaded[dataset]["sem_seg"]["aAcc"] == pytest.approx(expected, abs=1e-6)
        assert fresh[dataset]["sem_seg"]["aAcc"] != pytest.approx(expected, abs=1e-3)
    assert fresh["mean"]["sem_seg"]["mIoU"] != pytest.approx(loaded["mean"]["sem_seg"]["mIoU"], abs=1e-3)
