"""From one image's logits to a `SegmentationOutput`: the single post-processing entry point.

With `scoring_resolution='mask'` (the node's fast path) everything is computed at mask resolution
(1/4 of the padded input) on the logits' device and only the final maps are resized to the output
resolution; with 'source' (the official protocol) the anomaly score, refinement and semantic
labels are computed on upsampled mask probabilities at output resolution. Data copied to the
host: the per-segment statistics (a few numbers per segment, to build the segment list) and,
with the OpenCV connected-components backend, the binary candidate mask at mask resolution. A few
small query selections (`nonzero`) synchronise with the device but copy nothing large.

Allowed dependencies: torch, numpy, OpenCV (through `panoptic`), cityscapesscripts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from m2a_perception.postprocess.anomaly import (
    apply_refinement,
    apply_structure_constrained_fusion,
    compute_anomaly_score,
    compute_query_validity,
    compute_refinement_mask,
    compute_soft_regions,
    default_refinement_class_ids,
    scorer_floor,
)
from m2a_perception.postprocess.config import (
    CENTROID_SPLIT,
    PostprocessConfig,
    check_instance_head,
)
from m2a_perception.postprocess.panoptic import (
    compute_background_map,
    compute_centroid_regions,
    compute_known_panoptic,
    mine_unknown_instances,
)
from m2a_perception.postprocess.semantic import (
    apply_open_set_threshold,
    compute_class_scores,
    compute_known_labels,
    compute_query_probabilities,
)
from m2a_perception.preprocess import PreprocessRecord, map_to_source
from m2a_perception.types import NetworkOutput, Segment, SegmentationOutput, SegmentKind


def output_size_for(record: PreprocessRecord, resolution: str) -> tuple[int, int]:
    """(height, width) of the output maps: the source size or the resized (unpadded) input size."""
    if resolution == 'source':
        return record.source_size
    if resolution == 'model':
        return record.resized_size
    raise ValueError(f"resolution must be 'source' or 'model', got {resolution!r}")


def resize_to_output(
    maps: torch.Tensor, record: PreprocessRecord, resolution: str, mode: str
) -> torch.Tensor:
    """Bring mask-resolution maps to the output resolution.

    Args:
        maps: (C, h, w) maps proportional to the padded input (float for 'bilinear', any dtype
            for 'nearest').
        record: the image's pre-processing record.
        resolution: 'source' or 'model'.
        mode: 'bilinear' or 'nearest'.

    Returns:
        (C, H, W) with the padding cropped off, same dtype as `maps`.
    """
    if resolution == 'model':
        # A record whose source is the resized image makes map_to_source stop after the crop.
        record = PreprocessRecord(record.resized_size, record.resized_size, record.padded_size)
    elif resolution != 'source':
        raise ValueError(f"resolution must be 'source' or 'model', got {resolution!r}")
    return map_to_source(maps[None], record, mode)[0]


def compute_anomaly_map(
    class_scores: torch.Tensor,
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    config: PostprocessConfig,
) -> torch.Tensor:
    """Anomaly score of one pass: scorer, then refinement and CSL fusion in the configured order.

    Args:
        class_scores: (K, h, w) Eq. 3 scores.
        class_probs: (Q, K+1) softmax class probabilities.
        mask_probs: (Q, h, w) sigmoid mask probabilities.
        config: post-processing configuration.

    Returns:
        (h, w) float32 anomaly map at mask resolution.
    """
    anomaly = compute_anomaly_score(config.scorer, class_scores, class_probs, mask_probs)
    if config.scf and config.scf_before_refinement:
        anomaly = _fuse(anomaly, class_probs, mask_probs, config)
    if config.refinement != 'off':
        class_ids = config.refinement_class_ids
        if class_ids is None:
            class_ids = default_refinement_class_ids(config.refinement)
        suppress = compute_refinement_mask(
            class_probs,
            mask_probs,
            config.refinement,
            class_ids,
            config.refinement_class_threshold,
            config.refinement_mask_threshold,
            config.refinement_min_queries,
        )
        floor = scorer_floor(config.scorer, class_scores.shape[0])
        anomaly = apply_refinement(anomaly, suppress, floor)
    if config.scf and not config.scf_before_refinement:
        anomaly = _fuse(anomaly, class_probs, mask_probs, config)
    return anomaly


def _fuse(
    anomaly: torch.Tensor,
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    config: PostprocessConfig,
) -> torch.Tensor:
    validity = compute_query_validity(class_probs, config.scf_validity)
    regions = compute_soft_regions(mask_probs, validity)
    return apply_structure_constrained_fusion(
        anomaly, regions, class_probs.shape[0], config.scf_exponent
    )


def upsample_mask_probabilities(
    mask_logits: torch.Tensor, record: PreprocessRecord, resolution: str
) -> torch.Tensor:
    """Mask probabilities at output resolution, in the official order.

    `maskformer_model.py` lines 240-245 upsample the mask logits bilinearly (align_corners False)
    to the padded input, `semantic_inference` (lines 304-319) takes the sigmoid there, and
    `sem_seg_postprocess` (line 267) crops the padding and resizes bilinearly to the output
    size. The sum over queries of the official code is linear, so resizing the per-query
    probabilities before that sum gives the same maps up to float rounding.

    Args:
        mask_logits: (Q, h, w) mask logits at 1/4 of the padded input.
        record: the image's pre-processing record.
        resolution: 'source' or 'model'.

    Returns:
        (Q, H, W) float32 sigmoid probabilities at output resolution.
    """
    padded = F.interpolate(
        mask_logits[None].float(), size=record.padded_size, mode='bilinear', align_corners=False
    )[0]
    height, width = record.resized_size
    probs = padded.sigmoid()[:, :height, :width]
    output_size = output_size_for(record, resolution)
    if tuple(probs.shape[-2:]) != output_size:
        probs = F.interpolate(probs[None], size=output_size, mode='bilinear', align_corners=False)[
            0
        ]
    return probs


def score_at_output(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    record: PreprocessRecord,
    config: PostprocessConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly map and class scores of one pass at output resolution.

    With `config.scoring_resolution == 'source'` (official) the scorer, refinement and fusion
    run on upsampled mask probabilities (`upsample_mask_probabilities`); with 'mask' they run at
    mask resolution and the anomaly map and class scores are resized bilinearly.

    Args:
        class_logits: (Q, K+1) class logits.
        mask_logits: (Q, h, w) mask logits at 1/4 of the padded input.
        record: pre-processing record.
        config: post-processing configuration.

    Returns:
        anomaly (H, W) float32 and class scores (K, H, W) float32 at output resolution.
    """
    resolution = config.output_resolution
    if config.scoring_resolution == 'source':
        class_probs = class_logits.float().softmax(-1)
        mask_probs = upsample_mask_probabilities(mask_logits, record, resolution)
        class_scores = compute_class_scores(class_probs, mask_probs)
        return compute_anomaly_map(class_scores, class_probs, mask_probs, config), class_scores
    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    class_scores = compute_class_scores(class_probs, mask_probs)
    anomaly = compute_anomaly_map(class_scores, class_probs, mask_probs, config)
    return (
        resize_to_output(anomaly[None], record, resolution, 'bilinear')[0],
        resize_to_output(class_scores, record, resolution, 'bilinear'),
    )


def postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    record: PreprocessRecord,
    config: PostprocessConfig | None = None,
    flipped: NetworkOutput | None = None,
    *,
    instance_embedding: torch.Tensor | None = None,
) -> SegmentationOutput:
    """Open-set outputs of one image from its logits.

    Args:
        class_logits: (Q, K+1) or (1, Q, K+1) class logits, "no object" last.
        mask_logits: (Q, h, w) or (1, Q, h, w) mask logits at 1/4 of the padded input.
        record: the image's `PreprocessRecord` (maps results back to the source image).
        config: post-processing configuration (defaults: the node's fast path, see
            `PostprocessConfig.for_protocol`).
        flipped: with `config.flip`, the pass on the mirrored source as returned by
            `predict_with_flip` (not flipped back). Its anomaly map is brought to output
            resolution, flipped back there and averaged with the plain pass's (official
            `anomaly_inference.py` lines 184-187). Semantic labels and panoptic segments come from
            the plain pass.
        instance_embedding: (4L, h, w) or (1, 4L, h, w) centroid embeddings of the plain pass
            (`InstanceNetworkOutput.instance_embedding`); needed by `mining_split: centroid_head`,
            ignored otherwise.

    Returns:
        A `SegmentationOutput` on the logits' device.

    Raises:
        ValueError: on bad shapes, `config.flip` without `flipped`, `mining_split:
            centroid_head` without `instance_embedding`, or class ids that do not fit the number
            of classes.
    """
    config = config or PostprocessConfig()
    class_logits, mask_logits = _single_image(class_logits, mask_logits)
    check_instance_head(config, instance_embedding is not None)
    if instance_embedding is not None and instance_embedding.dim() == 4:
        instance_embedding = instance_embedding[0]
    if instance_embedding is not None and (
        instance_embedding.dim() != 3 or instance_embedding.shape[1:] != mask_logits.shape[1:]
    ):
        raise ValueError(
            'instance_embedding must be (4L, h, w) with the mask size '
            f'{tuple(mask_logits.shape[1:])}, got {tuple(instance_embedding.shape)}'
        )
    num_known = class_logits.shape[1] - 1
    if config.flip and flipped is None:
        raise ValueError(
            'config.flip is set but no flipped pass was given (see predict_with_flip)'
        )

    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    class_scores = compute_class_scores(class_probs, mask_probs)
    resolution = config.output_resolution
    output_size = output_size_for(record, resolution)
    anomaly = None
    if config.scoring_resolution == 'source':
        anomaly_out, scores_out = score_at_output(class_logits, mask_logits, record, config)
    else:
        anomaly = compute_anomaly_map(class_scores, class_probs, mask_probs, config)
        anomaly_out = resize_to_output(anomaly[None], record, resolution, 'bilinear')[0]
        scores_out = None
    if config.flip and flipped is not None:
        flip_class, flip_mask = _single_image(flipped.class_logits, flipped.mask_logits)
        if flip_class.shape != class_logits.shape or flip_mask.shape != mask_logits.shape:
            raise ValueError('the flipped pass must have the same shapes as the plain pass')
        flip_anomaly, _ = score_at_output(flip_class, flip_mask, record, config)
        anomaly_out = 0.5 * (anomaly_out + flip_anomaly.flip(-1))

    semantic = confidence = None
    if config.semantic:
        if config.label_upsampling == 'bilinear':
            if scores_out is None:
                scores_out = resize_to_output(class_scores, record, resolution, 'bilinear')
            labels, best = compute_known_labels(scores_out)
        else:
            labels, best = compute_known_labels(class_scores)
            labels = resize_to_output(labels[None], record, resolution, 'nearest')[0]
            best = resize_to_output(best[None], record, resolution, 'nearest')[0]
        # The unknown test runs on the published anomaly map, so that 'unknown' pixels are
        # exactly those at or above the threshold in `anomaly_map` (Eq. 14).
        semantic, confidence = apply_open_set_threshold(
            labels, best, anomaly_out, config.anomaly_threshold, num_known
        )
    del scores_out

    panoptic = None
    segments: tuple[Segment, ...] = ()
    if config.panoptic:
        if anomaly is None and config.mining and config.mining_map == 'anomaly':
            # Mining works at mask resolution on the plain pass.
            anomaly = compute_anomaly_map(class_scores, class_probs, mask_probs, config)
        id_map, kinds, class_ids, class_scores_table = _compute_panoptic_ids(
            class_probs, mask_probs, anomaly, config, instance_embedding
        )
        id_map_out = resize_to_output(id_map[None], record, resolution, 'nearest')[0]
        panoptic, segments = _build_segments(
            id_map_out, anomaly_out, kinds, class_ids, class_scores_table, record, output_size
        )

    return SegmentationOutput(
        anomaly_map=anomaly_out,
        semantic=semantic,
        confidence=confidence,
        panoptic=panoptic,
        segments=segments,
        source_size=record.source_size,
        output_size=output_size,
        unknown_id=num_known,
        anomaly_threshold=config.anomaly_threshold,
    )


def _single_image(
    class_logits: torch.Tensor, mask_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if class_logits.dim() == 3 and mask_logits.dim() == 4:
        if class_logits.shape[0] != 1 or mask_logits.shape[0] != 1:
            raise ValueError(
                'postprocess handles one image; got a batch of '
                f'{class_logits.shape[0]} (loop over the batch)'
            )
        return class_logits[0], mask_logits[0]
    if class_logits.dim() == 2 and mask_logits.dim() == 3:
        return class_logits, mask_logits
    raise ValueError(
        'expected class_logits (Q, K+1) and mask_logits (Q, h, w), optionally with a batch of 1; '
        f'got {tuple(class_logits.shape)} and {tuple(mask_logits.shape)}'
    )


# Kind codes in the device-side segment table.
_STUFF, _THING, _UNKNOWN = 0, 1, 2
_KIND_OF_CODE = {
    _STUFF: SegmentKind.STUFF,
    _THING: SegmentKind.THING,
    _UNKNOWN: SegmentKind.UNKNOWN_THING,
}


def _compute_panoptic_ids(
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    anomaly: torch.Tensor | None,
    config: PostprocessConfig,
    instance_embedding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Known segments plus mined unknown things at mask resolution.

    `instance_embedding` (4L, h, w) is the instance head's output, used by `mining_split:
    centroid_head`.

    Returns:
        id_map (h, w) int64 and per-id tables kinds (S+1,) int64, class ids (S+1,) int64 and
        class scores (S+1,) float32. Unknown instance j gets id Q + j, painted over known
        segments: by the paper's assumptions unknown objects lie in the background, and a
        missed obstacle costs more than a clipped known segment.
    """
    num_queries = class_probs.shape[0]
    num_known = class_probs.shape[1] - 1
    table = compute_known_panoptic(
        class_probs,
        mask_probs,
        config.thing_class_ids,
        config.object_mask_threshold,
        config.overlap_threshold,
        config.mask_threshold,
    )
    kinds = torch.where(table.is_thing, _THING, _STUFF)
    id_map, class_ids, scores = table.id_map, table.class_ids, table.scores
    if not config.mining:
        return id_map, kinds, class_ids, scores

    if config.mining_map == 'background':
        mining_map = compute_background_map(class_probs, mask_probs)
    else:
        if anomaly is None:
            raise ValueError("mining_map 'anomaly' needs the mask-resolution anomaly map")
        mining_map = anomaly
    regions = None
    num_regions = None
    if config.mining_split == 'query_regions':
        validity = compute_query_validity(class_probs, config.scf_validity)
        regions = compute_soft_regions(mask_probs, validity)
    elif config.mining_split == CENTROID_SPLIT:
        if instance_embedding is None:
            raise ValueError("mining_split 'centroid_head' needs the instance embedding")
        regions, num_regions = compute_centroid_regions(
            instance_embedding,
            mining_map >= config.mining_threshold,
            config.centroid_grid,
            config.centroid_radius,
        )
    unknown = mine_unknown_instances(
        mining_map,
        class_probs,
        mask_probs,
        config.thing_class_ids,
        threshold=config.mining_threshold,
        min_area=config.mining_min_area,
        max_instances=config.mining_max_instances,
        iou_threshold=config.mining_iou_threshold,
        entropy_rule=config.mining_entropy_rule,
        mask_threshold=config.mask_threshold,
        connectivity=config.mining_connectivity,
        cc_backend=config.mining_cc_backend,
        cc_iterations=config.mining_cc_iterations,
        regions=regions,
        split_min_fraction=config.mining_split_min_fraction,
        num_regions=num_regions,
    )
    if unknown.num_instances == 0:
        return id_map, kinds, class_ids, scores
    id_map = torch.where(unknown.label_map > 0, unknown.label_map + num_queries, id_map)
    count = unknown.num_instances
    device = id_map.device
    kinds = torch.cat([kinds, torch.full((count,), _UNKNOWN, dtype=kinds.dtype, device=device)])
    class_ids = torch.cat(
        [class_ids, torch.full((count,), num_known, dtype=class_ids.dtype, device=device)]
    )
    scores = torch.cat([scores, unknown.scores.to(scores.dtype)])
    return id_map, kinds, class_ids, scores


def _build_segments(
    id_map: torch.Tensor,
    anomaly: torch.Tensor,
    kinds: torch.Tensor,
    class_ids: torch.Tensor,
    class_scores: torch.Tensor,
    record: PreprocessRecord,
    output_size: tuple[int, int],
) -> tuple[torch.Tensor, tuple[Segment, ...]]:
    """Per-segment statistics at output resolution, compact ids 1..S, and the segment list.

    Args:
        id_map: (H, W) int64 provisional ids at output resolution.
        anomaly: (H, W) float anomaly map at output resolution.
        kinds, class_ids, class_scores: per provisional id tables (T,).
        record: pre-processing record (source size for the boxes).
        output_size: (H, W).

    Returns:
        The (H, W) int32 id map with ids renumbered 1..S in provisional order, and the segments.
    """
    height, width = output_size
    table_size = int(kinds.shape[0])
    flat = id_map.reshape(-1)
    device = id_map.device
    area = torch.bincount(flat, minlength=table_size)
    values = anomaly.reshape(-1)
    # Sums over up to millions of pixels: float64 keeps the mean exact to float32 precision.
    anomaly_sum = torch.zeros(table_size, dtype=torch.float64, device=device)
    anomaly_sum.index_add_(0, flat, values.to(torch.float64))
    anomaly_max = torch.full((table_size,), -math.inf, dtype=values.dtype, device=device)
    anomaly_max.scatter_reduce_(0, flat, values, reduce='amax')
    columns = torch.arange(width, device=device).repeat(height)
    rows = torch.arange(height, device=device).repeat_interleave(width)
    boxes = torch.stack(
        [
            torch.full((table_size,), width, device=device).scatter_reduce(
                0, flat, columns, 'amin'
            ),
            torch.full((table_size,), height, device=device).scatter_reduce(0, flat, rows, 'amin'),
            torch.full((table_size,), -1, device=device).scatter_reduce(0, flat, columns, 'amax'),
            torch.full((table_size,), -1, device=device).scatter_reduce(0, flat, rows, 'amax'),
        ],
        dim=1,
    )
    # The one device-to-host copy of the post-processing: a few numbers per provisional id.
    stats = torch.cat(
        [
            area[:, None].to(torch.float64),
            anomaly_sum[:, None],
            anomaly_max[:, None].to(torch.float64),
            boxes.to(torch.float64),
            kinds[:, None].to(torch.float64),
            class_ids[:, None].to(torch.float64),
            class_scores[:, None].to(torch.float64),
        ],
        dim=1,
    ).cpu()

    source_h, source_w = record.source_size
    scale_x, scale_y = source_w / width, source_h / height
    lookup = torch.zeros(table_size, dtype=torch.int32)
    segments = []
    for provisional, row in enumerate(stats.tolist()):
        if provisional == 0:
            continue
        pixels = int(row[0])
        if pixels == 0:
            continue
        new_id = len(segments) + 1
        lookup[provisional] = new_id
        x0, y0, x1, y1 = int(row[3]), int(row[4]), int(row[5]) + 1, int(row[6]) + 1
        segments.append(
            Segment(
                id=new_id,
                kind=_KIND_OF_CODE[int(row[7])],
                class_id=int(row[8]),
                class_score=float(row[9]),
                anomaly_score_mean=float(row[1] / pixels),
                anomaly_score_max=float(row[2]),
                area=pixels,
                bbox=_box_to_source((x0, y0, x1, y1), scale_x, scale_y, source_w, source_h),
            )
        )
    if len(segments) > torch.iinfo(torch.uint16).max:
        raise ValueError(f'{len(segments)} segments do not fit a 16-bit id image')
    panoptic = lookup.to(device)[id_map]
    return panoptic, tuple(segments)


def _box_to_source(
    box: tuple[int, int, int, int], scale_x: float, scale_y: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Half-open output-pixel box -> half-open source-pixel box, rounded outwards."""
    if scale_x == 1.0 and scale_y == 1.0:
        return box
    x0, y0, x1, y1 = box
    return (
        max(0, math.floor(x0 * scale_x)),
        max(0, math.floor(y0 * scale_y)),
        min(width, math.ceil(x1 * scale_x)),
        min(height, math.ceil(y1 * scale_y)),
    )
