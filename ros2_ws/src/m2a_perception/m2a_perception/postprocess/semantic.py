"""Per-class scores (Eq. 3) and the open-set semantic label map (Eq. 14).

All functions work on one image, at whatever resolution the masks have (normally 1/4 of the padded
input), on the device of their inputs.

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch


def compute_query_probabilities(
    class_logits: torch.Tensor, mask_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over classes and sigmoid over masks, in float32.

    Args:
        class_logits: (Q, K+1) class logits, "no object" last.
        mask_logits: (Q, h, w) mask logits.

    Returns:
        class_probs: (Q, K+1) float32, softmax over all K+1 entries (no renormalisation later).
        mask_probs: (Q, h, w) float32 in [0, 1].

    Raises:
        ValueError: if the shapes do not fit together.
    """
    if class_logits.dim() != 2 or class_logits.shape[0] < 1 or class_logits.shape[1] < 2:
        raise ValueError(
            f'class_logits must be (Q, K+1) with Q, K >= 1, got {tuple(class_logits.shape)}'
        )
    if mask_logits.dim() != 3 or mask_logits.shape[0] != class_logits.shape[0]:
        raise ValueError(
            f'mask_logits must be (Q, h, w) with Q = {class_logits.shape[0]}, '
            f'got {tuple(mask_logits.shape)}'
        )
    return class_logits.float().softmax(-1), mask_logits.float().sigmoid()


def compute_class_scores(class_probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 3 before the max: S_k(x) = sum_q softmax(z_q)_k * sigmoid(m_q(x)) for known k.

    The no-object column is dropped without renormalising, as the official code does, so scores
    can exceed 1 where queries overlap.

    Args:
        class_probs: (Q, K+1) softmax class probabilities.
        mask_probs: (Q, h, w) sigmoid mask probabilities.

    Returns:
        (K, h, w) float32 per-class scores, >= 0.
    """
    num_queries, height, width = mask_probs.shape
    known = class_probs[:, :-1]
    # A (K, Q) x (Q, h*w) matmul is the einsum 'qk,qhw->khw' without its layout overhead.
    scores = known.transpose(0, 1) @ mask_probs.reshape(num_queries, height * width)
    return scores.reshape(known.shape[1], height, width)


def compute_known_labels(class_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3: the best known class per pixel and its score.

    Args:
        class_scores: (K, H, W) per-class scores.

    Returns:
        labels: (H, W) uint8 train ids.
        best: (H, W) float32 score of that class (may exceed 1).
    """
    if class_scores.dim() != 3 or class_scores.shape[0] > 255:
        raise ValueError(
            f'class_scores must be (K, H, W) with K <= 255, got {tuple(class_scores.shape)}'
        )
    best, labels = class_scores.max(0)
    return labels.to(torch.uint8), best


def apply_open_set_threshold(
    labels: torch.Tensor,
    best: torch.Tensor,
    anomaly_map: torch.Tensor,
    anomaly_threshold: float | None,
    unknown_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14 on known labels: `unknown_id` wherever the anomaly score >= the threshold.

    Args:
        labels: (H, W) uint8 known train ids.
        best: (H, W) float score of those classes.
        anomaly_map: (H, W) anomaly score, higher = more anomalous.
        anomaly_threshold: the threshold; None leaves the map closed-set.
        unknown_id: label for unknown pixels (K by convention, below 255).

    Returns:
        labels: (H, W) uint8 with unknown pixels relabelled.
        confidence: (H, W) float32 in [0, 1]: the known score clamped to 1, or one minus that
            for unknown pixels.
    """
    if not labels.shape == best.shape == anomaly_map.shape:
        raise ValueError(
            f'labels {tuple(labels.shape)}, scores {tuple(best.shape)} and anomaly map '
            f'{tuple(anomaly_map.shape)} must have the same (H, W)'
        )
    if not 0 <= unknown_id <= 254:
        raise ValueError(f'unknown_id must fit in uint8 below 255, got {unknown_id}')
    confidence = best.clamp(0.0, 1.0)
    if anomaly_threshold is None:
        return labels, confidence
    unknown = anomaly_map >= anomaly_threshold
    labels = labels.masked_fill(unknown, unknown_id)
    return labels, torch.where(unknown, 1.0 - confidence, confidence)


def compute_open_set_semantic(
    class_scores: torch.Tensor,
    anomaly_map: torch.Tensor,
    anomaly_threshold: float | None,
    unknown_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14: argmax over known classes, 'unknown' where the anomaly score reaches the threshold.

    Args:
        class_scores: (K, H, W) per-class scores (Eq. 3).
        anomaly_map: (H, W) anomaly score, higher = more anomalous.
        anomaly_threshold: pixels with score >= this become `unknown_id`; None = closed set.
        unknown_id: label for unknown pixels (K by convention; must fit in uint8).

    Returns:
        labels: (H, W) uint8, train ids 0..K-1 or `unknown_id`.
        confidence: (H, W) float32 in [0, 1] (see `apply_open_set_threshold`).

    Raises:
        ValueError: on shape mismatch or ids that do not fit in uint8.
    """
    labels, best = compute_known_labels(class_scores)
    return apply_open_set_threshold(labels, best, anomaly_map, anomaly_threshold, unknown_id)
