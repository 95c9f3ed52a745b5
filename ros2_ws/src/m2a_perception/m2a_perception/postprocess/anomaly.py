"""Anomaly scores (Eq. 5 and alternatives), the refinement mask (Eq. 13) and CSL fusion.

Notation (one image): class_probs P (Q, K+1) = softmax of the class logits, "no object" last;
mask_probs sigma (Q, h, w) = sigmoid of the mask logits; class_scores S (K, h, w) with
S_k = sum_q P_qk sigma_q (Eq. 3). Every score is "higher = more anomalous".

Scorers (`shared/reference/metrics-and-sota.md` B9):

- 'mask2anomaly' (official, Eq. 5): 1 - max_k S_k, softmax over K+1, no-object dropped, no
  renormalisation (`anomaly_utils/anomaly_inference.py`).
- 'max_logit': -max_k S_k (same ranking as 'mask2anomaly', shifted by one).
- 'rba' (Rejected by All): -sum_k tanh(S_k).
- 'energy': -logsumexp_k S_k.
- 'neg_logit_sum': -sum_k S_k.
- 'entropy': entropy of S normalised to a distribution, S_k / sum_j S_j, divided by log K
  (in [0, 1]).
- 'eam': 1 - sum_q sigma_q max_k P_qk (per-query max before aggregation).

UNO (needs a K+2 head) and Maskomaly (checkpoint-specific query indices) do not fit this model
and are left out.

Refinement sets suppressed pixels to the scorer's floor value: the score of a pixel claimed with
certainty by one query for one known class (0 for 'mask2anomaly', as in the official code; -1 for
'max_logit'; -tanh(1) for 'rba'; ...), so it works for signed scorers too.

Allowed dependencies: torch, cityscapesscripts (through `m2a_perception.classes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from m2a_perception.classes import stuff_train_ids, thing_train_ids, train_id_of

ScoreFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def score_mask2anomaly(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """Official Eq. 5: 1 - max_k S_k. Returns (h, w)."""
    return 1.0 - class_scores.amax(0)


def score_max_logit(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """Max-logit on the mask-classification scores: -max_k S_k. Returns (h, w)."""
    return -class_scores.amax(0)


def score_rba(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """RbA: -sum_k tanh(S_k); near 0 only where no class claims the pixel. Returns (h, w)."""
    return -torch.tanh(class_scores).sum(0)


def score_energy(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """Energy: -logsumexp_k S_k. Returns (h, w)."""
    return -torch.logsumexp(class_scores, dim=0)


def score_neg_logit_sum(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """Negative sum of the scores without squashing: -sum_k S_k. Returns (h, w)."""
    return -class_scores.sum(0)


def score_entropy(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """Normalised entropy of S_k / sum_j S_j, in [0, 1]. Returns (h, w).

    S is a non-negative mixture, not a logit vector, so it is normalised by its sum rather than a
    softmax (a softmax of values in [0, 1] would be nearly uniform everywhere). A pixel no class
    claims at all (sum 0) gets entropy 0 of an all-zero vector; the max-based scorers flag those.
    """
    num_classes = class_scores.shape[0]
    if num_classes < 2:
        raise ValueError('the entropy scorer needs at least two known classes')
    total = class_scores.sum(0, keepdim=True).clamp_min(torch.finfo(class_scores.dtype).tiny)
    distribution = class_scores / total
    entropy = -torch.xlogy(distribution, distribution).sum(0)
    return entropy / math.log(num_classes)


def score_eam(
    class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """EAM: 1 - sum_q sigma_q max_k P_qk over known classes. Returns (h, w)."""
    num_queries, height, width = mask_probs.shape
    query_confidence = class_probs[:, :-1].amax(1)
    evidence = query_confidence[None] @ mask_probs.reshape(num_queries, height * width)
    return 1.0 - evidence.reshape(height, width)


def scorer_function(name: str) -> ScoreFunction:
    """The score function for a scorer name (see the module docstring).

    Raises:
        ValueError: for an unknown name.
    """
    functions: dict[str, ScoreFunction] = {
        'mask2anomaly': score_mask2anomaly,
        'max_logit': score_max_logit,
        'rba': score_rba,
        'energy': score_energy,
        'neg_logit_sum': score_neg_logit_sum,
        'entropy': score_entropy,
        'eam': score_eam,
    }
    if name not in functions:
        raise ValueError(f'unknown scorer {name!r}; choose from {sorted(functions)}')
    return functions[name]


def compute_anomaly_score(
    scorer: str, class_scores: torch.Tensor, class_probs: torch.Tensor, mask_probs: torch.Tensor
) -> torch.Tensor:
    """Per-pixel anomaly score.

    Args:
        scorer: a scorer name (module docstring).
        class_scores: (K, h, w) Eq. 3 per-class scores.
        class_probs: (Q, K+1) softmax class probabilities.
        mask_probs: (Q, h, w) sigmoid mask probabilities.

    Returns:
        (h, w) float32, higher = more anomalous.
    """
    return scorer_function(scorer)(class_scores, class_probs, mask_probs)


def scorer_floor(scorer: str, num_classes: int) -> float:
    """Score of a pixel that one query claims with certainty for one known class.

    Refinement writes this value into suppressed pixels. It is computed by running the scorer on
    a one-pixel, one-query input on the CPU, so it needs no device synchronisation.
    """
    class_probs = torch.zeros(1, num_classes + 1)
    class_probs[0, 0] = 1.0
    mask_probs = torch.ones(1, 1, 1)
    class_scores = torch.zeros(num_classes, 1, 1)
    class_scores[0] = 1.0
    return float(compute_anomaly_score(scorer, class_scores, class_probs, mask_probs)[0, 0])


def default_refinement_class_ids(mode: str) -> tuple[int, ...]:
    """Train ids whose confident queries drive the refinement in `mode` (Cityscapes).

    - 'code': stuff except road and sidewalk, ids 2..10 (the official hard-coded range);
    - 'paper': stuff except road, ids 1..10 (the paper's "{stuff} minus {road}");
    - 'paper_literal': things and road, ids 0 and 11..18 (Eq. 13's class filter C-bar);
    - 'off': none.
    """
    road = train_id_of('road')
    if mode == 'code':
        excluded = {road, train_id_of('sidewalk')}
        return tuple(i for i in stuff_train_ids() if i not in excluded)
    if mode == 'paper':
        return tuple(i for i in stuff_train_ids() if i != road)
    if mode == 'paper_literal':
        return tuple(sorted((road, *thing_train_ids())))
    if mode == 'off':
        return ()
    raise ValueError(
        f"unknown refinement mode {mode!r}; choose 'code', 'paper', 'paper_literal' or 'off'"
    )


def compute_refinement_mask(
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    mode: str,
    class_ids: tuple[int, ...],
    class_threshold: float = 0.95,
    mask_threshold: float = 0.5,
    min_queries: int = 1,
) -> torch.Tensor:
    """Pixels whose anomaly score the refinement suppresses (Eq. 13).

    A query takes part if its probability of one of `class_ids` is above `class_threshold` (at
    0.95 only one class can pass, so this equals "argmax class in the set with probability above
    the threshold", the official test). Then:

    - 'code' (official): R(x) = max over taking-part queries of p_q * sigmoid(m_q(x)); suppress
      where R(x) >= `mask_threshold`.
    - 'paper': suppress where any taking-part query has sigmoid(m_q(x)) > `mask_threshold`
      (the binarised mask M-bar of the paper).
    - 'paper_literal': R_M = C-bar . M-bar keeps only pixels covered by a taking-part query's
      binarised mask; suppress everywhere else. With the default thing/road ids this also
      suppresses anomalies on sidewalk or terrain; it exists to reproduce the paper's formula.
    - 'off': suppress nothing.

    Official quirk: the released script refines only when more than one query takes part. Set
    `min_queries=2` to reproduce it; with fewer taking-part queries nothing is suppressed.

    Args:
        class_probs: (Q, K+1) softmax class probabilities.
        mask_probs: (Q, h, w) sigmoid mask probabilities.
        mode: 'code', 'paper', 'paper_literal' or 'off'.
        class_ids: known train ids whose queries take part.
        class_threshold: class probability a query must exceed.
        mask_threshold: threshold on the (weighted) mask probability.
        min_queries: refine only if at least this many queries take part (>= 1).

    Returns:
        (h, w) bool, True where the score is to be suppressed.

    Raises:
        ValueError: for an unknown mode, ids out of range or `min_queries` < 1.
    """
    height, width = mask_probs.shape[1:]
    nothing = torch.zeros(height, width, dtype=torch.bool, device=mask_probs.device)
    if mode == 'off':
        return nothing
    if mode not in ('code', 'paper', 'paper_literal'):
        raise ValueError(f'unknown refinement mode {mode!r}')
    if min_queries < 1:
        raise ValueError(f'min_queries must be >= 1, got {min_queries}')
    num_known = class_probs.shape[1] - 1
    if any(not 0 <= i < num_known for i in class_ids):
        raise ValueError(f'refinement class ids {class_ids} out of range for {num_known} classes')
    if not class_ids:
        return nothing
    ids = torch.tensor(class_ids, dtype=torch.long, device=class_probs.device)
    class_prob = class_probs.index_select(1, ids).amax(1)
    # One host sync to count and select the (few) taking-part queries; the per-pixel work then
    # touches only their masks.
    taking_part = torch.nonzero(class_prob > class_threshold).squeeze(1)
    if taking_part.numel() < min_queries:
        return nothing
    masks = mask_probs[taking_part]
    if mode == 'code':
        weighted = class_prob[taking_part][:, None, None] * masks
        return weighted.amax(0) >= mask_threshold
    covered = (masks > mask_threshold).any(0)
    return covered if mode == 'paper' else ~covered


def apply_refinement(
    anomaly_map: torch.Tensor, suppress: torch.Tensor, floor: float
) -> torch.Tensor:
    """f^r: the anomaly map with suppressed pixels set to the scorer's floor value.

    Args:
        anomaly_map: (h, w) anomaly score.
        suppress: (h, w) bool from `compute_refinement_mask`.
        floor: `scorer_floor(scorer, K)` (0 for the official scorer).

    Returns:
        (h, w) refined anomaly score.
    """
    return anomaly_map.masked_fill(suppress, floor)


def compute_query_validity(class_probs: torch.Tensor, validity: str = 'object') -> torch.Tensor:
    """CSL validity score of each query: 'object' = 1 - P(no object), 'max_class' = max_k P_qk.

    Returns:
        (Q,) float32 in [0, 1].
    """
    if validity == 'object':
        return 1.0 - class_probs[:, -1]
    if validity == 'max_class':
        return class_probs[:, :-1].amax(1)
    raise ValueError(f"validity must be 'object' or 'max_class', got {validity!r}")


def compute_soft_regions(mask_probs: torch.Tensor, validity: torch.Tensor) -> torch.Tensor:
    """CSL soft assignment (its Eq. 2) with our queries: region(x) = argmax_q sigma_q(x) v_q.

    Every pixel gets a region, with no threshold.

    Args:
        mask_probs: (Q, h, w) sigmoid mask probabilities.
        validity: (Q,) query validity.

    Returns:
        (h, w) int64 query index per pixel.
    """
    return (mask_probs * validity[:, None, None]).argmax(0)


def apply_structure_constrained_fusion(
    anomaly_map: torch.Tensor, regions: torch.Tensor, num_regions: int, exponent: float = 1.0
) -> torch.Tensor:
    """CSL structure-constrained fusion: f(x) * mean_{y in region(x)} f(y) ** exponent.

    Exponent 1 is CSL's Eq. 3 with C = 1. Region means are clamped at 0 before the power so that
    slightly negative official scores (overlapping queries) cannot produce NaN.

    Args:
        anomaly_map: (h, w) non-negative anomaly score.
        regions: (h, w) int64 region index in [0, num_regions).
        num_regions: number of regions (queries).
        exponent: power of the region mean (>= 0).

    Returns:
        (h, w) fused anomaly score.
    """
    flat_regions = regions.reshape(-1)
    values = anomaly_map.reshape(-1)
    sums = torch.zeros(num_regions, dtype=values.dtype, device=values.device)
    sums.index_add_(0, flat_regions, values)
    counts = torch.bincount(flat_regions, minlength=num_regions).clamp_min(1)
    means = (sums / counts).clamp_min(0.0)
    if exponent != 1.0:
        means = means.pow(exponent)
    return anomaly_map * means[regions]
