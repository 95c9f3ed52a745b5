"""Synthetic road world: a small Cityscapes-format dataset, a COCO outlier set and anomaly scenes.

Everything the training and evaluation code reads from real data, in miniature, so tests, the
demo and the replay tooling run on CPU in seconds:

    root/cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    root/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png     (Cityscapes label ids)
    root/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_instanceIds.png  (uint16, id·1000+k)
    root/coco/train2017/<id>.png, root/coco/annotations/instances_train2017.json
    root/anomaly_val/images/<stem>.png, root/anomaly_val/labels_masks/<stem>.png  (0/1/255)
    root/anomaly_val/labels_masks_full_frame/<stem>.png                           (0/1/255)
    root/anomaly_val/objects.json, root/manifest.json

The anomaly scenes are labelled like the road-obstacle benchmarks they imitate (Lost&Found,
Fishyscapes L&F, SMIYC RoadObstacle21): `labels_masks` marks the obstacle 1, the drivable road 0
and everything off the road void (255), so the scores are judged on the road, where the
question "is something on my lane" is asked. `labels_masks_full_frame` keeps every known pixel
as inlier 0 (the Anomaly-track view), for the full-frame figures.

Scenes are rendered with a pinhole camera over a flat ground plane: a straight road with lane
markings and crossings, sidewalks, building facades with windows, trees and hedges, a distant
tree line, sky with clouds, cars (rear and side faces) and people at consistent perspective
scale, cast shadows, a random ego-vehicle hood (void), per-class textures, exposure and colour
casts, and sensor noise. Colours overlap between classes (grey cars on grey roads, pavers as red
as brick), so shape, texture and position matter: learnable, not trivial.

The outlier set uses object types that never appear on the road (crates, balls, animals,
stars, suitcases) and a few probe images containing 'person' or 'car', which the AnomalyMix
pool must exclude. Anomaly scenes put objects on the road: by default both held-out types
(rocks, barrels, tyres, cones) and outlier-set types; `objects.json` records which.

Deterministic given the seed: image i of a split uses its own generator seeded from
(seed, split, i), so changing one count leaves the other splits' images unchanged.

Allowed dependencies: numpy, Pillow, pycocotools, m2a_perception.classes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from m2a_perception.classes import label_id_of

logger = logging.getLogger(__name__)

OUTLIER_KINDS = ('crate', 'ball', 'animal', 'star', 'suitcase')
# Object height in an outlier image, as a fraction of that image's height (96-160 px): the
# default draws COCO-like large objects; smaller values give road-obstacle-sized outliers.
DEFAULT_OUTLIER_OBJECT_SCALE = (0.25, 0.7)
HELD_OUT_KINDS = ('rock', 'barrel', 'tyre', 'cone')
# COCO category names of the probe objects; they overlap Cityscapes and must be filtered out.
PROBE_KINDS = ('person', 'car')
# Internal label of anomaly pixels while rendering; never written into a Cityscapes file.
_ANOMALY_LABEL = 250
_SPLIT_CODES = {'train': 1, 'val': 2, 'anomaly_val': 3, 'coco': 4}
_CITIES = {'train': ('synthtown', 'synthburg'), 'val': ('synthvale',)}

Point = tuple[float, float]
Primitive = tuple[list[Point], tuple[int, int, int]]


@dataclass(frozen=True)
class SyntheticWorld:
    """Where a generated world lives and how it was made."""

    root: Path
    cityscapes_root: Path
    coco_image_dir: Path
    coco_annotation_file: Path
    anomaly_root: Path
    num_train: int
    num_val: int
    num_anomaly_val: int
    num_outlier_images: int
    size: tuple[int, int]
    seed: int
    outlier_kinds: tuple[str, ...] = OUTLIER_KINDS
    anomaly_kinds: tuple[str, ...] = HELD_OUT_KINDS + OUTLIER_KINDS
    outlier_object_scale: tuple[float, float] = DEFAULT_OUTLIER_OBJECT_SCALE


@dataclass(frozen=True)
class _LabelIds:
    """Cityscapes label ids (not train ids) used by the world."""

    road: int
    sidewalk: int
    building: int
    vegetation: int
    sky: int
    person: int
    car: int
    ego_vehicle: int


def _label_ids() -> _LabelIds:
    return _LabelIds(
        road=label_id_of('road'),
        sidewalk=label_id_of('sidewalk'),
        building=label_id_of('building'),
        vegetation=label_id_of('vegetation'),
        sky=label_id_of('sky'),
        person=label_id_of('person'),
        car=label_id_of('car'),
        ego_vehicle=label_id_of('ego vehicle'),
    )


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at height `height` looking along +Z; image y grows downwards."""

    cx: float
    horizon: float
    focal: float
    height: float

    def project(self, x: float, up: float, z: float) -> Point:
        return (self.cx + self.focal * x / z, self.horizon + self.focal * (self.height - up) / z)

    def scale(self, z: float) -> float:
        """Pixels per world unit at depth z."""
        return self.focal / z


class _Canvas:
    """Colour image, label map and instance map painted by the same polygons."""

    def __init__(self, background: np.ndarray, label: int) -> None:
        height, width = background.shape[:2]
        self.rgb = Image.fromarray(background)
        self.label = Image.new('L', (width, height), label)
        self.instance = Image.new('I', (width, height), label)
        self._draw_rgb = ImageDraw.Draw(self.rgb)
        self._draw_label = ImageDraw.Draw(self.label)
        self._draw_instance = ImageDraw.Draw(self.instance)

    def fill(
        self,
        polygon: Sequence[Point],
        colour: tuple[int, int, int],
        label: int | None = None,
        instance: int | None = None,
    ) -> None:
        """Paint a polygon; `label`/`instance` None leaves those maps (texture details)."""
        points = [(float(x), float(y)) for x, y in polygon]
        if len(points) < 3:
            return
        self._draw_rgb.polygon(points, fill=colour)
        if label is not None:
            self._draw_label.polygon(points, fill=label)
            self._draw_instance.polygon(points, fill=label if instance is None else instance)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.asarray(self.rgb).copy(),
            np.asarray(self.label).copy(),
            np.asarray(self.instance).astype(np.int32),
        )


# ---------------------------------------------------------------- small helpers


def _colour(
    rng: np.random.Generator, base: Sequence[float], spread: float
) -> tuple[int, int, int]:
    values = np.asarray(base, dtype=np.float64) + rng.normal(0.0, spread, 3)
    return tuple(int(v) for v in np.clip(values, 0, 255))  # type: ignore[return-value]


def _shade(colour: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)  # type: ignore[return-value]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> list[Point]:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise: a coarse grid upsampled bilinearly."""
    height, width = size
    grid = rng.normal(0.0, 1.0, (max(2, height // cell + 2), max(2, width // cell + 2)))
    image = Image.fromarray(grid.astype(np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


# ---------------------------------------------------------------- object shapes (2-D)
# Each builder returns coloured polygons in image coordinates for an object standing with its
# bottom centre at (cx, bottom), `scale` pixels per world unit and world size `size`.


def _shape_crate(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    side = size * scale
    wood = _colour(
        rng, rng.choice([[150, 110, 60], [120, 90, 50], [170, 140, 90], [90, 110, 140]]), 12
    )
    depth = 0.3 * side
    front = _rect(cx - side / 2, bottom - side, cx + side / 2, bottom)
    top = [
        (cx - side / 2, bottom - side),
        (cx + side / 2, bottom - side),
        (cx + side / 2 + depth, bottom - side - depth),
        (cx - side / 2 + depth, bottom - side - depth),
    ]
    right = [
        (cx + side / 2, bottom),
        (cx + side / 2 + depth, bottom - depth),
        (cx + side / 2 + depth, bottom - side - depth),
        (cx + side / 2, bottom - side),
    ]
    shapes: list[Primitive] = [
        (front, wood),
        (top, _shade(wood, 1.25)),
        (right, _shade(wood, 0.7)),
    ]
    planks = int(rng.integers(2, 5))
    for k in range(1, planks):
        y = bottom - side * k / planks
        shapes.append(
            (_rect(cx - side / 2, y - max(0.6, side * 0.03), cx + side / 2, y), _shade(wood, 0.55))
        )
    return shapes


def _shape_ball(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    radius = size * scale / 2
    body = _colour(
        rng,
        rng.choice(
            [[220, 40, 40], [240, 200, 30], [40, 90, 220], [240, 240, 240], [250, 120, 20]]
        ),
        15,
    )
    band = _colour(rng, rng.choice([[255, 255, 255], [20, 20, 20], [30, 160, 60]]), 10)
    cy = bottom - radius
    return [
        (_ellipse(cx, cy, radius, radius, 24), body),
        (_ellipse(cx, cy, radius * 0.95, radius * 0.25, 24), band),
        (
            _ellipse(cx - radius * 0.35, cy - radius * 0.4, radius * 0.2, radius * 0.14, 12),
            _shade(body, 1.5),
        ),
    ]


def _shape_animal(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    unit = size * scale
    fur = _colour(
        rng, rng.choice([[120, 80, 40], [30, 30, 30], [230, 225, 210], [200, 140, 60]]), 15
    )
    direction = 1.0 if rng.uniform() < 0.5 else -1.0
    body_y = bottom - 0.65 * unit
    shapes: list[Primitive] = []
    for offset in (-0.45, -0.3, 0.3, 0.45):
        x = cx + offset * unit
        shapes.append((_rect(x - 0.05 * unit, body_y, x + 0.05 * unit, bottom), _shade(fur, 0.8)))
    shapes.append((_ellipse(cx, body_y, 0.6 * unit, 0.25 * unit, 20), fur))
    head_x = cx + direction * 0.62 * unit
    shapes.append((_ellipse(head_x, body_y - 0.3 * unit, 0.17 * unit, 0.15 * unit, 16), fur))
    shapes.append(
        (
            _ellipse(
                head_x + direction * 0.15 * unit,
                body_y - 0.27 * unit,
                0.08 * unit,
                0.05 * unit,
                10,
            ),
            _shade(fur, 0.6),
        )
    )
    tail_x = cx - direction * 0.6 * unit
    shapes.append(
        (
            [
                (tail_x, body_y),
                (tail_x - direction * 0.3 * unit, body_y - 0.3 * unit),
                (tail_x - direction * 0.25 * unit, body_y - 0.33 * unit),
                (tail_x, body_y - 0.06 * unit),
            ],
            fur,
        )
    )
    return shapes


def _shape_star(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    outer = size * scale / 2
    colour = _colour(
        rng, rng.choice([[250, 220, 0], [250, 60, 160], [60, 220, 220], [160, 60, 250]]), 10
    )
    cy = bottom - outer
    turn = rng.uniform(0, 2 * math.pi / 5)
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else outer * 0.45
        angle = turn + math.pi * k / 5 - math.pi / 2
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return [
        (points, colour),
        (_ellipse(cx, cy, outer * 0.2, outer * 0.2, 10), _shade(colour, 0.7)),
    ]


def _shape_suitcase(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    width, height = 0.7 * size * scale, size * scale * 0.9
    shell = _colour(
        rng, rng.choice([[40, 60, 120], [150, 30, 40], [60, 60, 60], [200, 160, 110]]), 12
    )
    top = bottom - height
    return [
        (_rect(cx - 0.1 * width, top - 0.15 * height, cx + 0.1 * width, top), _shade(shell, 0.5)),
        (_rect(cx - width / 2, top, cx + width / 2, bottom), shell),
        (
            _rect(cx - width / 2, top + 0.45 * height, cx + width / 2, top + 0.5 * height),
            _shade(shell, 0.6),
        ),
    ]


def _shape_rock(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    radius = size * scale / 2
    stone = _colour(
        rng, rng.choice([[110, 100, 90], [140, 130, 115], [90, 85, 80], [150, 120, 90]]), 10
    )
    n = 11
    points = []
    for k in range(n):
        angle = math.pi + math.pi * k / (n - 1)
        r = radius * rng.uniform(0.75, 1.15)
        points.append((cx + r * math.cos(angle) * 1.3, bottom + min(0.0, r * math.sin(angle))))
    return [
        (points, stone),
        (
            _ellipse(cx - radius * 0.3, bottom - radius * 0.6, radius * 0.3, radius * 0.15, 10),
            _shade(stone, 1.25),
        ),
    ]


def _shape_barrel(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    width, height = 0.6 * size * scale, size * scale
    body = _colour(
        rng, rng.choice([[30, 90, 160], [200, 60, 20], [60, 120, 50], [220, 200, 40]]), 12
    )
    top = bottom - height
    shapes: list[Primitive] = [
        (_rect(cx - width / 2, top, cx + width / 2, bottom), body),
        (_ellipse(cx, top, width / 2, width * 0.15, 16), _shade(body, 1.3)),
    ]
    for fraction in (0.3, 0.7):
        y = top + fraction * height
        shapes.append(
            (_rect(cx - width / 2, y - 0.04 * height, cx + width / 2, y), _shade(body, 0.6))
        )
    return shapes


def _shape_tyre(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    radius = size * scale / 2
    rubber = _colour(rng, [28, 28, 30], 5)
    cy = bottom - radius * 0.6
    return [
        (_ellipse(cx, cy, radius, radius * 0.6, 24), rubber),
        (
            _ellipse(cx, cy - radius * 0.1, radius * 0.45, radius * 0.25, 16),
            _colour(rng, [70, 70, 75], 8),
        ),
    ]


def _shape_cone(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    height = size * scale
    base = 0.5 * height
    orange = _colour(rng, [245, 110, 20], 12)
    shapes: list[Primitive] = [
        (_rect(cx - base / 2, bottom - 0.06 * height, cx + base / 2, bottom), _shade(orange, 0.5)),
        (
            [
                (cx - base * 0.4, bottom - 0.06 * height),
                (cx + base * 0.4, bottom - 0.06 * height),
                (cx + base * 0.06, bottom - height),
                (cx - base * 0.06, bottom - height),
            ],
            orange,
        ),
    ]
    stripe_y = bottom - 0.55 * height
    shapes.append(
        (
            _rect(cx - base * 0.22, stripe_y - 0.1 * height, cx + base * 0.22, stripe_y),
            (235, 235, 235),
        )
    )
    return shapes


def _shape_person(
    cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    height = size * scale
    skin = _colour(rng, rng.choice([[230, 190, 160], [190, 140, 100], [120, 80, 55]]), 8)
    shirt = _colour(rng, rng.uniform(20, 235, 3), 5)
    trousers = _colour(
        rng, rng.choice([[40, 50, 90], [30, 30, 30], [120, 110, 90], rng.uniform(20, 200, 3)]), 8
    )
    stride = rng.uniform(-0.08, 0.08) * height
    hip = bottom - 0.47 * height
    leg = 0.055 * height
    shapes: list[Primitive] = [
        (
            [
                (cx - leg * 1.6, hip),
                (cx - leg * 0.2, hip),
                (cx - leg * 0.4 + stride, bottom),
                (cx - leg * 1.7 + stride, bottom),
            ],
            trousers,
        ),
        (
            [
                (cx + leg * 0.2, hip),
                (cx + leg * 1.6, hip),
                (cx + leg * 1.7 - stride, bottom),
                (cx + leg * 0.4 - stride, bottom),
            ],
            trousers,
        ),
        (
            _rect(
                cx - 0.14 * height, bottom - 0.82 * height, cx + 0.14 * height, hip + 0.02 * height
            ),
            shirt,
        ),
        (
            _rect(
                cx - 0.2 * height, bottom - 0.8 * height, cx - 0.14 * height, bottom - 0.5 * height
            ),
            shirt,
        ),
        (
            _rect(
                cx + 0.14 * height, bottom - 0.8 * height, cx + 0.2 * height, bottom - 0.5 * height
            ),
            shirt,
        ),
        (
            _rect(
                cx - 0.035 * height,
                bottom - 0.86 * height,
                cx + 0.035 * height,
                bottom - 0.8 * height,
            ),
            skin,
        ),
        (_ellipse(cx, bottom - 0.92 * height, 0.065 * height, 0.08 * height, 14), skin),
    ]
    if rng.uniform() < 0.4:
        hair = _colour(rng, rng.choice([[30, 20, 10], [120, 80, 30], [200, 180, 120]]), 8)
        shapes.append(
            (_ellipse(cx, bottom - 0.96 * height, 0.068 * height, 0.045 * height, 12), hair)
        )
    return shapes


def _car_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    palette = [
        [200, 200, 205],
        [30, 30, 35],
        [120, 120, 125],
        [160, 20, 25],
        [20, 50, 130],
        [240, 240, 240],
        [90, 100, 80],
        [200, 170, 60],
        [60, 110, 160],
    ]
    return _colour(rng, palette[int(rng.integers(len(palette)))], 10)


def _shape_car_rear(
    cx: float,
    bottom: float,
    scale: float,
    size: float,
    rng: np.random.Generator,
    paint: tuple[int, int, int] | None = None,
) -> list[Primitive]:
    unit = size * scale / 1.8  # size is the car width in world units
    paint = _car_colour(rng) if paint is None else paint
    glass = _colour(rng, [40, 50, 60], 6)
    half = 0.9 * unit
    shapes: list[Primitive] = [
        (_rect(cx - half, bottom - 0.45 * unit, cx - half + 0.32 * unit, bottom), (20, 20, 20)),
        (_rect(cx + half - 0.32 * unit, bottom - 0.45 * unit, cx + half, bottom), (20, 20, 20)),
        (_rect(cx - half, bottom - 1.05 * unit, cx + half, bottom - 0.25 * unit), paint),
        (
            [
                (cx - 0.78 * unit, bottom - 1.05 * unit),
                (cx + 0.78 * unit, bottom - 1.05 * unit),
                (cx + 0.6 * unit, bottom - 1.5 * unit),
                (cx - 0.6 * unit, bottom - 1.5 * unit),
            ],
            paint,
        ),
        (
            [
                (cx - 0.68 * unit, bottom - 1.08 * unit),
                (cx + 0.68 * unit, bottom - 1.08 * unit),
                (cx + 0.55 * unit, bottom - 1.43 * unit),
                (cx - 0.55 * unit, bottom - 1.43 * unit),
            ],
            glass,
        ),
    ]
    light = (200, 20, 20) if rng.uniform() < 0.7 else (240, 240, 200)
    for side in (-1, 1):
        x = cx + side * 0.72 * unit
        shapes.append(
            (
                _rect(x - 0.13 * unit, bottom - 0.9 * unit, x + 0.13 * unit, bottom - 0.75 * unit),
                light,
            )
        )
    shapes.append(
        (
            _rect(cx - 0.25 * unit, bottom - 0.55 * unit, cx + 0.25 * unit, bottom - 0.42 * unit),
            (230, 230, 230),
        )
    )
    return shapes


_SHAPES = {
    'crate': _shape_crate,
    'ball': _shape_ball,
    'animal': _shape_animal,
    'star': _shape_star,
    'suitcase': _shape_suitcase,
    'rock': _shape_rock,
    'barrel': _shape_barrel,
    'tyre': _shape_tyre,
    'cone': _shape_cone,
    'person': _shape_person,
    'car': _shape_car_rear,
}


def _object_primitives(
    kind: str, cx: float, bottom: float, scale: float, size: float, rng: np.random.Generator
) -> list[Primitive]:
    if kind not in _SHAPES:
        raise ValueError(f'unknown object kind {kind!r}; known: {sorted(_SHAPES)}')
    return _SHAPES[kind](cx, bottom, scale, size, rng)


# ---------------------------------------------------------------- road scenes


@dataclass(frozen=True)
class _Layout:
    camera: _Camera
    road_half_width: float
    sidewalk_width: tuple[float, float]  # left, right

    def facade_x(self, side: int) -> float:
        width = self.sidewalk_width[0] if side < 0 else self.sidewalk_width[1]
        return side * (self.road_half_width + width)


@dataclass(frozen=True)
class _Placed:
    """A scene object waiting to be drawn back to front."""

    depth: float
    kind: str
    x: float
    size: float
    label: int | None
    instance: int | None


def _sample_layout(rng: np.random.Generator, size: tuple[int, int]) -> _Layout:
    height, width = size
    camera = _Camera(
        cx=width * rng.uniform(0.3, 0.7),
        horizon=height * rng.uniform(0.36, 0.5),
        focal=width * rng.uniform(0.5, 0.8),
        height=rng.uniform(1.3, 1.8),
    )
    return _Layout(
        camera=camera,
        road_half_width=rng.uniform(2.5, 5.5),
        sidewalk_width=(rng.uniform(1.5, 4.5), rng.uniform(1.5, 4.5)),
    )


def _sky_background(rng: np.random.Generator, size: tuple[int, int], horizon: float) -> np.ndarray:
    height, width = size
    kind = rng.choice(['clear', 'overcast', 'dusk'], p=[0.5, 0.3, 0.2])
    if kind == 'clear':
        top, bottom = _colour(rng, [60, 120, 200], 15), _colour(rng, [170, 200, 235], 10)
    elif kind == 'overcast':
        top, bottom = _colour(rng, [150, 155, 165], 12), _colour(rng, [200, 200, 205], 8)
    else:
        top, bottom = _colour(rng, [90, 80, 140], 15), _colour(rng, [240, 160, 100], 15)
    t = np.clip(np.arange(height, dtype=np.float32) / max(horizon, 1.0), 0, 1)[:, None, None]
    sky = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    sky = np.broadcast_to(sky, (height, width, 3)).copy()
    clouds = np.clip(_smooth_noise(rng, size, max(4, width // 8)) - rng.uniform(0.2, 1.0), 0, None)
    sky += clouds[..., None] * rng.uniform(20, 70)
    return np.clip(sky, 0, 255).astype(np.uint8)


def _draw_ground(
    canvas: _Canvas, layout: _Layout, ids: _LabelIds, rng: np.random.Generator
) -> None:
    camera = layout.camera
    near, far = 0.4, 500.0
    r = layout.road_half_width

    def quad(x0: float, x1: float, z0: float, z1: float) -> list[Point]:
        return [
            camera.project(x0, 0, z0),
            camera.project(x1, 0, z0),
            camera.project(x1, 0, z1),
            camera.project(x0, 0, z1),
        ]

    asphalt = _colour(rng, [rng.uniform(55, 125)] * 3, 6)
    canvas.fill(quad(-r, r, near, far), asphalt, ids.road)
    paver = _colour(
        rng,
        [[165, 165, 170], [170, 115, 100], [185, 175, 145], [120, 120, 125]][int(rng.integers(4))],
        8,
    )
    for side in (-1, 1):
        outer = layout.facade_x(side)
        canvas.fill(quad(side * r, outer, near, far), paver, ids.sidewalk)
        # Kerb stone and paver joints: texture only, still sidewalk.
        canvas.fill(quad(side * r, side * (r + 0.2), near, far), _shade(paver, 1.15), ids.sidewalk)
        for z in np.arange(1.0, 60.0, rng.uniform(1.0, 2.5)):
            canvas.fill(quad(side * (r + 0.2), outer, z, z + 0.08), _shade(paver, 0.8))
    marking = _colour(rng, [235, 235, 225] if rng.uniform() < 0.8 else [230, 200, 60], 6)
    dash, gap = rng.uniform(1.5, 3.0), rng.uniform(2.0, 5.0)
    offset = rng.uniform(-0.5, 0.5)
    for z in np.arange(1.0 + rng.uniform(0, gap), 120.0, dash + gap):
        canvas.fill(quad(offset - 0.08, offset + 0.08, z, z + dash), marking)
    if rng.uniform() < 0.5:
        for side in (-1, 1):
            edge = side * (r - 0.3)
            canvas.fill(quad(edge - 0.06, edge + 0.06, 1.0, 150.0), marking)
    if rng.uniform() < 0.3:
        z0 = rng.uniform(6, 25)
        for x in np.arange(-r + 0.3, r - 0.3, 0.9):
            canvas.fill(quad(x, x + 0.45, z0, z0 + 2.5), marking)


def _draw_facades(
    canvas: _Canvas, layout: _Layout, ids: _LabelIds, rng: np.random.Generator
) -> None:
    camera = layout.camera
    palette = [
        [150, 70, 55],
        [190, 175, 150],
        [130, 130, 135],
        [220, 215, 205],
        [90, 95, 110],
        [170, 150, 110],
        [110, 80, 70],
        [200, 185, 120],
        [120, 140, 150],
    ]
    for side in (-1, 1):
        x = layout.facade_x(side)
        z = 0.5
        end = rng.uniform(40, 160)
        while z < end:
            length = rng.uniform(5, 22)
            if rng.uniform() < 0.15:
                hedge = rng.uniform(0.8, 2.5)
                corners = [
                    camera.project(x, 0, z),
                    camera.project(x, 0, z + length),
                    camera.project(x, hedge, z + length),
                    camera.project(x, hedge, z),
                ]
                canvas.fill(corners, _colour(rng, [60, 110, 45], 15), ids.vegetation)
                z += length
                continue
            height = rng.uniform(4, 26)
            wall = _colour(rng, palette[int(rng.integers(len(palette)))], 12)
            corners = [
                camera.project(x, 0, z),
                camera.project(x, 0, z + length),
                camera.project(x, height, z + length),
                camera.project(x, height, z),
            ]
            canvas.fill(corners, wall, ids.building)
            _draw_windows(canvas, camera, x, z, length, height, wall, rng)
            z += length


def _draw_windows(
    canvas: _Canvas,
    camera: _Camera,
    x: float,
    z0: float,
    length: float,
    height: float,
    wall: tuple[int, int, int],
    rng: np.random.Generator,
) -> None:
    glass = _colour(rng, [[50, 60, 75], [120, 150, 170], [30, 30, 35]][int(rng.integers(3))], 10)
    pitch_z, pitch_y = rng.uniform(2.0, 3.5), rng.uniform(2.6, 3.4)
    size_z, size_y = pitch_z * rng.uniform(0.35, 0.6), pitch_y * rng.uniform(0.35, 0.55)
    for up in np.arange(1.2, height - size_y - 0.4, pitch_y):
        for z in np.arange(z0 + 0.6, z0 + length - size_z - 0.3, pitch_z):
            if camera.scale(z) * size_y < 1.5:
                continue
            corners = [
                camera.project(x, up, z),
                camera.project(x, up, z + size_z),
                camera.project(x, up + size_y, z + size_z),
                camera.project(x, up + size_y, z),
            ]
            canvas.fill(corners, glass if rng.uniform() < 0.9 else _shade(wall, 0.6))


def _draw_tree_line(
    canvas: _Canvas, layout: _Layout, ids: _LabelIds, rng: np.random.Generator, width: int
) -> None:
    horizon = layout.camera.horizon
    xs = np.linspace(-2, width + 2, 24)
    tops = horizon - rng.uniform(1.0, 8.0) - np.abs(_smooth_noise(rng, (1, 24), 3)[0]) * 3
    points = [(float(x), float(t)) for x, t in zip(xs, tops, strict=True)]
    points += [(width + 2.0, horizon + 1.0), (-2.0, horizon + 1.0)]
    canvas.fill(points, _colour(rng, [50, 90, 45], 12), ids.vegetation)


def _draw_tree(
    canvas: _Canvas, camera: _Camera, x: float, z: float, label: int, rng: np.random.Generator
) -> None:
    scale = camera.scale(z)
    trunk_height = rng.uniform(1.5, 3.0)
    radius = rng.uniform(1.2, 2.8)
    bx, by = camera.project(x, 0, z)
    trunk = _colour(rng, [90, 70, 50], 10)
    canvas.fill(
        _rect(bx - 0.15 * scale, by - trunk_height * scale, bx + 0.15 * scale, by), trunk, label
    )
    leaves = _colour(
        rng, [[50, 110, 40], [80, 130, 50], [40, 80, 35], [150, 140, 50]][int(rng.integers(4))], 12
    )
    cy = by - (trunk_height + radius * 0.8) * scale
    n = 18
    outline = []
    for k in range(n):
        angle = 2 * math.pi * k / n
        r = radius * scale * rng.uniform(0.8, 1.1)
        outline.append((bx + r * math.cos(angle), cy + 0.9 * r * math.sin(angle)))
    canvas.fill(outline, leaves, label)


def _draw_car(canvas: _Canvas, camera: _Camera, placed: _Placed, rng: np.random.Generator) -> None:
    paint = _car_colour(rng)
    length = rng.uniform(3.8, 4.8)
    z = placed.depth
    # The side face that the camera sees: the one facing the road centre line.
    side_x = placed.x - 0.9 if placed.x > 0 else placed.x + 0.9
    if abs(placed.x) > 0.9:
        body = [
            camera.project(side_x, 0.25, z),
            camera.project(side_x, 0.25, z + length),
            camera.project(side_x, 1.05, z + length),
            camera.project(side_x, 1.05, z),
        ]
        canvas.fill(body, _shade(paint, 0.75), placed.label, placed.instance)
        cabin = [
            camera.project(side_x, 1.05, z + 0.8),
            camera.project(side_x, 1.05, z + length - 0.6),
            camera.project(side_x, 1.5, z + length - 1.1),
            camera.project(side_x, 1.5, z + 1.2),
        ]
        canvas.fill(cabin, _shade(paint, 0.6), placed.label, placed.instance)
        for wheel_z in (z + 0.7, z + length - 1.0):
            wheel = [
                camera.project(side_x, 0.0, wheel_z),
                camera.project(side_x, 0.0, wheel_z + 0.6),
                camera.project(side_x, 0.5, wheel_z + 0.6),
                camera.project(side_x, 0.5, wheel_z),
            ]
            canvas.fill(wheel, (22, 22, 22), placed.label, placed.instance)
    bx, by = camera.project(placed.x, 0, z)
    for polygon, colour in _shape_car_rear(bx, by, camera.scale(z), 1.8, rng, paint):
        canvas.fill(polygon, colour, placed.label, placed.instance)


def _draw_placed(
    canvas: _Canvas, camera: _Camera, placed: _Placed, rng: np.random.Generator
) -> None:
    if placed.kind == 'tree':
        _draw_tree(canvas, camera, placed.x, placed.depth, placed.label or 0, rng)
    elif placed.kind == 'car':
        _draw_car(canvas, camera, placed, rng)
    else:
        bx, by = camera.project(placed.x, 0, placed.depth)
        for polygon, colour in _object_primitives(
            placed.kind, bx, by, camera.scale(placed.depth), placed.size, rng
        ):
            canvas.fill(polygon, colour, placed.label, placed.instance)


def _place_objects(
    layout: _Layout,
    ids: _LabelIds,
    rng: np.random.Generator,
    anomaly_kinds: Sequence[str],
    num_anomalies: int,
) -> list[_Placed]:
    r = layout.road_half_width
    placed: list[_Placed] = []
    occupied: list[tuple[float, float, float]] = []  # (x, z, radius) on the ground

    def free(x: float, z: float, radius: float) -> bool:
        return all(
            abs(x - ox) > radius + o_r or abs(z - oz) > radius + o_r + 1.5
            for ox, oz, o_r in occupied
        )

    for side in (-1, 1):
        outer = abs(layout.facade_x(side))
        for z in np.sort(rng.uniform(3, 70, int(rng.integers(0, 6)))):
            x = side * (r + (outer - r) * rng.uniform(0.55, 0.85))
            placed.append(_Placed(float(z), 'tree', float(x), 1.0, ids.vegetation, None))
    for k in range(int(rng.integers(0, 7))):
        for _ in range(10):
            parked = rng.uniform() < 0.35
            x = (rng.choice([-1, 1]) * (r - 1.1)) if parked else rng.uniform(-r + 1.1, r - 1.1)
            z = min(4.5 + rng.exponential(14.0), 60.0)
            if free(x, z, 2.4):
                occupied.append((x, z, 2.4))
                placed.append(_Placed(z, 'car', float(x), 1.8, ids.car, ids.car * 1000 + k))
                break
    for k in range(int(rng.integers(0, 7))):
        for _ in range(10):
            side = int(rng.choice([-1, 1]))
            outer = abs(layout.facade_x(side))
            if rng.uniform() < 0.15:
                x = rng.uniform(-r + 0.5, r - 0.5)
            else:
                x = side * rng.uniform(r + 0.4, outer - 0.3)
            z = min(3.5 + rng.exponential(10.0), 45.0)
            if free(x, z, 0.5):
                occupied.append((x, z, 0.5))
                placed.append(
                    _Placed(
                        z,
                        'person',
                        float(x),
                        rng.uniform(1.55, 1.95),
                        ids.person,
                        ids.person * 1000 + k,
                    )
                )
                break
    for _ in range(num_anomalies):
        for _ in range(20):
            x, z = rng.uniform(-r + 0.5, r - 0.5), rng.uniform(4.0, 30.0)
            size = rng.uniform(0.45, 1.6)
            if free(x, z, size):
                occupied.append((x, z, size))
                kind = str(anomaly_kinds[int(rng.integers(len(anomaly_kinds)))])
                placed.append(_Placed(z, kind, float(x), size, _ANOMALY_LABEL, _ANOMALY_LABEL))
                break
    return sorted(placed, key=lambda p: -p.depth)


def _apply_textures(
    rgb: np.ndarray, label: np.ndarray, ids: _LabelIds, rng: np.random.Generator
) -> np.ndarray:
    size = label.shape
    fine = np.zeros(256, np.float32)
    coarse = np.zeros(256, np.float32)
    for class_id, fine_amp, coarse_amp in (
        (ids.road, 7, 10),
        (ids.sidewalk, 6, 7),
        (ids.building, 5, 9),
        (ids.vegetation, 22, 14),
        (ids.sky, 1.5, 0),
        (ids.car, 3, 4),
        (ids.person, 4, 3),
        (_ANOMALY_LABEL, 6, 6),
        (ids.ego_vehicle, 2, 4),
    ):
        fine[class_id], coarse[class_id] = fine_amp, coarse_amp
    image = rgb.astype(np.float32)
    grain = rng.normal(0.0, 1.0, size).astype(np.float32)
    blotch = _smooth_noise(rng, size, 6)
    image += (fine[label] * grain + coarse[label] * blotch)[..., None]
    leaves = label == ids.vegetation
    image[leaves, 1] += 0.4 * fine[ids.vegetation] * _smooth_noise(rng, size, 2)[leaves]
    return image


def _apply_lighting(
    image: np.ndarray, label: np.ndarray, layout: _Layout, ids: _LabelIds, rng: np.random.Generator
) -> np.ndarray:
    height, width = label.shape
    if rng.uniform() < 0.5:
        side = int(rng.choice([-1, 1]))
        outer = layout.facade_x(side)
        inner = outer - side * rng.uniform(1.0, layout.road_half_width * 2)
        camera = layout.camera
        polygon = [
            camera.project(outer, 0, 0.4),
            camera.project(inner, 0, 0.4),
            camera.project(inner, 0, 300),
            camera.project(outer, 0, 300),
        ]
        shadow = Image.new('L', (width, height), 0)
        ImageDraw.Draw(shadow).polygon(polygon, fill=1)
        ground = np.isin(label, [ids.road, ids.sidewalk]) & (np.asarray(shadow) > 0)
        image[ground] *= rng.uniform(0.5, 0.8)
    gain = rng.uniform(0.6, 1.25)
    cast = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    image = image * gain * cast + rng.normal(0.0, rng.uniform(1.5, 5.0), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_hood(
    canvas: _Canvas, size: tuple[int, int], ids: _LabelIds, rng: np.random.Generator
) -> None:
    height, width = size
    rise = height * rng.uniform(0.05, 0.12)
    xs = np.linspace(-1, width + 1, 16)
    curve = [
        (float(x), float(height - rise * (1 - 0.6 * ((x - width / 2) / (width / 2)) ** 2)))
        for x in xs
    ]
    hood = [*curve, (width + 1.0, height + 1.0), (-1.0, height + 1.0)]
    canvas.fill(hood, _colour(rng, [35, 35, 40], 8), ids.ego_vehicle)


def render_road_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    *,
    anomaly_kinds: Sequence[str] = (),
    num_anomalies: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one road scene.

    Args:
        rng: the only source of randomness.
        size: (H, W) in pixels.
        anomaly_kinds: object kinds to put on the road (from `HELD_OUT_KINDS`/`OUTLIER_KINDS`).
        num_anomalies: how many to place (0 for inlier scenes).

    Returns:
        image (H, W, 3) uint8 RGB; label ids (H, W) uint8 (Cityscapes label ids, 250 on
        anomaly pixels); instance ids (H, W) int32 (label id·1000 + k for cars and people, the
        label id elsewhere).
    """
    ids = _label_ids()
    layout = _sample_layout(rng, size)
    canvas = _Canvas(_sky_background(rng, size, layout.camera.horizon), ids.sky)
    if rng.uniform() < 0.8:
        _draw_tree_line(canvas, layout, ids, rng, size[1])
    _draw_ground(canvas, layout, ids, rng)
    _draw_facades(canvas, layout, ids, rng)
    for placed in _place_objects(layout, ids, rng, anomaly_kinds, num_anomalies):
        _draw_placed(canvas, layout.camera, placed, rng)
    if rng.uniform() < 0.4:
        _draw_hood(canvas, size, ids, rng)
    rgb, label, instance = canvas.arrays()
    image = _apply_lighting(_apply_textures(rgb, label, ids, rng), label, layout, ids, rng)
    if rng.uniform() < 0.5:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.6)))
    return image, label, instance


# ---------------------------------------------------------------- outlier (COCO-format) images


def render_outlier_image(
    rng: np.random.Generator,
    kinds: Sequence[str],
    object_scale: tuple[float, float] = DEFAULT_OUTLIER_OBJECT_SCALE,
) -> tuple[np.ndarray, list[tuple[str, list[list[Point]]]]]:
    """Render a non-road image with 1–3 objects.

    Args:
        rng: the only source of randomness.
        kinds: object kinds to draw from.
        object_scale: range of an object's size as a fraction of the image height.

    Returns:
        image (h, w, 3) uint8 RGB and, per object, its kind and polygons (image coordinates).
    """
    height, width = int(rng.integers(96, 161)), int(rng.integers(128, 225))
    floor_y = height * rng.uniform(0.5, 0.8)
    wall, floor = (
        _colour(rng, rng.uniform(40, 220, 3), 5),
        _colour(rng, rng.uniform(40, 220, 3), 5),
    )
    background = np.empty((height, width, 3), np.float32)
    background[: int(floor_y)] = wall
    background[int(floor_y) :] = floor
    background += _smooth_noise(rng, (height, width), 8)[..., None] * rng.uniform(5, 25)
    canvas = _Canvas(np.clip(background, 0, 255).astype(np.uint8), 0)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        kind = str(kinds[int(rng.integers(len(kinds)))])
        scale = height * rng.uniform(*object_scale)
        cx = rng.uniform(0.2, 0.8) * width
        bottom = rng.uniform(max(floor_y, scale * 0.9), height - 2)
        primitives = _object_primitives(kind, cx, bottom, scale, 1.0, rng)
        for polygon, colour in primitives:
            canvas.fill(polygon, colour)
        clipped = [
            [(min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)) for x, y in poly]
            for poly, _ in primitives
        ]
        objects.append((kind, clipped))
    image = np.asarray(canvas.rgb).astype(np.float32)
    image += rng.normal(0.0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _coco_annotation(
    annotation_id: int,
    image_id: int,
    category_id: int,
    polygons: list[list[Point]],
    height: int,
    width: int,
) -> dict[str, object]:
    segmentation = [
        [round(v, 2) for point in poly for v in point] for poly in polygons if len(poly) >= 3
    ]
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return {
        'id': annotation_id,
        'image_id': image_id,
        'category_id': category_id,
        'segmentation': segmentation,
        'area': float(mask_utils.area(rle)),
        'bbox': [float(v) for v in mask_utils.toBbox(rle)],
        'iscrowd': 0,
    }


# ---------------------------------------------------------------- writers


def _rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def _write_cityscapes_split(
    root: Path, split: str, count: int, size: tuple[int, int], seed: int
) -> None:
    cities = _CITIES[split]
    for index in range(count):
        city = cities[index % len(cities)]
        stem = f'{city}_{index // 100:06d}_{index % 100:06d}'
        image, label, instance = render_road_scene(_rng_for(seed, split, index), size)
        _save_png(image, root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png')
        gt_dir = root / 'gtFine' / split / city
        _save_png(label, gt_dir / f'{stem}_gtFine_labelIds.png')
        _save_png(instance.astype(np.uint16), gt_dir / f'{stem}_gtFine_instanceIds.png')


# Folder of the anomaly scenes' labels with every known pixel inlier (see the module docstring).
FULL_FRAME_LABELS = 'labels_masks_full_frame'
# Bumped when the files a world holds change meaning; an older world is generated anew.
WORLD_FORMAT = 2


def anomaly_targets(label: np.ndarray, ids: _LabelIds) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) scene label ids -> (full-frame, road-only) 0/1/255 anomaly targets.

    Full frame: obstacle 1, every other pixel 0, the ego-vehicle hood void. Road only (the
    road-obstacle benchmarks' policy): obstacle 1, road 0, everything else void.
    """
    obstacle = label == _ANOMALY_LABEL
    full_frame = np.zeros(label.shape, np.uint8)
    full_frame[label == ids.ego_vehicle] = 255
    full_frame[obstacle] = 1
    road_only = np.full(label.shape, 255, np.uint8)
    road_only[label == ids.road] = 0
    road_only[obstacle] = 1
    return full_frame, road_only


def _write_anomaly_split(
    root: Path, count: int, size: tuple[int, int], seed: int, kinds: Sequence[str]
) -> None:
    ids = _label_ids()
    records = {}
    for index in range(count):
        rng = _rng_for(seed, 'anomaly_val', index)
        stem = f'anomaly_{index:06d}'
        for _ in range(5):  # re-draw the rare scene whose objects are all hidden
            image, label, _ = render_road_scene(
                rng, size, anomaly_kinds=kinds, num_anomalies=int(rng.integers(1, 4))
            )
            if int((label == _ANOMALY_LABEL).sum()) >= 12:
                break
        full_frame, road_only = anomaly_targets(label, ids)
        _save_png(image, root / 'images' / f'{stem}.png')
        _save_png(road_only, root / 'labels_masks' / f'{stem}.png')
        _save_png(full_frame, root / FULL_FRAME_LABELS / f'{stem}.png')
        records[stem] = {'anomaly_pixels': int((road_only == 1).sum())}
    (root / 'objects.json').write_text(
        json.dumps({'kinds': list(kinds), 'images': records}, indent=1, sort_keys=True)
    )


def _write_coco_set(
    image_dir: Path,
    annotation_file: Path,
    count: int,
    seed: int,
    kinds: Sequence[str],
    object_scale: tuple[float, float],
) -> None:
    categories = list(kinds) + list(PROBE_KINDS)
    category_ids = {name: k + 1 for k, name in enumerate(categories)}
    images, annotations = [], []
    for index in range(count):
        rng = _rng_for(seed, 'coco', index)
        # About one image in eight is a probe that the pool filter has to reject.
        pool = [*kinds, *PROBE_KINDS] if rng.uniform() < 0.125 else list(kinds)
        image, objects = render_outlier_image(rng, pool, object_scale)
        image_id = index + 1
        file_name = f'{image_id:012d}.png'
        _save_png(image, image_dir / file_name)
        height, width = image.shape[:2]
        images.append({'id': image_id, 'file_name': file_name, 'height': height, 'width': width})
        for kind, polygons in objects:
            annotations.append(
                _coco_annotation(
                    len(annotations) + 1, image_id, category_ids[kind], polygons, height, width
                )
            )
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        'info': {'description': 'm2a synthetic outlier objects (COCO format)'},
        'images': images,
        'annotations': annotations,
        'categories': [
            {'id': i, 'name': n, 'supercategory': 'object'} for n, i in category_ids.items()
        ],
    }
    annotation_file.write_text(json.dumps(payload))


def generate_synthetic_world(
    root: str | Path,
    *,
    num_train: int = 200,
    num_val: int = 50,
    num_anomaly_val: int = 40,
    num_outlier_images: int = 120,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    anomaly_kinds: Sequence[str] = HELD_OUT_KINDS + OUTLIER_KINDS,
    outlier_object_scale: tuple[float, float] = DEFAULT_OUTLIER_OBJECT_SCALE,
) -> SyntheticWorld:
    """Write the synthetic world under `root` (existing files of the same names are replaced).

    Args:
        root: output folder.
        num_train, num_val: Cityscapes-format train/val scenes.
        num_anomaly_val: anomaly validation scenes with objects on the road.
        num_outlier_images: COCO-format outlier images.
        size: (H, W) of the road scenes (multiples of 32 avoid padding in the model).
        seed: world seed.
        anomaly_kinds: object kinds used in the anomaly scenes.
        outlier_object_scale: (min, max) object size in the outlier images as a fraction of
            the image height; AnomalyMix pastes objects without rescaling, so this sets the
            scale of the stage-2 outliers relative to the road scenes.

    Returns:
        The paths and parameters of the world.
    """
    if min(num_train, num_val, num_anomaly_val, num_outlier_images) < 0:
        raise ValueError('image counts must be non-negative')
    if size[0] < 32 or size[1] < 32:
        raise ValueError(f'size must be at least 32x32, got {size}')
    unknown = sorted(set(anomaly_kinds) - set(_SHAPES) | set(anomaly_kinds) & set(PROBE_KINDS))
    if unknown or not anomaly_kinds:
        raise ValueError(f'anomaly_kinds must be non-empty unseen kinds; bad: {unknown}')
    low, high = outlier_object_scale
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            f'outlier_object_scale must satisfy 0 < min <= max <= 1, got {low}, {high}'
        )
    root = Path(root)
    world = SyntheticWorld(
        root=root,
        cityscapes_root=root / 'cityscapes',
        coco_image_dir=root / 'coco' / 'train2017',
        coco_annotation_file=root / 'coco' / 'annotations' / 'instances_train2017.json',
        anomaly_root=root / 'anomaly_val',
        num_train=num_train,
        num_val=num_val,
        num_anomaly_val=num_anomaly_val,
        num_outlier_images=num_outlier_images,
        size=(int(size[0]), int(size[1])),
        seed=seed,
        anomaly_kinds=tuple(anomaly_kinds),
        outlier_object_scale=(float(low), float(high)),
    )
    _write_cityscapes_split(world.cityscapes_root, 'train', num_train, world.size, seed)
    _write_cityscapes_split(world.cityscapes_root, 'val', num_val, world.size, seed)
    world.anomaly_root.mkdir(parents=True, exist_ok=True)
    _write_anomaly_split(
        world.anomaly_root, num_anomaly_val, world.size, seed, world.anomaly_kinds
    )
    world.coco_image_dir.mkdir(parents=True, exist_ok=True)
    _write_coco_set(
        world.coco_image_dir,
        world.coco_annotation_file,
        num_outlier_images,
        seed,
        world.outlier_kinds,
        world.outlier_object_scale,
    )
    manifest = {
        'format': WORLD_FORMAT,
        'seed': seed,
        'size': list(world.size),
        'num_train': num_train,
        'num_val': num_val,
        'num_anomaly_val': num_anomaly_val,
        'num_outlier_images': num_outlier_images,
        'outlier_kinds': list(world.outlier_kinds),
        'anomaly_kinds': list(world.anomaly_kinds),
        'probe_kinds': list(PROBE_KINDS),
        'outlier_object_scale': list(world.outlier_object_scale),
    }
    (root / 'manifest.json').write_text(json.dumps(manifest, indent=1, sort_keys=True))
    logger.info('synthetic world written to %s', root)
    return world


def synthetic_world_is_current(root: str | Path) -> bool:
    """True if `root` holds a world written in this version's format (see `WORLD_FORMAT`)."""
    manifest_path = Path(root) / 'manifest.json'
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get('format') == WORLD_FORMAT


def load_synthetic_world(root: str | Path) -> SyntheticWorld:
    """Describe an already generated world from its `manifest.json`.

    Raises:
        FileNotFoundError: `root` holds no manifest (the world was never generated there).
    """
    root = Path(root)
    manifest_path = root / 'manifest.json'
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f'no synthetic world at {root} (missing {manifest_path.name}); '
            'generate one with generate_synthetic_world()'
        )
    manifest = json.loads(manifest_path.read_text())
    return SyntheticWorld(
        root=root,
        cityscapes_root=root / 'cityscapes',
        coco_image_dir=root / 'coco' / 'train2017',
        coco_annotation_file=root / 'coco' / 'annotations' / 'instances_train2017.json',
        anomaly_root=root / 'anomaly_val',
        num_train=int(manifest['num_train']),
        num_val=int(manifest['num_val']),
        num_anomaly_val=int(manifest['num_anomaly_val']),
        num_outlier_images=int(manifest['num_outlier_images']),
        size=(int(manifest['size'][0]), int(manifest['size'][1])),
        seed=int(manifest['seed']),
        outlier_kinds=tuple(manifest['outlier_kinds']),
        anomaly_kinds=tuple(manifest['anomaly_kinds']),
        outlier_object_scale=tuple(  # type: ignore[arg-type]
            manifest.get('outlier_object_scale', DEFAULT_OUTLIER_OBJECT_SCALE)
        ),
    )
