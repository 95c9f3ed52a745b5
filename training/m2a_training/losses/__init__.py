"""Training losses: Hungarian matcher, set criterion and mask contrastive loss.

Allowed dependencies: torch, scipy.
"""

from m2a_training.losses.contrastive import (
    ContrastiveLossConfig,
    compute_mask_contrastive_loss,
    compute_negative_likelihood,
)
from m2a_training.losses.criterion import CriterionConfig, LossOutput, SetCriterion
from m2a_training.losses.matcher import (
    MatcherConfig,
    compute_matching_cost,
    match_predictions,
    solve_assignment,
)
from m2a_training.losses.targets import MaskTargets

__all__ = [
    'ContrastiveLossConfig',
    'CriterionConfig',
    'LossOutput',
    'MaskTargets',
    'MatcherConfig',
    'SetCriterion',
    'compute_mask_contrastive_loss',
    'compute_matching_cost',
    'compute_negative_likelihood',
    'match_predictions',
    'solve_assignment',
]
