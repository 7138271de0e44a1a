"""Test-time augmentation (Mask2Former's SemanticSegmentorWithTTA): sizes, flips, averaging,
and through train_net.py --eval-only, the results under <dataset>_TTA and inference_TTA."""
import json

import torch
from torch import nn

from rein_d2.modeling.meta_arch.tta import SemanticSegmentorWithTTA, augmented_size
from test_train_net import args_for, synthetic, train_net  # noqa: F401  (synthetic: a fixture)


class PositionScores(nn.Module):
    """Scores at the label's size: channel 0 the column index (so a mirror shows), channel 1 the
    input's mean (so the content shows); records the input sizes it was given."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, batched_inputs):
        out = []
        for record in batched_inputs:
            image = record["image"].float()
            self.sizes.append(tuple(image.shape[-2:]))
            h, w = record["height"], record["width"]
            columns = torch.arange(w, dtype=torch.float32).expand(h, w)
            out.append({"sem_seg": torch.stack([columns, torch.full((h, w), image.mean().item())])})
        return out


def test_sizes_follow_resize_shortest_edge_with_the_long_side_capped():
    assert augmented_size(40, 60, 20, 100) == (20, 30)
    assert augmented_size(40, 60, 80, 100) == (67, 100)  # 120 > 100: scaled by 100 / 60
    model = PositionScores()
    SemanticSegmentorWithTTA(model, (20, 80), 100, flip=True)([{"image": torch.zeros(3, 40, 60), "height": 4,
                                                              "width": 6}])
    assert model.sizes == [(20, 30), (20, 30), (67, 100), (67, 100)]


def test_flipped_predictions_are_mirrored_back_before_averaging():
    record = {"image": torch.zeros(3, 8, 10), "height": 4, "width": 5}
    plain = SemanticSegmentorWithTTA(PositionScores(), (8,), 100, flip=False)([record])[0]["sem_seg"]
    assert torch.equal(plain[0], torch.arange(5.0).expand(4, 5))
    flipped = SemanticSegmentorWithTTA(PositionScores(), (8,), 100, flip=True)([record])[0]["sem_seg"]
    # columns j and, mirrored back, 4 - j: their mean is 2 everywhere
    assert torch.equal(flipped[0], torch.full((4, 5), 2.0))


def test_scores_are_averaged_over_the_sizes():
    image = torch.zeros(3, 8, 8)
    image[:, :4] = 3.0  # mean 1.5 at every size
    scores = SemanticSegmentorWithTTA(PositionScores(), (4, 8, 16), 100, flip=False)(
        [{"image": image, "height": 2, "width": 2}])[0]["sem_seg"]
    assert torch.allclose(scores[1], torch.full((2, 2), 1.5))


def test_eval_only_reports_the_augmented_scores_beside_the_plain_ones(synthetic):  # noqa: F811
    """One augmentation at the test image's own size, no flip: the same scores as without TTA,
    through the whole train_net.py evaluation."""
    out = synthetic / "tta"
    results = train_net.main(args_for(out, "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64,)",
                                      "TEST.AUG.FLIP", "False", eval_only=True))
    for name in ("synthetic_dg_night_val", "synthetic_dg_fog_val"):
        assert results[f"{name}_TTA"]["sem_seg"]["mIoU"] == results[name]["sem_seg"]["mIoU"]
    saved = json.loads((out / "inference_TTA" / "dg_results.json").read_text())
    assert saved and (out / "inference" / "dg_results.json").is_file()
