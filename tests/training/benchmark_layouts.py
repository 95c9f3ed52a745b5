"""Miniature copies of the benchmark datasets as released, built at test time.

Each builder writes the folder tree of the official download (or of the official evaluation
code) under a root, with the documented file names, label values and image formats, and
returns the frame count that the official split of that copy has. Frames are 8 x 16 pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 8, 16


def write_image(path: Path, seed: int = 0) -> np.ndarray:
    """A deterministic (8, 16, 3) uint8 RGB image in the format of `path`'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    options = {'lossless': True} if path.suffix == '.webp' else {}
    Image.fromarray(rgb).save(path, **options)
    return rgb


def write_label(path: Path, values: tuple[int, ...]) -> None:
    """An (8, 16) grey uint8 label PNG whose columns cycle through `values`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = np.array([values[i % len(values)] for i in range(WIDTH)], dtype=np.uint8)
    Image.fromarray(np.tile(columns, (HEIGHT, 1))).save(path)


def smiyc_obstacle_track(root: Path) -> int:
    """`dataset_ObstacleTrack`: 40 labelled `validation_N.webp` frames and 2 test frames
    without labels; `ObstacleTrack-validation` keeps 30 (drops validation_19, 21..29)."""
    for n in range(1, 41):
        write_image(root / 'images' / f'validation_{n}.webp', n)
        write_label(root / 'labels_masks' / f'validation_{n}_labels_semantic.png', (255, 0, 1))
    for name in ('curvy-street_000000', 'gravel_000001'):
        write_image(root / 'images' / f'{name}.webp')
    return 30


def smiyc_anomaly_track(root: Path) -> int:
    """`dataset_AnomalyTrack`: 3 labelled validation jpg frames and 2 unlabelled test frames."""
    for n in range(3):
        write_image(root / 'images' / f'validation{n:04d}.jpg', n)
        write_label(root / 'labels_masks' / f'validation{n:04d}_labels_semantic.png', (0, 1, 255))
    for n in range(2):
        write_image(root / 'images' / f'test{n:04d}.jpg')
    return 3


def _laf_frame(root: Path, split: str, sequence: str, frame: str, extension: str) -> None:
    write_image(root / 'leftImg8bit' / split / sequence / f'{frame}_leftImg8bit.{extension}')
    write_label(root / 'gtCoarse' / split / sequence / f'{frame}_gtCoarse_labelIds.png', (0, 1, 2))


def lost_and_found_test(root: Path) -> int:
    """The full 1203-frame Lost & Found test split (png): 20 frames in the sequences
    `LostAndFound-testNoKnown` drops (children, bicycles), the other 1183 in one sequence
    that holds all 17 invalid positions; testNoKnown keeps 1203 - 17 - 20 = 1166."""
    excluded = [
        ('01_Hanns_Klemm_Str_45', '000006'),
        ('01_Hanns_Klemm_Str_45', '000007'),
        ('10_Schlossberg_9', '000004'),
        ('15_Rechbergstr_Deckenpfronn', '000000'),
    ]
    for sequence, run in excluded:
        for t in range(5):
            _laf_frame(root, 'test', sequence, f'{sequence}_{run}_{t:06d}', 'png')
    for t in range(1183):
        _laf_frame(root, 'test', '04_Maurener_Weg_8', f'04_Maurener_Weg_8_000000_{t:06d}', 'png')
    return 1166


def lost_and_found_small(root: Path, extension: str) -> int:
    """A 3-frame Lost & Found test split with `extension` images (the `test` split: 3)."""
    for t in range(3):
        _laf_frame(
            root,
            'test',
            '02_Hanns_Klemm_Str_44',
            f'02_Hanns_Klemm_Str_44_000001_{t:06d}',
            extension,
        )
    return 3


FISHY_LAF_FRAMES = (
    ('train', '01_Hanns_Klemm_Str_45_000000_000080'),
    ('test', '04_Maurener_Weg_8_000000_000030'),
    ('test', '04_Maurener_Weg_8_000001_000120'),
)


def lost_and_found_images(laf_root: Path) -> None:
    """The Lost & Found images (train and test) of `FISHY_LAF_FRAMES`."""
    for split, frame in FISHY_LAF_FRAMES:
        sequence = frame[: -len('_000000_000000')]
        write_image(laf_root / 'leftImg8bit' / split / sequence / f'{frame}_leftImg8bit.png')


def fishyscapes_laf_released(root: Path) -> int:
    """`fishyscapes_lostandfound.zip` extracted into root: `<idx>_<frame>_labels.png` 0/1/255."""
    for index, (_, frame) in enumerate(FISHY_LAF_FRAMES):
        write_label(
            root / 'fishyscapes_lostandfound' / f'{index:04d}_{frame}_labels.png', (0, 1, 255)
        )
    return len(FISHY_LAF_FRAMES)


def fishyscapes_laf_smiyc(root: Path) -> int:
    """SMIYC's `FishyLAFAnomaly-val` arrangement: `labels/val/<frame>_fishy-labels.png`."""
    for _, frame in FISHY_LAF_FRAMES:
        write_label(root / 'labels' / 'val' / f'{frame}_fishy-labels.png', (0, 1, 255))
    return len(FISHY_LAF_FRAMES)


FS_STATIC_FRAMES = ('frankfurt_000000_000294', 'lindau_000001_000019')


def cityscapes_val_images(cityscapes_root: Path) -> dict[str, np.ndarray]:
    """Cityscapes `leftImg8bit/val/<city>/<frame>_leftImg8bit.png` of `FS_STATIC_FRAMES`."""
    images = {}
    for seed, frame in enumerate(FS_STATIC_FRAMES):
        city = frame.split('_')[0]
        path = cityscapes_root / 'leftImg8bit' / 'val' / city / f'{frame}_leftImg8bit.png'
        images[frame] = write_image(path, seed)
    return images


def fishyscapes_static_released(root: Path, versions: tuple[int, ...] = (1,)) -> int:
    """`fs_val_vN.zip` extracted into root/fs_val_vN: `<idx>_<frame>_labels.png` (0/1/255) and
    `<idx>_<frame>_rgb.npz` holding an int overlay `rgb` of -300..300 (clipped when added)."""
    for version in versions:
        for index, frame in enumerate(FS_STATIC_FRAMES):
            folder = root / f'fs_val_v{version}'
            write_label(folder / f'{index:04d}_{frame}_labels.png', (0, 1, 255))
            overlay = np.full((HEIGHT, WIDTH, 3), 0, dtype=np.int64)
            overlay[:, : WIDTH // 2] = 300 * version
            overlay[:, WIDTH // 2 :] = -300
            np.savez_compressed(folder / f'{index:04d}_{frame}_rgb.npz', rgb=overlay)
    return len(FS_STATIC_FRAMES)


def road_anomaly_jpg(parent: Path, frame_names: list[str] | None = None) -> int:
    """`RoadAnomaly_jpg.zip` extracted into `parent` (the `RoadAnomaly/` folder RbA documents):
    `RoadAnomaly_jpg/frame_list.json`, `frames/<stem>.jpg`, `frames/<stem>.labels/
    labels_semantic.png` with 0 background, 2 anomaly."""
    base = parent / 'RoadAnomaly_jpg'
    stems = ['animals01_Guiyang', 'cones02_Zurich', 'tractor01_Pulawy']
    for seed, stem in enumerate(stems):
        write_image(base / 'frames' / f'{stem}.jpg', seed)
        write_label(base / 'frames' / f'{stem}.labels' / 'labels_semantic.png', (0, 2))
    names = frame_names if frame_names is not None else [f'{stem}.jpg' for stem in stems]
    (base / 'frame_list.json').write_text(json.dumps(names))
    return len(stems)
