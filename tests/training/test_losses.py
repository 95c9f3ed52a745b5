"""Known-answer tests for the matcher, the set criterion and the mask contrastive loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from m2a_perception.types import NetworkOutput, TrainingOutput
from m2a_training.losses import (
    ContrastiveLossConfig,
    CriterionConfig,
    MaskTargets,
    MatcherConfig,
    SetCriterion,
    compute_mask_contrastive_loss,
    compute_matching_cost,
    compute_negative_likelihood,
    match_predictions,
    solve_assignment,
)
from m2a_training.losses.contrastive import resample_to_outlier_mask
from m2a_training.losses.criterion import compute_class_loss, dice_loss, sigmoid_ce_loss
from m2a_training.losses.point_sampling import sample_points, sample_uncertain_points


def _numpy_bilinear(image: np.ndarray, x: float, y: float) -> float:
    """grid_sample(align_corners=False, zero padding) at normalised (x, y), written out."""
    height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    value = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value += wy * wx * image[yy, xx]
    return value


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- point sampling


def test_sample_points_matches_hand_written_bilinear() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 7))
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.13, 0.91], [0.999, 0.02]])
    got = sample_points(torch.from_numpy(image)[None, None], torch.from_numpy(coords)[None])[
        0, 0
    ].numpy()
    expected = [_numpy_bilinear(image, x, y) for x, y in coords]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_importance_sampling_concentrates_on_uncertain_region() -> None:
    # Left half is maximally uncertain (logit 0), right half confident (logit 20).
    logits = torch.full((1, 1, 16, 16), 20.0)
    logits[..., :8] = 0.0
    generator = torch.Generator().manual_seed(0)
    coords = sample_uncertain_points(logits, 300, 3.0, 1.0, generator)
    assert coords.shape == (1, 300, 2)
    # Every chosen point reads a logit far below the confident value.
    assert (sample_points(logits, coords) < 10.0).all()
    # With importance 0.75, a quarter of the points are uniform and spread everywhere.
    coords = sample_uncertain_points(logits, 400, 3.0, 0.75, generator)
    assert (coords[0, 300:, 0] > 0.6).any()


# ---------------------------------------------------------------- matcher


def test_solve_assignment_hand_built_cost_beats_greedy() -> None:
    # Greedy (take the global minimum 0 first) gives 0 + 3 + 3 = 6; the optimum is 1 + 2 + 2 = 5.
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0], [9.0, 9.0, 9.0]])
    rows, cols = solve_assignment(cost)
    assert rows.tolist() == [0, 1, 2]
    assert cols.tolist() == [1, 0, 2]
    assert cost[rows, cols].sum().item() == 5.0


def test_solve_assignment_rejects_non_finite_cost() -> None:
    with pytest.raises(ValueError, match='NaN'):
        solve_assignment(torch.tensor([[float('nan')]]))


def test_matching_cost_equals_numpy_on_the_same_points() -> None:
    rng = np.random.default_rng(1)
    class_logits = rng.normal(size=(3, 4))  # Q = 3 queries, K = 3 classes + no object
    mask_logits = rng.normal(size=(3, 4, 6)) * 3
    target_masks = rng.random(size=(2, 8, 12)) > 0.5
    labels = np.array([2, 0])
    config = MatcherConfig(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=50)

    cost = compute_matching_cost(
        torch.from_numpy(class_logits),
        torch.from_numpy(mask_logits),
        MaskTargets(torch.from_numpy(labels), torch.from_numpy(target_masks)),
        config,
        torch.Generator().manual_seed(7),
    ).numpy()

    points = torch.rand(1, 50, 2, generator=torch.Generator().manual_seed(7))[0].numpy()
    probs = np.exp(class_logits) / np.exp(class_logits).sum(-1, keepdims=True)
    expected = np.zeros((3, 2))
    for q in range(3):
        x = np.array([_numpy_bilinear(mask_logits[q], px, py) for px, py in points])
        for n in range(2):
            t = np.array(
                [_numpy_bilinear(target_masks[n].astype(float), px, py) for px, py in points]
            )
            bce = np.mean(_softplus(-x) * t + _softplus(x) * (1 - t))
            p = _sigmoid(x)
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            expected[q, n] = -2.0 * probs[q, labels[n]] + 5.0 * bce + 5.0 * dice
    np.testing.assert_allclose(cost, expected, rtol=1e-5, atol=1e-5)


def test_match_predictions_pairs_masks_with_their_targets() -> None:
    # Target 0 is the left half (class 1), target 1 the right half (class 0).
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :, :8] = True
    masks[1, :, 8:] = True
    targets = [MaskTargets(torch.tensor([1, 0]), masks)]
    mask_logits = torch.full((1, 3, 4, 4), -10.0)
    mask_logits[0, 0, :, 2:] = 10.0  # query 0 predicts the right half
    mask_logits[0, 2, :, :2] = 10.0  # query 2 predicts the left half
    class_logits = torch.zeros(1, 3, 3)
    class_logits[0, 0, 0] = 5.0
    class_logits[0, 2, 1] = 5.0
    ((rows, cols),) = match_predictions(
        class_logits,
        mask_logits,
        targets,
        MatcherConfig(num_points=500),
        torch.Generator().manual_seed(0),
    )
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 2: 0}


def test_match_predictions_without_targets_is_empty() -> None:
    targets = [MaskTargets(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 8, 8))]
    ((rows, cols),) = match_predictions(
        torch.zeros(1, 3, 3), torch.zeros(1, 3, 2, 2), targets, MatcherConfig(num_points=10)
    )
    assert rows.numel() == 0
    assert cols.numel() == 0


# ---------------------------------------------------------------- criterion


def test_class_loss_is_weighted_mean_cross_entropy() -> None:
    logits = np.array([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], [[-1.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    targets = [
        MaskTargets(torch.tensor([1]), torch.zeros(1, 2, 2)),
        MaskTargets(torch.tensor([0]), torch.zeros(1, 2, 2)),
    ]
    # Image 0: query 1 matched to class 1; image 1: query 0 matched to class 0.
    indices = [(torch.tensor([1]), torch.tensor([0])), (torch.tensor([0]), torch.tensor([0]))]
    weights = torch.tensor([1.0, 1.0, 0.1])
    loss = compute_class_loss(torch.from_numpy(logits), targets, indices, weights).item()

    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    wanted = {(0, 0): 2, (0, 1): 1, (1, 0): 0, (1, 1): 2}  # no object = 2
    w = {0: 1.0, 1: 1.0, 2: 0.1}
    numerator = sum(-w[c] * log_probs[b, q, c] for (b, q), c in wanted.items())
    denominator = sum(w[c] for c in wanted.values())
    assert loss == pytest.approx(numerator / denominator, rel=1e-6)


def test_point_bce_and_dice_known_values() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [-math.log(3.0), 0.0]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # BCE: row 0 = (ln 2 + ln(4/3)) / 2, row 1 = (ln(4/3) + ln 2) / 2; summed, / 2 masks.
    expected_bce = (math.log(2) + math.log(4 / 3)) / 2
    assert sigmoid_ce_loss(logits, labels, 2.0).item() == pytest.approx(expected_bce, rel=1e-6)
    # Dice: row 0: p = (0.5, 0.75): 1 − (2·1.25 + 1)/(1.25 + 2 + 1) = 1 − 3.5/4.25;
    #       row 1: p = (0.25, 0.5): 1 − (2·0.5 + 1)/(0.75 + 1 + 1) = 1 − 2/2.75.
    expected_dice = ((1 - 3.5 / 4.25) + (1 - 2 / 2.75)) / 2
    assert dice_loss(logits, labels, 2.0).item() == pytest.approx(expected_dice, rel=1e-6)


def _random_outputs(
    batch: int, queries: int, classes: int, layers: int, size: tuple[int, int], seed: int
) -> TrainingOutput:
    generator = torch.Generator().manual_seed(seed)
    return TrainingOutput(
        torch.randn(batch, queries, classes + 1, generator=generator, requires_grad=True),
        torch.randn(batch, queries, *size, generator=generator, requires_grad=True),
        torch.randn(layers, batch, queries, classes + 1, generator=generator, requires_grad=True),
        torch.randn(layers, batch, queries, *size, generator=generator, requires_grad=True),
    )


def _half_targets(size: tuple[int, int]) -> list[MaskTargets]:
    masks = torch.zeros(2, *size, dtype=torch.bool)
    masks[0, : size[0] // 2] = True
    masks[1, size[0] // 2 :] = True
    return [MaskTargets(torch.tensor([0, 2]), masks), MaskTargets(torch.tensor([1]), masks[:1])]


def test_criterion_terms_total_and_backward() -> None:
    outputs = _random_outputs(2, 5, 3, 2, (8, 8), seed=0)
    config = CriterionConfig(
        num_classes=3, num_points=64, contrastive=ContrastiveLossConfig(margin=0.75)
    )
    criterion = SetCriterion(config)
    ood = torch.zeros(2, 30, 30, dtype=torch.bool)
    ood[0, 5:10, 5:10] = True
    result = criterion(outputs, _half_targets((32, 32)), ood, torch.Generator().manual_seed(0))
    names = {'loss_ce', 'loss_mask', 'loss_dice', 'loss_ood'}
    expected_keys = names | {f'{n}_{i}' for n in names for i in range(2)}
    assert set(result.terms) == expected_keys
    weights = {'loss_ce': 2.0, 'loss_mask': 5.0, 'loss_dice': 5.0, 'loss_ood': 1.0}
    weighted = sum(
        weights[k.rsplit('_', 1)[0] if k[-1].isdigit() else k] * v for k, v in result.terms.items()
    )
    assert result.total.item() == pytest.approx(weighted.item(), rel=1e-6)
    assert torch.isfinite(result.total)
    result.total.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outputs)
    assert criterion.empty_weight.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.1])


def test_criterion_prefers_correct_predictions() -> None:
    targets = _half_targets((32, 32))
    config = CriterionConfig(num_classes=3, num_points=256, deep_supervision=False)
    criterion = SetCriterion(config)
    class_logits = torch.full((2, 4, 4), -5.0)
    mask_logits = torch.full((2, 4, 8, 8), -8.0)
    class_logits[..., 3] = 5.0  # everything "no object"
    good_class, good_mask = class_logits.clone(), mask_logits.clone()
    for b, target in enumerate(targets):
        for n, label in enumerate(target.labels.tolist()):
            good_class[b, n] = -5.0
            good_class[b, n, label] = 5.0
            good_mask[b, n] = torch.where(
                torch.nn.functional.interpolate(target.masks[n][None, None].float(), (8, 8))[0, 0]
                > 0.5,
                8.0,
                -8.0,
            )
    good = criterion(NetworkOutput(good_class, good_mask), targets).total.item()
    bad = criterion(NetworkOutput(class_logits, mask_logits), targets).total.item()
    # Importance sampling concentrates on the (blurred) mask boundaries, so even a perfect
    # prediction keeps some mask loss; the wrong one is far worse.
    assert good < 0.2 * bad


def test_criterion_handles_images_without_targets_and_requires_ood_masks() -> None:
    outputs = _random_outputs(1, 3, 2, 1, (4, 4), seed=1)
    empty = [MaskTargets(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 16, 16))]
    result = SetCriterion(CriterionConfig(num_classes=2, num_points=16))(outputs, empty)
    assert result.terms['loss_mask'].item() == 0.0
    result.total.backward()
    with pytest.raises(ValueError, match='ood_masks'):
        SetCriterion(CriterionConfig(num_classes=2, contrastive=ContrastiveLossConfig()))(
            outputs, empty
        )


# ---------------------------------------------------------------- mask contrastive loss


def _contrastive_case() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """B = 1, Q = 2 queries, K = 2 classes, 2×2 masks; returns logits and numpy L_k(x)."""
    class_logits = np.array([[[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    # softmax: query 0 -> (0.5, 0.25, 0.25); query 1 -> (1/3, 1/3, 1/3).
    mask_logits = np.array(
        [[[[0.0, math.log(3.0)], [-math.log(3.0), 20.0]], [[0.0, 0.0], [math.log(3.0), -20.0]]]]
    )
    probs = np.exp(class_logits) / np.exp(class_logits).sum(-1, keepdims=True)
    sig = _sigmoid(mask_logits)
    per_class = np.zeros((1, 2, 2, 2))  # (B, K, h, w)
    for k in range(2):
        for q in range(2):
            per_class[0, k] += probs[0, q, k] * sig[0, q]
    return torch.from_numpy(class_logits), torch.from_numpy(mask_logits), per_class


def test_negative_likelihood_known_values() -> None:
    class_logits, mask_logits, per_class = _contrastive_case()
    got = compute_negative_likelihood(class_logits, mask_logits).numpy()
    np.testing.assert_allclose(got, -per_class.max(axis=1), rtol=1e-6)
    # Pixel (0, 0): class 0 = 0.5·0.5 + (1/3)·0.5 = 5/12 beats class 1 = 0.25·0.5 + (1/3)·0.5.
    assert got[0, 0, 0] == pytest.approx(-5 / 12, rel=1e-6)


@pytest.mark.parametrize('variant', ['reference', 'hinge_on_score', 'bce'])
def test_contrastive_variants_known_values(variant: str) -> None:
    class_logits, mask_logits, per_class = _contrastive_case()
    l_n = -per_class.max(axis=1)[0]  # (2, 2)
    ood = np.array([[False, True], [False, False]])
    margin = 0.75
    if variant == 'reference':
        inlier, outlier = l_n**2, np.maximum(0.0, margin - l_n) ** 2
    elif variant == 'hinge_on_score':
        score = 1.0 + l_n
        inlier, outlier = score**2, np.maximum(0.0, margin - score) ** 2
    else:
        inlier, outlier = _softplus(l_n), _softplus(-l_n)  # BCE with logits, targets 0 / 1
    expected = 0.5 * (inlier[~ood].mean() + outlier[ood].mean())
    config = ContrastiveLossConfig(variant=variant, margin=margin)  # type: ignore[arg-type]
    got = compute_mask_contrastive_loss(
        class_logits, mask_logits, torch.from_numpy(ood)[None], config
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_reference_variant_hinge_is_always_active_and_margin_matters() -> None:
    class_logits, mask_logits, per_class = _contrastive_case()
    ood = torch.ones(1, 2, 2, dtype=torch.bool)
    l_n = -per_class.max(axis=1)[0]
    for margin in (0.75, 1.0):
        got = compute_mask_contrastive_loss(
            class_logits, mask_logits, ood, ContrastiveLossConfig(margin=margin)
        ).item()
        # All pixels are outliers: only the (always active) hinge term remains.
        assert got == pytest.approx(0.5 * ((margin - l_n) ** 2).mean(), rel=1e-6)


def test_contrastive_without_outliers_skips_the_outlier_term() -> None:
    class_logits, mask_logits, per_class = _contrastive_case()
    ood = torch.zeros(1, 2, 2, dtype=torch.bool)
    got = compute_mask_contrastive_loss(class_logits, mask_logits, ood, ContrastiveLossConfig())
    assert got.item() == pytest.approx(0.5 * (per_class.max(axis=1) ** 2).mean(), rel=1e-6)


def test_resample_stretch_uses_align_corners_true_and_crop_keeps_alignment() -> None:
    score = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    stretched = resample_to_outlier_mask(score, (3, 3), 'stretch')[0]
    expected = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]])
    torch.testing.assert_close(stretched, expected)
    # 'crop': ×4 upsampling (align_corners False) then the top-left 5×6 window.
    cropped = resample_to_outlier_mask(score, (5, 6), 'crop')
    assert cropped.shape == (1, 5, 6)
    full = torch.nn.functional.interpolate(score[:, None], size=(8, 8), mode='bilinear')
    torch.testing.assert_close(cropped, full[:, 0, :5, :6])


def test_contrastive_config_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match='variant'):
        ContrastiveLossConfig(variant='margin')  # type: ignore[arg-type]


# ---------------------------------------------------------------- KAN regulariser


def test_criterion_adds_the_kan_regulariser_only_for_kan_layers() -> None:
    import math

    from m2a_perception.model.kan import KANLinear
    from m2a_perception.model.transformer_decoder import MLP

    outputs = _random_outputs(2, 5, 3, 2, (8, 8), seed=0)
    targets = _half_targets((32, 32))
    config = CriterionConfig(num_classes=3, num_points=64, kan_regularization_weight=0.5)
    criterion = SetCriterion(config)

    def run(model):
        return criterion(outputs, targets, None, torch.Generator().manual_seed(0), model=model)

    plain = run(None)
    mlp = run(MLP(4, 4, 4, 3))
    assert 'loss_kan_reg' not in mlp.terms and torch.equal(mlp.total, plain.total)
    kan = KANLinear(2, 1, grid_size=1, spline_order=1)
    with torch.no_grad():
        kan.spline_weight.copy_(torch.tensor([[[1.0, -1.0], [3.0, -3.0]]]))
    result = run(torch.nn.Sequential(kan))
    # l1 = (1, 3): 4 + entropy(1/4, 3/4), weighted by 0.5 and added once.
    expected = 4.0 - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert result.terms['loss_kan_reg'].item() == pytest.approx(expected, abs=1e-6)
    assert (result.total - plain.total).item() == pytest.approx(0.5 * expected, abs=1e-5)
    result.total.backward()
    assert kan.spline_weight.grad is not None and kan.spline_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='non-negative'):
        CriterionConfig(kan_regularization_weight=-1.0)
