"""Periodic validation during training, through the shared open-set pipeline.

The model is wrapped in `m2a_perception.pipeline.Segmenter` (the object the ROS node and the
evaluation tools use), so training-time numbers are the deployed model's numbers:
- semantic mIoU on a Cityscapes-format split (closed-set label map, `ConfusionMatrix`);
- per anomaly set, pixel AuPRC / FPR95 / AUROC with the SMIYC protocol (`PixelCurveAccumulator`),
  plus a sample of the anomaly scores of in-distribution and OOD pixels for histograms.
Under DDP every rank evaluates every world_size-th frame and the streaming accumulators are
merged, so all ranks end with the same metrics (and take the same best-checkpoint decision).

Allowed dependencies: numpy, torch, tqdm, m2a_perception (pipeline, metrics, config),
m2a_training.data, m2a_training.distributed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from m2a_perception.config import ModelConfig
from m2a_perception.metrics.pixel import SMIYC_PROTOCOL, PixelCurveAccumulator, PixelMetrics
from m2a_perception.metrics.semantic import ConfusionMatrix
from m2a_perception.model import Mask2Anomaly
from m2a_perception.pipeline import Segmenter
from m2a_training.config import TrainConfig
from m2a_training.data.benchmarks import AnomalyDataset, open_anomaly_benchmark
from m2a_training.data.cityscapes import CityscapesDataset
from m2a_training.distributed import DistributedContext, all_gather_objects

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationResult:
    """Metrics of one validation round.

    Attributes:
        metrics: 'miou', '<set>/auprc', '<set>/fpr95', '<set>/auroc', and the means over the
            sets 'anomaly_auprc', 'anomaly_fpr95' (fractions; NaN where undefined).
        selection_score: the value the best checkpoint maximises (NaN if undefined).
        histograms: '<set>/anomaly_score_in_distribution' and '<set>/anomaly_score_ood':
            samples of the anomaly scores of inlier and anomaly pixels.
    """

    metrics: dict[str, float]
    selection_score: float
    histograms: dict[str, np.ndarray] = field(default_factory=dict)


def selection_score(metrics: dict[str, float], selection_metric: str) -> float:
    """The best-checkpoint criterion from the metrics (higher is better)."""
    if selection_metric == 'miou':
        return metrics.get('miou', math.nan)
    if selection_metric == 'anomaly_auprc':
        return metrics.get('anomaly_auprc', math.nan)
    if selection_metric == 'anomaly_auprc_minus_fpr95':
        return metrics.get('anomaly_auprc', math.nan) - metrics.get('anomaly_fpr95', math.nan)
    raise ValueError(f'unknown selection metric {selection_metric!r}')


class Validator:
    """Opens the validation sets once (so a missing set fails at start-up) and runs rounds.

    Args:
        config: the training config (`data` paths, `validation` section).
        context: this process's place in the job.
    """

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        section = config.validation
        self.semantic: CityscapesDataset | None = None
        if section.semantic_max_images != 0:
            self.semantic = CityscapesDataset(
                config.data_path(config.data.cityscapes), config.data.val_split
            )
        self.anomaly_sets: list[tuple[AnomalyDataset, int]] = []
        for entry in section.anomaly_sets:
            dataset = open_anomaly_benchmark(entry.name, config.data_path(entry.root))
            count = len(dataset)
            if entry.max_images is not None:
                count = min(entry.max_images, count)
            self.anomaly_sets.append((dataset, count))

    def _frames(self, count: int) -> range:
        return range(self.context.rank, count, self.context.world_size)

    def _progress(self, total: int, description: str) -> tqdm:
        return tqdm(
            total=total,
            desc=description,
            unit='img',
            leave=False,
            dynamic_ncols=True,
            disable=not (self.context.is_main and self.config.logging.progress_bar),
        )

    def run(self, model: Mask2Anomaly, model_config: ModelConfig) -> ValidationResult:
        """Evaluate `model` (left in eval mode; the caller switches back to training)."""
        segmenter = Segmenter.from_model(
            model,
            model_config,
            self.context.device,
            postprocess_config=self.config.validation.postprocess,
        )
        metrics: dict[str, float] = {}
        histograms: dict[str, np.ndarray] = {}
        if self.semantic is not None:
            metrics['miou'] = self._semantic_miou(segmenter, self.semantic)
        auprcs, fpr95s = [], []
        for dataset, count in self.anomaly_sets:
            result, in_scores, ood_scores = self._anomaly(segmenter, dataset, count)
            metrics[f'{dataset.name}/auprc'] = float(result.auprc)
            metrics[f'{dataset.name}/fpr95'] = float(result.fpr95)
            metrics[f'{dataset.name}/auroc'] = float(result.auroc)
            auprcs.append(float(result.auprc))
            fpr95s.append(float(result.fpr95))
            histograms[f'{dataset.name}/anomaly_score_in_distribution'] = in_scores
            histograms[f'{dataset.name}/anomaly_score_ood'] = ood_scores
        if auprcs:
            metrics['anomaly_auprc'] = float(np.mean(auprcs))
            metrics['anomaly_fpr95'] = float(np.mean(fpr95s))
        score = selection_score(metrics, self.config.validation.selection_metric)
        return ValidationResult(metrics, score, histograms)

    def _semantic_miou(self, segmenter: Segmenter, dataset: CityscapesDataset) -> float:
        limit = self.config.validation.semantic_max_images
        count = len(dataset) if limit is None else min(limit, len(dataset))
        confusion = ConfusionMatrix(self.config.loss.num_classes)
        frames = self._frames(count)
        with self._progress(len(frames), 'val mIoU') as progress:
            for index in frames:
                sample = dataset.load(index)
                output = segmenter(sample.image)
                confusion.update(output.semantic.cpu().numpy(), sample.semantic)
                progress.update()
        merged = ConfusionMatrix(self.config.loss.num_classes)
        for part in all_gather_objects(confusion):
            merged.merge(part)
        # Classes that never occur (in GT or prediction) are NaN and left out of the mean.
        return float(merged.compute().miou)

    def _anomaly(
        self, segmenter: Segmenter, dataset: AnomalyDataset, count: int
    ) -> tuple[PixelMetrics, np.ndarray, np.ndarray]:
        accumulator = PixelCurveAccumulator(SMIYC_PROTOCOL)
        limit = self.config.validation.histogram_pixels
        in_parts: list[np.ndarray] = []
        ood_parts: list[np.ndarray] = []
        frames = self._frames(count)
        with self._progress(len(frames), f'val {dataset.name}') as progress:
            for index in frames:
                sample = dataset[index]
                score = segmenter(sample.image).anomaly_map.float().cpu().numpy()
                accumulator.update(score, sample.label)
                rng = np.random.default_rng([self.config.seed, index])
                for parts, value in ((in_parts, 0), (ood_parts, 1)):
                    values = score[sample.label == value]
                    if values.size > limit:
                        values = rng.choice(values, limit, replace=False)
                    parts.append(values.astype(np.float32))
                progress.update()
        gathered = all_gather_objects((accumulator, in_parts, ood_parts))
        merged = PixelCurveAccumulator(SMIYC_PROTOCOL)
        in_all: list[np.ndarray] = []
        ood_all: list[np.ndarray] = []
        for part_accumulator, part_in, part_ood in gathered:
            merged.merge(part_accumulator)
            in_all += part_in
            ood_all += part_ood
        empty = np.zeros(0, dtype=np.float32)
        return (
            merged.compute(),
            np.concatenate(in_all) if in_all else empty,
            np.concatenate(ood_all) if ood_all else empty,
        )
