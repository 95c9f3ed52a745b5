"""Panoptic segmentation of known classes and open-set mining of unknown instances (Section 6).

Known classes follow Mask2Former's panoptic rule, vectorised so that it runs on the logits'
device without per-query host round trips:

- keep queries whose top class is not "no object" and whose probability exceeds the object-mask
  threshold;
- each pixel goes to the kept query with the highest probability * sigmoid(mask);
- a query survives if its pixels are inside its own binary mask (sigmoid >= mask threshold) and at
  least `overlap_threshold` of that binary mask is won;
- thing queries become one segment each; stuff queries of the same class merge into the segment
  of the first such query. Segment ids count up from 1 in query order.

Unknown instances (paper Section 6.3; the paper leaves thresholds open, ours are parameters):

1. background map B = 1 - max over known queries of max_k P_qk * sigmoid(m_q) (Eq. 15), or the
   anomaly map;
2. candidates = connected components of map >= threshold (OpenCV, or iterative propagation), at
   least `min_area` pixels; optionally split by CSL query regions, or by the centroids of the
   optional class-agnostic instance head (`compute_centroid_regions`, seed 004 Section 3.3.1);
3. IoU of every candidate with every binarised query mask; the best query must reach the IoU
   threshold ("significant overlap");
4. that query's class distribution is renormalised over stuff classes and over thing classes; the
   entropies, divided by log(number of classes in the group) so that groups of different size
   compare, are E_S and E_T; the candidate is an unknown thing if E_S > E_T.

Allowed dependencies: numpy, torch, OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from m2a_perception.model.instance_head import centroid_positional_embedding


@dataclass(frozen=True)
class PanopticTable:
    """Per-segment attributes indexed by segment id, kept on the device.

    Attributes:
        id_map: (h, w) int64 segment ids, 0 = no segment.
        class_ids: (S+1,) int64 class per id (entry 0 unused).
        scores: (S+1,) float32 class score per id (entry 0 unused).
        is_thing: (S+1,) bool per id (entry 0 unused).
    """

    id_map: torch.Tensor
    class_ids: torch.Tensor
    scores: torch.Tensor
    is_thing: torch.Tensor


@dataclass(frozen=True)
class UnknownInstances:
    """Mined unknown things at mask resolution.

    Attributes:
        label_map: (h, w) int64, 0 = none, 1..N = instance.
        scores: (N,) float32 mean of the mining map over each instance.
        query_indices: (N,) int64 best-overlapping query of each instance.
    """

    label_map: torch.Tensor
    scores: torch.Tensor
    query_indices: torch.Tensor

    @property
    def num_instances(self) -> int:
        return int(self.scores.shape[0])


def compute_known_panoptic(
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    thing_class_ids: tuple[int, ...],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    mask_threshold: float = 0.5,
) -> PanopticTable:
    """Mask2Former panoptic inference for the known classes (see the module docstring).

    Args:
        class_probs: (Q, K+1) softmax class probabilities, no-object last.
        mask_probs: (Q, h, w) sigmoid mask probabilities.
        thing_class_ids: train ids that are things.
        object_mask_threshold: minimum top-class probability of a kept query.
        overlap_threshold: minimum fraction of a query's binary mask it must win.
        mask_threshold: binarisation threshold on sigmoid(mask).

    Returns:
        A `PanopticTable` with S = Q (segment ids 1..Q at most; unused ids have score 0).
    """
    num_queries = class_probs.shape[0]
    num_known = class_probs.shape[1] - 1
    device = class_probs.device
    if any(not 0 <= i < num_known for i in thing_class_ids):
        raise ValueError(f'thing class ids {thing_class_ids} out of range for {num_known} classes')
    height, width = mask_probs.shape[1:]
    table_size = num_queries + 1
    class_ids = torch.zeros(table_size, dtype=torch.long, device=device)
    segment_scores = torch.zeros(table_size, dtype=torch.float32, device=device)
    thing_flags = torch.zeros(table_size, dtype=torch.bool, device=device)
    scores, labels = class_probs.max(-1)
    keep = (labels != num_known) & (scores > object_mask_threshold)
    # Selecting the kept queries costs one host sync but spares the (Q, h, w) work for the
    # dropped ones, usually most of them.
    kept = torch.nonzero(keep).squeeze(1)
    num_kept = int(kept.numel())
    if num_kept == 0:
        id_map = torch.zeros(height, width, dtype=torch.long, device=device)
        return PanopticTable(id_map, class_ids, segment_scores, thing_flags)
    scores, labels, masks = scores[kept], labels[kept], mask_probs[kept]

    owner = (scores[:, None, None] * masks).argmax(0)
    binary = masks >= mask_threshold
    inside_own_mask = binary.gather(0, owner[None])[0]
    flat_owner = owner.reshape(-1)
    won_area = torch.bincount(flat_owner, minlength=num_kept)
    mask_area = torch.count_nonzero(binary.reshape(num_kept, -1), dim=1)
    final_area = torch.bincount(
        flat_owner, weights=inside_own_mask.reshape(-1).to(torch.float32), minlength=num_kept
    )
    valid = (
        (won_area > 0)
        & (mask_area > 0)
        & (final_area > 0)
        & (won_area >= overlap_threshold * mask_area)
    )

    things = torch.tensor(thing_class_ids, dtype=torch.long, device=device)
    is_thing = torch.isin(labels, things)
    stuff_valid = valid & ~is_thing
    query_index = torch.arange(num_kept, device=device)
    # First valid query of each stuff class: the one whose segment later queries merge into.
    first_of_class = torch.full((num_known + 1,), num_kept, dtype=torch.long, device=device)
    first_of_class.scatter_reduce_(
        0, labels, torch.where(stuff_valid, query_index, num_kept), reduce='amin'
    )
    first = first_of_class[labels]
    opens = valid & (is_thing | (query_index == first))
    running = torch.cumsum(opens.long(), 0)
    merged = running[first.clamp(max=num_kept - 1)]
    segment_of_query = torch.where(opens, running, torch.where(stuff_valid, merged, 0))

    class_ids.scatter_(0, segment_of_query, labels)
    segment_scores.scatter_reduce_(
        0, segment_of_query, torch.where(valid, scores, 0.0), reduce='amax'
    )
    thing_flags.scatter_(0, segment_of_query, is_thing)
    # Entry 0 collected writes from dropped queries; it stands for "no segment".
    class_ids[0], segment_scores[0], thing_flags[0] = 0, 0.0, False

    id_map = torch.where(inside_own_mask, segment_of_query[owner], 0)
    return PanopticTable(id_map, class_ids, segment_scores, thing_flags)


def compute_background_map(class_probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 15: B = 1 - max over known queries of (max_k P_qk) * sigmoid(m_q).

    Known queries are those whose top class (over K+1) is not "no object". With none, B = 1.

    Args:
        class_probs: (Q, K+1) softmax class probabilities.
        mask_probs: (Q, h, w) sigmoid mask probabilities.

    Returns:
        (h, w) float32 in [0, 1].
    """
    num_known = class_probs.shape[1] - 1
    known = torch.nonzero(class_probs.argmax(1) != num_known).squeeze(1)
    if known.numel() == 0:
        return mask_probs.new_ones(mask_probs.shape[1:])
    confidence = class_probs[known, :num_known].amax(1)
    return 1.0 - (confidence[:, None, None] * mask_probs[known]).amax(0)


def find_connected_components(
    mask: torch.Tensor, connectivity: int = 8, backend: str = 'opencv', iterations: int = 500
) -> tuple[torch.Tensor, int]:
    """Label the connected components of a binary mask.

    'opencv' copies the mask to the host, runs `cv2.connectedComponents` (exact) and copies the
    labels back. 'iterative' stays on the device: every foreground pixel starts with a unique
    label and takes the maximum over its neighbourhood `iterations` times; long thin components
    may stay split when the propagation has not converged, which is the behaviour the paper's
    "number of iterations" hyperparameter suggests (Table 6).

    Args:
        mask: (h, w) bool.
        connectivity: 4 or 8.
        backend: 'opencv' or 'iterative'.
        iterations: propagation steps for 'iterative'.

    Returns:
        labels: (h, w) int64 on `mask.device`, 0 = background, 1..N = components (numbered in
            raster order of their first pixel for 'opencv').
        N: number of components.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f'mask must be (h, w) bool, got {tuple(mask.shape)} {mask.dtype}')
    if connectivity not in (4, 8):
        raise ValueError(f'connectivity must be 4 or 8, got {connectivity}')
    if backend == 'opencv':
        host = np.ascontiguousarray(mask.cpu().numpy().astype(np.uint8))
        count, labels = cv2.connectedComponents(host, connectivity=connectivity, ltype=cv2.CV_32S)
        return torch.from_numpy(labels.astype(np.int64)).to(mask.device), int(count) - 1
    if backend == 'iterative':
        return _propagate_labels(mask, connectivity, iterations)
    raise ValueError(f"backend must be 'opencv' or 'iterative', got {backend!r}")


def _propagate_labels(
    mask: torch.Tensor, connectivity: int, iterations: int
) -> tuple[torch.Tensor, int]:
    height, width = mask.shape
    foreground = mask.to(torch.float32)[None, None]
    # float32 holds integers exactly up to 2**24, far above any mask-resolution pixel count.
    labels = torch.arange(1, height * width + 1, device=mask.device, dtype=torch.float32)
    labels = labels.reshape(1, 1, height, width) * foreground
    for _ in range(iterations):
        if connectivity == 8:
            spread = F.max_pool2d(labels, 3, stride=1, padding=1)
        else:
            spread = torch.maximum(
                F.max_pool2d(labels, (3, 1), stride=1, padding=(1, 0)),
                F.max_pool2d(labels, (1, 3), stride=1, padding=(0, 1)),
            )
        labels = spread * foreground
    values, compact = torch.unique(labels.reshape(height, width), return_inverse=True)
    # unique() sorts, so background 0 (if present) becomes index 0.
    has_background = bool((values[:1] == 0).all()) if values.numel() else True
    compact = compact if has_background else compact + 1
    count = int(values.numel()) - (1 if has_background and values.numel() else 0)
    return compact.to(torch.long), count


def split_by_regions(
    labels: torch.Tensor, regions: torch.Tensor, num_regions: int, min_fraction: float
) -> tuple[torch.Tensor, int]:
    """CSL query-region splitting of candidate components.

    Each component is cut into pieces by the soft-assignment region of its pixels; a piece smaller
    than `min_fraction` of its component is merged into the component's largest piece, so one
    object split across several queries is not shattered into slivers.

    Args:
        labels: (h, w) int64 components, 0 = background.
        regions: (h, w) int64 query region per pixel in [0, num_regions).
        num_regions: number of regions.
        min_fraction: pieces below this fraction of their component are merged.

    Returns:
        (h, w) int64 piece labels (0 = background, 1..M) and M.
    """
    keys = torch.where(labels > 0, labels * num_regions + regions, 0)
    values, pieces = torch.unique(keys, return_inverse=True)
    # Piece 0 is the background whenever it exists; make indices 1-based for foreground pieces.
    has_background = bool((values[:1] == 0).all())
    if not has_background:
        values = torch.cat([values.new_zeros(1), values])
        pieces = pieces + 1
    num_pieces = int(values.numel())
    piece_area = torch.bincount(pieces.reshape(-1), minlength=num_pieces)
    piece_component = values // num_regions
    num_components = int(labels.max()) + 1
    component_area = torch.bincount(labels.reshape(-1), minlength=num_components)
    # Largest piece per component; ties go to the lower piece index.
    piece_index = torch.arange(num_pieces, device=labels.device)
    rank = piece_area * num_pieces + (num_pieces - 1 - piece_index)
    best_rank = torch.zeros(num_components, dtype=torch.long, device=labels.device)
    best_rank.scatter_reduce_(0, piece_component, rank, reduce='amax')
    largest = num_pieces - 1 - best_rank % num_pieces
    small = piece_area < min_fraction * component_area[piece_component]
    target = torch.where(small, largest[piece_component], piece_index)
    target[0] = 0
    used, relabelled = torch.unique(target[pieces], return_inverse=True)
    if not bool((used[:1] == 0).all()):
        relabelled = relabelled + 1
        return relabelled, int(used.numel())
    return relabelled, int(used.numel()) - 1


def decode_centroids(embedding: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Nearest centroid on a discrete (rows, columns) grid for each embedding (seed 004 §3.3.1).

    The embedding is concat(γ(u), γ(v)), so the squared distance to the code of grid point
    (row, column) is the distance of the u half to γ(u_column) plus that of the v half to
    γ(v_row): the nearest grid point is the nearest column and the nearest row, searched
    separately (columns + rows codes instead of columns × rows).

    Args:
        embedding: (P, 4L) float predicted embeddings.
        grid: (rows, columns); grid points sit at cell centres of [-1, 1]².

    Returns:
        (P, 2) float32 decoded (u, v) in [-1, 1].
    """
    if embedding.dim() != 2 or embedding.shape[1] % 4:
        raise ValueError(f'embedding must be (P, 4L), got {tuple(embedding.shape)}')
    harmonics = embedding.shape[1] // 4
    decoded = []
    for half, cells in zip(embedding.float().split(2 * harmonics, dim=1), grid[::-1], strict=True):
        centres = torch.arange(cells, device=embedding.device, dtype=torch.float32) + 0.5
        centres = centres / cells * 2.0 - 1.0
        codes = centroid_positional_embedding(centres[:, None], harmonics)  # (cells, 2L)
        decoded.append(centres[torch.cdist(half, codes).argmin(1)])
    return torch.stack(decoded, dim=1)


def compute_centroid_regions(
    embedding: torch.Tensor,
    candidates: torch.Tensor,
    grid: tuple[int, int],
    radius: float,
    max_regions: int = 256,
) -> tuple[torch.Tensor, int]:
    """Group candidate pixels by the centroid the instance head predicts for them.

    Seed 004's post-processing (Section 3.4): nearest-neighbour decoding on a discrete centroid
    grid, then non-maximum suppression. The NMS here is on the centroids: the grid point decoded
    by most remaining pixels becomes an instance centre, every remaining pixel whose decoded
    centroid lies within `radius` (mask pixels) of it joins, and this repeats until no pixel is
    left (after `max_regions` centres, the rest join their nearest centre).

    Args:
        embedding: (4L, h, w) float instance embeddings
            (`InstanceNetworkOutput.instance_embedding`).
        candidates: (h, w) bool pixels to group (the mining candidates).
        grid: (rows, columns) of the decoding grid.
        radius: NMS radius in mask-resolution pixels.
        max_regions: most centres chosen.

    Returns:
        (h, w) int64 region per pixel in [0, R) (0 outside the candidates) and R >= 1.
    """
    channels, height, width = embedding.shape
    if tuple(candidates.shape) != (height, width):
        raise ValueError(
            f'candidates {tuple(candidates.shape)} and embedding {tuple(embedding.shape)} '
            'must share (h, w)'
        )
    regions = torch.zeros(height * width, dtype=torch.long, device=embedding.device)
    index = torch.nonzero(candidates.reshape(-1)).squeeze(1)
    if index.numel() == 0:
        return regions.reshape(height, width), 1
    decoded = decode_centroids(embedding.reshape(channels, -1).T.index_select(0, index), grid)
    # Decoded centroids in mask pixels, so that the radius is isotropic on the image.
    points = (decoded + 1.0) * 0.5 * torch.tensor([width, height], device=decoded.device)
    rows, columns = grid
    cell = ((decoded[:, 1] + 1.0) * 0.5 * rows).long().clamp(0, rows - 1) * columns + (
        (decoded[:, 0] + 1.0) * 0.5 * columns
    ).long().clamp(0, columns - 1)
    assigned = torch.full_like(index, -1)
    centres = []
    while len(centres) < max_regions:
        remaining = assigned < 0
        if not bool(remaining.any()):
            break
        votes = torch.bincount(cell[remaining], minlength=rows * columns)
        best = int(votes.argmax())
        centre = points[remaining][cell[remaining] == best][0]
        centres.append(centre)
        near = (points - centre).norm(dim=1) <= radius
        assigned = torch.where(remaining & near, len(centres) - 1, assigned)
    remaining = assigned < 0
    if bool(remaining.any()):
        nearest = torch.cdist(points[remaining], torch.stack(centres)).argmin(1)
        assigned[remaining] = nearest
    regions[index] = assigned
    return regions.reshape(height, width), len(centres)


def compute_group_entropy(probs: torch.Tensor, class_ids: tuple[int, ...]) -> torch.Tensor:
    """Entropy of `probs` renormalised over `class_ids`, divided by log(len(class_ids)).

    Args:
        probs: (N, K) or (N, K+1) class probabilities.
        class_ids: the group (stuff or things).

    Returns:
        (N,) float32 in [0, 1]; 0 for a group of one class.
    """
    ids = torch.tensor(class_ids, dtype=torch.long, device=probs.device)
    group = probs.index_select(1, ids)
    group = group / group.sum(1, keepdim=True).clamp_min(torch.finfo(group.dtype).tiny)
    entropy = -torch.xlogy(group, group).sum(1)
    return entropy / math.log(len(class_ids)) if len(class_ids) > 1 else entropy * 0.0


def mine_unknown_instances(
    mining_map: torch.Tensor,
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    thing_class_ids: tuple[int, ...],
    threshold: float = 0.5,
    min_area: int = 16,
    max_instances: int | None = None,
    iou_threshold: float = 0.3,
    entropy_rule: bool = True,
    mask_threshold: float = 0.5,
    connectivity: int = 8,
    cc_backend: str = 'opencv',
    cc_iterations: int = 500,
    regions: torch.Tensor | None = None,
    split_min_fraction: float = 0.1,
    num_regions: int | None = None,
) -> UnknownInstances:
    """Mine unknown-thing instances from the background (or anomaly) map (Section 6.3).

    Args:
        mining_map: (h, w) float map, high = background / anomalous (Eq. 15 or the anomaly map).
        class_probs: (Q, K+1) softmax class probabilities.
        mask_probs: (Q, h, w) sigmoid mask probabilities.
        thing_class_ids: known thing train ids; the other known ids are stuff.
        threshold: candidate pixels have `mining_map >= threshold`.
        min_area: minimum candidate size in pixels (mask resolution).
        max_instances: keep at most this many accepted instances, largest first; None = all.
        iou_threshold: minimum IoU between a candidate and its best query mask.
        entropy_rule: require E_S > E_T for the best query.
        mask_threshold: binarisation of the query masks for the IoU.
        connectivity: 4 or 8.
        cc_backend: 'opencv' or 'iterative' (`find_connected_components`).
        cc_iterations: steps of the iterative backend.
        regions: (h, w) int64 regions in [0, num_regions): CSL query regions, or the centroid
            regions of the instance head (`compute_centroid_regions`); given, components are
            split by them.
        split_min_fraction: see `split_by_regions`.
        num_regions: number of regions; None = Q (query regions).

    Returns:
        `UnknownInstances`, numbered 1..N by decreasing area.
    """
    num_queries = class_probs.shape[0]
    num_known = class_probs.shape[1] - 1
    device = mining_map.device
    stuff_ids = tuple(i for i in range(num_known) if i not in set(thing_class_ids))
    if not stuff_ids or not thing_class_ids:
        raise ValueError('unknown-instance mining needs both stuff and thing classes')

    labels, count = find_connected_components(
        mining_map >= threshold, connectivity, cc_backend, cc_iterations
    )
    if count and regions is not None:
        labels, count = split_by_regions(
            labels,
            regions,
            num_queries if num_regions is None else num_regions,
            split_min_fraction,
        )
    empty = UnknownInstances(
        torch.zeros_like(labels),
        torch.zeros(0, dtype=torch.float32, device=device),
        torch.zeros(0, dtype=torch.long, device=device),
    )
    if count == 0:
        return empty

    flat_labels = labels.reshape(-1)
    area = torch.bincount(flat_labels, minlength=count + 1)
    flat_masks = mask_probs.reshape(num_queries, -1)
    query_area = torch.count_nonzero(flat_masks >= mask_threshold, dim=1)[:, None]
    # Intersections only need the candidate pixels, usually a small part of the image.
    candidates = torch.nonzero(flat_labels).squeeze(1)
    inside = (flat_masks.index_select(1, candidates) >= mask_threshold).to(torch.float32)
    intersection = torch.zeros(num_queries, count + 1, dtype=torch.float32, device=device)
    intersection.index_add_(1, flat_labels.index_select(0, candidates), inside)
    union = (area[None] + query_area).to(torch.float32) - intersection
    iou = intersection / union.clamp_min(1.0)
    best_iou, best_query = iou.max(0)

    accepted = (area >= min_area) & (best_iou >= iou_threshold)
    if entropy_rule:
        best_probs = class_probs[best_query, :num_known]
        stuff_entropy = compute_group_entropy(best_probs, stuff_ids)
        thing_entropy = compute_group_entropy(best_probs, thing_class_ids)
        accepted &= stuff_entropy > thing_entropy
    accepted[0] = False

    # Number accepted candidates by decreasing area (ties: lower label first); one host copy.
    order = torch.argsort(torch.where(accepted, area, -1), descending=True, stable=True)
    num_accepted = int(accepted.sum())
    if max_instances is not None:
        num_accepted = min(num_accepted, max_instances)
    if num_accepted == 0:
        return empty
    chosen = order[:num_accepted]
    new_label = torch.zeros(count + 1, dtype=torch.long, device=device)
    new_label[chosen] = torch.arange(1, num_accepted + 1, device=device)
    sums = torch.zeros(count + 1, dtype=torch.float64, device=device)
    sums.index_add_(0, flat_labels, mining_map.reshape(-1).to(torch.float64))
    mean_map = (sums / area.clamp_min(1)).to(torch.float32)
    return UnknownInstances(
        label_map=new_label[labels],
        scores=mean_map[chosen].clamp(0.0, 1.0),
        query_indices=best_query[chosen],
    )
