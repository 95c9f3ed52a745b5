"""The accuracy gate: a candidate backend against eager FP32 on a fixed set of inputs.

Raw `allclose` on logits is the wrong test for FP16 engines (shared/reference/tensorrt.md §5): the
gate compares what the vehicle uses. Per image it computes, from each backend's logits, the
closed-set semantic map (argmax of the Eq. 3 class scores) and the anomaly map (the configured
scorer and refinement), both at mask resolution (1/4 of the input) over the valid, unpadded area.

Criteria (defaults from the issue; starting points to tune, not published standards):

- no NaN or Inf in the candidate's outputs;
- semantic-map argmax agreement, pooled over all pixels, at least 99.5 %;
- max-abs and mean-abs difference of the anomaly map: reported (a bound is optional);
- with a labelled set: |AuPRC(candidate) - AuPRC(reference)| at most 0.5 points.

An engine that fails is refused unless the caller overrides explicitly (`enforce_gate`); the
result, override included, goes into the engine's sidecar.

Allowed dependencies: torch, numpy, Pillow, the core (`postprocess`, `metrics`, `preprocess`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from m2a_perception.metrics.pixel import PixelCurveAccumulator, get_pixel_protocol
from m2a_perception.postprocess import (
    PostprocessConfig,
    compute_anomaly_map,
    compute_class_scores,
    compute_query_probabilities,
)
from m2a_perception.preprocess import PreprocessRecord, map_to_source
from m2a_perception.types import NetworkOutput

BackendLike = Callable[[torch.Tensor], NetworkOutput]


@dataclass(frozen=True)
class GateThresholds:
    """Pass criteria.

    Attributes:
        min_argmax_agreement: fraction of valid mask-resolution pixels whose semantic argmax must
            agree with the reference.
        max_auprc_delta_points: bound on |ΔAuPRC| in percentage points (labelled sets only).
        max_anomaly_abs_diff: optional bound on the max-abs anomaly-map difference; None only
            reports it.
    """

    min_argmax_agreement: float = 0.995
    max_auprc_delta_points: float = 0.5
    max_anomaly_abs_diff: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_argmax_agreement <= 1.0:
            raise ValueError('min_argmax_agreement must be in [0, 1]')
        if self.max_auprc_delta_points < 0:
            raise ValueError('max_auprc_delta_points must be >= 0')


@dataclass(frozen=True)
class GateResult:
    """Outcome of one gate run (all differences are candidate minus reference).

    Attributes:
        passed: every criterion held.
        failures: one sentence per failed criterion.
        overridden: the caller accepted a failing result explicitly.
        reference, candidate: backend names.
        num_images: inputs compared.
        input_shape: (B, 3, H, W) fed to the backends.
        argmax_agreement: pooled semantic-map agreement.
        worst_image_agreement: lowest per-image agreement.
        anomaly_max_abs, anomaly_mean_abs: anomaly-map differences at mask resolution.
        class_logits_max_abs, mask_logits_max_abs: raw logit differences (for diagnosis only).
        non_finite: NaN/Inf values in the candidate's outputs.
        auprc_reference, auprc_candidate: anomaly AuPRC (fractions) with labels, else None.
        auprc_delta_points: candidate minus reference in percentage points, or None.
        fpr95_delta_points: the same for FPR at 95 % TPR (reported, not gated), or None.
        thresholds: the criteria used.
        seconds: wall time of the comparison.
    """

    passed: bool
    failures: tuple[str, ...]
    reference: str
    candidate: str
    num_images: int
    input_shape: tuple[int, ...]
    argmax_agreement: float
    worst_image_agreement: float
    anomaly_max_abs: float
    anomaly_mean_abs: float
    class_logits_max_abs: float
    mask_logits_max_abs: float
    non_finite: int
    auprc_reference: float | None
    auprc_candidate: float | None
    auprc_delta_points: float | None
    fpr95_delta_points: float | None
    thresholds: GateThresholds
    seconds: float
    overridden: bool = False

    @property
    def accepted(self) -> bool:
        """Passed, or failed and explicitly overridden."""
        return self.passed or self.overridden

    def summary(self) -> str:
        verdict = (
            'PASSED' if self.passed else 'FAILED' + (' (overridden)' if self.overridden else '')
        )
        text = (
            f'accuracy gate {verdict}: {self.candidate} vs {self.reference} on '
            f'{self.num_images} image(s): argmax agreement {100 * self.argmax_agreement:.3f}% '
            f'(min {100 * self.thresholds.min_argmax_agreement:.1f}%), anomaly map max-abs '
            f'{self.anomaly_max_abs:.3g} mean-abs {self.anomaly_mean_abs:.3g}'
        )
        if self.auprc_delta_points is not None:
            text += f', ΔAuPRC {self.auprc_delta_points:+.3f} pt'
        if self.failures:
            text += '; ' + '; '.join(self.failures)
        return text

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data['input_shape'] = list(self.input_shape)
        data['failures'] = list(self.failures)
        data['accepted'] = self.accepted
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values['thresholds'] = GateThresholds(**values['thresholds'])
        values['failures'] = tuple(values['failures'])
        values['input_shape'] = tuple(values['input_shape'])
        return cls(**values)


class GateFailedError(RuntimeError):
    """A candidate failed the accuracy gate and no override was given."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(
            result.summary() + '. The engine is refused; fix the precision recipe or rebuild. '
            'To use it anyway, override explicitly (m2a-build-engine --accept-gate-failure).'
        )
        self.result = result


def enforce_gate(result: GateResult, allow_failure: bool = False) -> GateResult:
    """Return the result (marked overridden if it failed and `allow_failure`), or raise.

    Raises:
        GateFailedError: if the gate failed and `allow_failure` is False.
    """
    if result.passed:
        return result
    if not allow_failure:
        raise GateFailedError(result)
    return dataclasses.replace(result, overridden=True)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Disable TF32 in matmuls and cuDNN convolutions, so the CUDA reference is true FP32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def synthetic_gate_images(size: tuple[int, int], count: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed set of road-like uint8 test images: (count, 3, H, W) RGB.

    Sky gradient above a grey road with lane marks, coloured boxes (cars, buildings, a few odd
    objects) and low-frequency texture; deterministic for a given seed on any machine. Real
    validation images are better: pass them to the gate when the vehicle has them.
    """
    height, width = size
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    images = []
    rows = torch.linspace(0.0, 1.0, height)[:, None].expand(height, width)
    for _ in range(count):
        horizon = 0.35 + 0.2 * float(uniform(1))
        sky = torch.stack([0.45 + 0.3 * rows, 0.6 + 0.25 * rows, 0.9 - 0.1 * rows])
        road = torch.stack([0.35 + 0.1 * rows, 0.35 + 0.1 * rows, 0.37 + 0.1 * rows])
        image = torch.where(rows[None] < horizon, sky, road)
        for _ in range(6):
            top, left = float(uniform(1)) * height, float(uniform(1)) * width
            box_h, box_w = (
                (0.05 + 0.3 * float(uniform(1))) * height,
                (0.05 + 0.3 * float(uniform(1))) * width,
            )
            t, lft = int(top), int(left)
            image[:, t : int(top + box_h), lft : int(left + box_w)] = uniform(3)[:, None, None]
        lane = int(width * (0.45 + 0.1 * float(uniform(1))))
        image[:, int(height * (horizon + 0.1)) :, lane : lane + max(1, width // 100)] = 0.95
        texture = F.interpolate(
            uniform(1, 3, max(1, height // 16), max(1, width // 16)),
            size=(height, width),
            mode='bilinear',
            align_corners=False,
        )[0]
        image = 0.85 * image + 0.15 * texture + 0.02 * (uniform(3, height, width) - 0.5)
        images.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.stack(images)


def backend_input(
    backend: object,
    images: torch.Tensor,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    valid_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """What `backend` expects for these (B, 3, H, W) uint8 padded images.

    Backends with `input_dtype == torch.uint8` (compiled inference graphs) get the uint8 images;
    the others get them normalised with the padding zeroed, exactly like
    `preprocess.normalize_and_pad`.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f'gate images must be uint8, got {images.dtype}')
    device = getattr(backend, 'device', torch.device('cpu'))
    if getattr(backend, 'input_dtype', torch.float32) == torch.uint8:
        return images.to(device)
    images = images.to(device)
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    normalized = (images.float() - mean) / std
    height, width = images.shape[-2:]
    if valid_size is not None and tuple(valid_size) != (height, width):
        valid_h, valid_w = valid_size
        normalized = F.pad(
            normalized[..., :valid_h, :valid_w],
            (0, int(width) - valid_w, 0, int(height) - valid_h),
        )
    return normalized


def _maps(
    logits: NetworkOutput, config: PostprocessConfig, valid_mask_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(semantic argmax, anomaly map) of image 0 at mask resolution, valid area, on the CPU."""
    class_logits, mask_logits = logits.class_logits[0], logits.mask_logits[0]
    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    class_scores = compute_class_scores(class_probs, mask_probs)
    anomaly = compute_anomaly_map(class_scores, class_probs, mask_probs, config)
    height, width = valid_mask_size
    semantic = class_scores.argmax(0)[:height, :width]
    return semantic.cpu(), anomaly[:height, :width].float().cpu()


def run_gate(
    reference: BackendLike,
    candidate: BackendLike,
    images: torch.Tensor,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    *,
    valid_size: tuple[int, int] | None = None,
    labels: torch.Tensor | None = None,
    thresholds: GateThresholds | None = None,
    postprocess_config: PostprocessConfig | None = None,
    protocol: str = 'mask2anomaly',
) -> GateResult:
    """Compare `candidate` against `reference` (eager FP32) image by image.

    Args:
        reference: the eager FP32 backend (`TorchBackend(model, device, 'fp32')`); run with TF32
            disabled.
        candidate: the backend under test (an engine).
        images: (N, 3, H, W) uint8 RGB at the engine's padded input size.
        pixel_mean, pixel_std: the model's normalisation.
        valid_size: (h, w) of the real image inside the padding; None = the full input.
        labels: optional (N, h, w) anomaly labels (0 inlier, 1 anomaly, 255 void) at the valid
            input resolution; enables the AuPRC criterion.
        thresholds: pass criteria (defaults: `GateThresholds()`).
        postprocess_config: anomaly scorer and refinement (defaults: the official ones).
        protocol: pixel-metric protocol for AuPRC (`metrics.pixel.get_pixel_protocol`).

    Returns:
        The `GateResult` (not yet enforced; see `enforce_gate`).
    """
    thresholds = thresholds or GateThresholds()
    config = postprocess_config or PostprocessConfig()
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f'images must be (N, 3, H, W) with N >= 1, got {tuple(images.shape)}')
    height, width = int(images.shape[-2]), int(images.shape[-1])
    valid = tuple(valid_size) if valid_size is not None else (height, width)
    if labels is not None and (labels.shape[0] != images.shape[0] or labels.dim() != 3):
        raise ValueError('labels must be (N, h, w) with one label map per image')
    valid_mask_size = (math.ceil(valid[0] / 4), math.ceil(valid[1] / 4))
    record = PreprocessRecord(source_size=valid, resized_size=valid, padded_size=(height, width))
    start = time.perf_counter()

    agree = total = non_finite = 0
    worst = 1.0
    anomaly_max = anomaly_sum = 0.0
    anomaly_count = 0
    class_max = mask_max = 0.0
    accumulators = None
    if labels is not None:
        pixel_protocol = get_pixel_protocol(protocol)
        accumulators = (
            PixelCurveAccumulator(pixel_protocol),
            PixelCurveAccumulator(pixel_protocol),
        )
    for index in range(images.shape[0]):
        frame = images[index : index + 1]
        with torch.inference_mode():
            with strict_fp32():
                ref = reference(backend_input(reference, frame, pixel_mean, pixel_std, valid))
            out = candidate(backend_input(candidate, frame, pixel_mean, pixel_std, valid))
        ref = NetworkOutput(ref.class_logits.float(), ref.mask_logits.float())
        out = NetworkOutput(
            out.class_logits.float().to(ref.class_logits.device),
            out.mask_logits.float().to(ref.mask_logits.device),
        )
        bad = sum(int((~torch.isfinite(t)).sum()) for t in out)
        non_finite += bad
        class_max = max(class_max, _max_abs(out.class_logits, ref.class_logits))
        mask_max = max(mask_max, _max_abs(out.mask_logits, ref.mask_logits))
        ref_semantic, ref_anomaly = _maps(ref, config, valid_mask_size)
        out_semantic, out_anomaly = _maps(out, config, valid_mask_size)
        equal = int((ref_semantic == out_semantic).sum())
        agree += equal
        total += ref_semantic.numel()
        worst = min(worst, equal / ref_semantic.numel())
        difference = (out_anomaly - ref_anomaly).abs().nan_to_num(nan=math.inf)
        anomaly_max = max(anomaly_max, float(difference.max()))
        anomaly_sum += float(difference.sum())
        anomaly_count += difference.numel()
        if accumulators is not None and labels is not None:
            label = labels[index]
            for accumulator, anomaly in zip(accumulators, (ref_anomaly, out_anomaly), strict=True):
                full = map_to_source(anomaly[None, None], _label_record(record, label))[0, 0]
                accumulator.update(full.nan_to_num(nan=0.0), label.cpu())

    agreement = agree / total
    failures = []
    if non_finite:
        failures.append(f'candidate produced {non_finite} NaN/Inf output value(s)')
    if agreement < thresholds.min_argmax_agreement:
        failures.append(
            f'argmax agreement {100 * agreement:.3f}% is below '
            f'{100 * thresholds.min_argmax_agreement:.2f}%'
        )
    if (
        thresholds.max_anomaly_abs_diff is not None
        and anomaly_max > thresholds.max_anomaly_abs_diff
    ):
        failures.append(
            f'anomaly map max-abs difference {anomaly_max:.3g} exceeds '
            f'{thresholds.max_anomaly_abs_diff:.3g}'
        )
    auprc_ref = auprc_out = auprc_delta = fpr_delta = None
    if accumulators is not None:
        ref_metrics, out_metrics = (a.compute() for a in accumulators)
        auprc_ref, auprc_out = ref_metrics.auprc, out_metrics.auprc
        auprc_delta = 100.0 * (auprc_out - auprc_ref)
        fpr_delta = 100.0 * (out_metrics.fpr95 - ref_metrics.fpr95)
        if not abs(auprc_delta) <= thresholds.max_auprc_delta_points:
            failures.append(
                f'anomaly AuPRC differs by {auprc_delta:+.3f} points '
                f'(limit ±{thresholds.max_auprc_delta_points} points)'
            )
    return GateResult(
        passed=not failures,
        failures=tuple(failures),
        reference=str(getattr(reference, 'name', type(reference).__name__)),
        candidate=str(getattr(candidate, 'name', type(candidate).__name__)),
        num_images=int(images.shape[0]),
        input_shape=(1, 3, height, width),
        argmax_agreement=agreement,
        worst_image_agreement=worst,
        anomaly_max_abs=anomaly_max,
        anomaly_mean_abs=anomaly_sum / max(anomaly_count, 1),
        class_logits_max_abs=class_max,
        mask_logits_max_abs=mask_max,
        non_finite=non_finite,
        auprc_reference=auprc_ref,
        auprc_candidate=auprc_out,
        auprc_delta_points=auprc_delta,
        fpr95_delta_points=fpr_delta,
        thresholds=thresholds,
        seconds=time.perf_counter() - start,
    )


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().nan_to_num(nan=math.inf).max())


def _label_record(record: PreprocessRecord, label: torch.Tensor) -> PreprocessRecord:
    """Map mask-resolution maps onto a label of the valid size (or its own size)."""
    size = (int(label.shape[-2]), int(label.shape[-1]))
    return PreprocessRecord(
        source_size=size, resized_size=record.resized_size, padded_size=record.padded_size
    )


_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def load_gate_set(
    image_dir: Path,
    label_dir: Path | None,
    size: tuple[int, int],
    valid_size: tuple[int, int] | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read gate images (and optional anomaly labels) from folders, ready for `run_gate`.

    Images are resized to the valid size with PIL bilinear (as the pre-processing does) and
    zero-padded to `size`; labels (0 inlier, 1 anomaly, 255 void; same file stem as the image)
    are resized with nearest neighbour to the valid size.

    Returns:
        (N, 3, H, W) uint8 images and (N, h, w) uint8 labels (None without `label_dir`).

    Raises:
        FileNotFoundError: no images, or an image without its label.
    """
    from PIL import Image

    from m2a_perception.preprocess import resize_image

    valid = tuple(valid_size or size)
    paths = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if limit:
        paths = paths[:limit]
    if not paths:
        raise FileNotFoundError(f'no gate images ({", ".join(_IMAGE_SUFFIXES)}) in {image_dir}')
    images, labels = [], []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert('RGB'))
        resized = np.ascontiguousarray(resize_image(rgb, valid))  # type: ignore[arg-type]
        image = torch.zeros(3, *size, dtype=torch.uint8)
        image[:, : valid[0], : valid[1]] = torch.from_numpy(resized).permute(2, 0, 1)
        images.append(image)
        if label_dir is not None:
            candidates = sorted(Path(label_dir).glob(path.stem + '.*'))
            if not candidates:
                raise FileNotFoundError(f'no label for {path.name} in {label_dir}')
            label = Image.open(candidates[0])
            label = label.resize((valid[1], valid[0]), Image.Resampling.NEAREST)
            labels.append(torch.from_numpy(np.asarray(label, dtype=np.uint8).copy()))
    return torch.stack(images), (torch.stack(labels) if label_dir is not None else None)
