"""Hungarian matcher against brute-force assignment; set criterion on tiny hand-made cases."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from rein_d2.modeling.criterion import SetCriterion
from rein_d2.modeling.matcher import HungarianMatcher

NUM_CLASSES = 4
NUM_POINTS = 50


def naive_cost(matcher, logits, masks, labels, target_masks, coords):
    """Pair by pair: -p(label), mean BCE and +1-smoothed dice over bilinearly sampled points."""
    def sample(m):  # [h, w] at normalised coords, bilinear, align_corners=False
        grid = (2 * coords - 1).view(1, -1, 1, 2)
        return F.grid_sample(m[None, None].float(), grid, align_corners=False).view(-1)

    probs = logits.softmax(-1)
    cost = torch.empty(len(masks), len(labels))
    for q, t in itertools.product(range(len(masks)), range(len(labels))):
        x, y = sample(masks[q]), sample(target_masks[t])
        bce = F.binary_cross_entropy_with_logits(x, y)
        s = x.sigmoid()
        dice = 1 - (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)
        cost[q, t] = (matcher.cost_mask * bce + matcher.cost_dice * dice
                      - matcher.cost_class * probs[q, labels[t]])
    return cost


def brute_force_min(cost):
    num_queries, num_targets = cost.shape
    return min(sum(cost[p[t], t] for t in range(num_targets))
               for p in itertools.permutations(range(num_queries), num_targets))


def random_case(num_queries, num_targets, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, NUM_CLASSES + 1, generator=g) * 2
    masks = torch.randn(num_queries, 6, 7, generator=g) * 3
    labels = torch.randint(0, NUM_CLASSES, (num_targets,), generator=g)
    target_masks = torch.rand(num_targets, 12, 14, generator=g) > 0.5
    return logits, masks, labels, target_masks


def test_cost_matrix_equals_pairwise_formula():
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=NUM_POINTS)
    logits, masks, labels, target_masks = random_case(5, 3, seed=0)
    coords = torch.rand(NUM_POINTS, 2)
    cost = matcher.cost_matrix(logits, masks, labels, target_masks, coords)
    torch.testing.assert_close(cost, naive_cost(matcher, logits, masks, labels, target_masks, coords),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_queries,num_targets", [(4, 2), (3, 3), (5, 1), (5, 4)])
def test_matching_is_the_brute_force_optimum(num_queries, num_targets):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=NUM_POINTS)
    cases = [random_case(num_queries, num_targets, seed) for seed in range(3)]
    outputs = {"pred_logits": torch.stack([c[0] for c in cases]), "pred_masks": torch.stack([c[1] for c in cases])}
    targets = [{"labels": c[2], "masks": c[3]} for c in cases]
    torch.manual_seed(7)
    indices = matcher(outputs, targets)
    torch.manual_seed(7)  # the matcher draws one set of points per image, in order
    for (logits, masks, labels, target_masks), (rows, cols) in zip(cases, indices):
        cost = naive_cost(matcher, logits, masks, labels, target_masks, torch.rand(NUM_POINTS, 2))
        assert len(rows) == len(cols) == num_targets
        assert sorted(cols.tolist()) == list(range(num_targets))
        assert len(set(rows.tolist())) == num_targets
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_min(cost).item(), abs=1e-4)


def test_image_without_targets_matches_nothing():
    matcher = HungarianMatcher(num_points=NUM_POINTS)
    logits, masks, _, _ = random_case(3, 0, seed=0)
    rows, cols = matcher({"pred_logits": logits[None], "pred_masks": masks[None]},
                         [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 12, 14)}])[0]
    assert len(rows) == len(cols) == 0


def test_non_finite_predictions_are_reported():
    matcher = HungarianMatcher(num_points=NUM_POINTS)
    logits, masks, labels, target_masks = random_case(3, 2, seed=0)
    masks[0] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        matcher({"pred_logits": logits[None], "pred_masks": masks[None]},
                [{"labels": labels, "masks": target_masks}])


def make_criterion(deep_supervision=True):
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    return SetCriterion(NUM_CLASSES, matcher=HungarianMatcher(2.0, 5.0, 5.0, NUM_POINTS), weight_dict=weights,
                        eos_coef=0.1, num_points=NUM_POINTS, oversample_ratio=3.0, importance_sample_ratio=0.75,
                        deep_supervision=deep_supervision)


def decoder_like_outputs(batch=2, num_queries=5, num_aux=2, dtype=torch.float32):
    def one():
        return {"pred_logits": torch.randn(batch, num_queries, NUM_CLASSES + 1, dtype=dtype, requires_grad=True),
                "pred_masks": torch.randn(batch, num_queries, 6, 7, dtype=dtype, requires_grad=True)}
    return {**one(), "aux_outputs": [one() for _ in range(num_aux)]}


def test_loss_keys_weights_and_gradients():
    torch.manual_seed(0)
    criterion = make_criterion()
    outputs = decoder_like_outputs()
    _, _, labels, target_masks = random_case(5, 3, seed=1)
    targets = [{"labels": labels, "masks": target_masks}, {"labels": labels[:1], "masks": target_masks[:1]}]
    losses = criterion(outputs, targets)
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    assert outputs["aux_outputs"][1]["pred_masks"].grad.abs().sum() > 0
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1]))
    assert "empty_weight" in criterion.state_dict()
    assert set(make_criterion(deep_supervision=False)(outputs, targets)) == {"loss_ce", "loss_mask", "loss_dice"}


def test_class_loss_is_weighted_cross_entropy_with_no_object():
    """Unmatched queries are pushed to "no object" with weight 0.1."""
    criterion = make_criterion(deep_supervision=False)
    logits = torch.randn(1, 3, NUM_CLASSES + 1)
    indices = [(torch.tensor([2]), torch.tensor([0]))]
    loss = criterion.loss_labels({"pred_logits": logits}, [{"labels": torch.tensor([1])}], indices)["loss_ce"]
    expected = F.cross_entropy(logits[0], torch.tensor([4, 4, 1]), weight=criterion.empty_weight)
    torch.testing.assert_close(loss, expected)


def test_loss_without_any_target_is_finite():
    criterion = make_criterion()
    losses = criterion(decoder_like_outputs(), [{"labels": torch.zeros(0, dtype=torch.long),
                                                 "masks": torch.zeros(0, 12, 14, dtype=torch.bool)}] * 2)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0 and losses["loss_ce"] > 0


def test_costs_and_losses_are_float32_under_autocast():
    torch.manual_seed(0)
    criterion = make_criterion()
    outputs = decoder_like_outputs(dtype=torch.bfloat16)
    _, _, labels, target_masks = random_case(5, 3, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = criterion.matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], labels,
                                             target_masks, torch.rand(NUM_POINTS, 2))
        losses = criterion(outputs, [{"labels": labels, "masks": target_masks}] * 2)
    assert cost.dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_float16_masks_without_targets_give_zero_losses_not_nan():
    """Mask logits of 30 over 4 x 100 x 64 x 64 sum to 4.9e7, past float16's 65504: a float16 sum
    times 0 would be inf * 0 = NaN, as under CUDA fp16 autocast. The zero stays connected to the masks."""
    criterion = make_criterion()
    pred_masks = torch.full((4, 100, 64, 64), 30.0, dtype=torch.float16, requires_grad=True)
    outputs = {"pred_logits": torch.zeros(4, 100, NUM_CLASSES + 1, dtype=torch.float16), "pred_masks": pred_masks}
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}
    with torch.autocast("cpu", dtype=torch.float16):
        losses = criterion(outputs, [empty] * 4)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert pred_masks.grad is not None and torch.equal(pred_masks.grad, torch.zeros_like(pred_masks.grad))
