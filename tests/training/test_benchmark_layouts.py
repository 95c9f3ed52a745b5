"""`m2a-eval` on miniature copies of every released benchmark layout (issue 13), and the path
traversal refusal (issue 18 item 10). The copies are built by `benchmark_layouts`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m2a_training.cli.evaluate import main
from m2a_training.data.benchmarks import (
    BenchmarkDatasetError,
    fishyscapes_lost_and_found,
    fishyscapes_static,
)
from m2a_training.evaluate import parse_protocols
from tests.training import benchmark_layouts as layouts


def _eval(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(['--list-frames', '--out', str(tmp_path / 'out'), *args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _count_line(output: str, name: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith(f'dataset {name}:'))
    return int(line.split(': ')[1].split(' ')[0])


@pytest.fixture(scope='module')
def laf_test_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp('laf')
    return root, layouts.lost_and_found_test(root)


def test_ro21_validation_split_drops_smiyc_exclusions(tmp_path, capsys) -> None:
    root = tmp_path / 'dataset_ObstacleTrack'
    expected = layouts.smiyc_obstacle_track(root)
    rc, out = _eval(tmp_path, capsys, '--dataset', f'smiyc_ro21={root}')
    assert rc == 0, out
    assert _count_line(out, 'smiyc_ro21') == expected == 30


def test_ra21_labelled_frames(tmp_path, capsys) -> None:
    root = tmp_path / 'dataset_AnomalyTrack'
    expected = layouts.smiyc_anomaly_track(root)
    rc, out = _eval(tmp_path, capsys, '--dataset', f'smiyc_ra21={root}')
    assert (rc, _count_line(out, 'smiyc_ra21')) == (0, expected)


def test_lost_and_found_test_no_known_is_the_default(laf_test_root, tmp_path, capsys) -> None:
    root, expected = laf_test_root
    rc, out = _eval(tmp_path, capsys, '--dataset', f'lost_and_found={root}')
    assert (rc, _count_line(out, 'lost_and_found')) == (0, expected), out
    assert 'lost_and_found_testNoKnown' in out
    rc, out = _eval(
        tmp_path, capsys, '--dataset', f'lost_and_found={root}', '--lost-and-found-split', 'test'
    )
    assert (rc, _count_line(out, 'lost_and_found')) == (0, 1203)


def test_lost_and_found_no_known_needs_the_full_test_split(tmp_path, capsys) -> None:
    layouts.lost_and_found_small(tmp_path / 'laf', 'png')
    rc, out = _eval(tmp_path, capsys, '--dataset', f'lost_and_found={tmp_path / "laf"}')
    assert rc == 2
    assert 'full 1203-frame test split, found 3 frames' in out


@pytest.mark.parametrize('extension', ['webp', 'jpg'])
def test_lost_and_found_webp_and_jpg_images(tmp_path, capsys, extension) -> None:
    expected = layouts.lost_and_found_small(tmp_path / 'laf', extension)
    rc, out = _eval(
        tmp_path,
        capsys,
        '--dataset',
        f'lost_and_found={tmp_path / "laf"}',
        '--lost-and-found-split',
        'test',
    )
    assert (rc, _count_line(out, 'lost_and_found')) == (0, expected), out


def test_fishyscapes_laf_released_with_sibling_lost_and_found(tmp_path, capsys) -> None:
    layouts.lost_and_found_images(tmp_path / 'LostAndFound')
    expected = layouts.fishyscapes_laf_released(tmp_path / 'fishyscapes')
    rc, out = _eval(tmp_path, capsys, '--dataset', f'fs_lost_and_found={tmp_path / "fishyscapes"}')
    assert (rc, _count_line(out, 'fs_lost_and_found')) == (0, expected), out


def test_fishyscapes_laf_smiyc_arrangement_with_laf_root(tmp_path, capsys) -> None:
    layouts.lost_and_found_images(tmp_path / 'data' / 'laf')
    expected = layouts.fishyscapes_laf_smiyc(tmp_path / 'dataset_FishyLAF')
    rc, out = _eval(
        tmp_path,
        capsys,
        '--dataset',
        f'fs_lost_and_found={tmp_path / "dataset_FishyLAF"}',
        '--lost-and-found-root',
        str(tmp_path / 'data' / 'laf'),
    )
    assert (rc, _count_line(out, 'fs_lost_and_found')) == (0, expected), out
    frame = fishyscapes_lost_and_found(
        tmp_path / 'dataset_FishyLAF', laf_root=tmp_path / 'data' / 'laf'
    )[0]
    assert frame.name == '01_Hanns_Klemm_Str_45_000000_000080'  # a train-split image
    assert frame.label[0, :3].tolist() == [0, 1, 255]


def test_fishyscapes_laf_without_images_says_where_they_come_from(tmp_path, capsys) -> None:
    layouts.fishyscapes_laf_released(tmp_path / 'fishyscapes')
    rc, out = _eval(tmp_path, capsys, '--dataset', f'fs_lost_and_found={tmp_path / "fishyscapes"}')
    assert rc == 2
    assert '--lost-and-found-root' in out


def test_fishyscapes_static_released_overlays(tmp_path, capsys) -> None:
    images = layouts.cityscapes_val_images(tmp_path / 'cityscapes')
    expected = layouts.fishyscapes_static_released(tmp_path / 'fs_static', versions=(1, 2))
    spec = f'fs_static={tmp_path / "fs_static"}'
    rc, out = _eval(tmp_path, capsys, '--dataset', spec)
    assert rc == 2
    assert "['fs_val_v1', 'fs_val_v2']; pass version=N (--fs-static-version N)" in out
    rc, out = _eval(tmp_path, capsys, '--dataset', spec, '--fs-static-version', '2')
    assert (rc, _count_line(out, 'fs_static')) == (0, expected), out
    assert 'fishyscapes_static_v2' in out
    sample = fishyscapes_static(tmp_path / 'fs_static', 2)[0]
    base = images['frankfurt_000000_000294'].astype(int)
    half = layouts.WIDTH // 2
    # overlay +600 on the left half, -300 on the right, clipped as bdl-benchmark does
    assert np.array_equal(sample.image[:, :half], np.full_like(sample.image[:, :half], 255))
    assert np.array_equal(sample.image[:, half:], np.clip(base[:, half:] - 300, 0, 255))


def test_road_anomaly_from_parent_folder(tmp_path, capsys) -> None:
    expected = layouts.road_anomaly_jpg(tmp_path / 'RoadAnomaly')
    rc, out = _eval(tmp_path, capsys, '--dataset', f'road_anomaly={tmp_path / "RoadAnomaly"}')
    assert (rc, _count_line(out, 'road_anomaly')) == (0, expected), out


def test_road_anomaly_frame_list_leaving_the_root_is_refused(tmp_path, capsys) -> None:
    layouts.write_image(tmp_path / 'outside.png')
    names = ['animals01_Guiyang.jpg', '../../outside.png']
    layouts.road_anomaly_jpg(tmp_path / 'RoadAnomaly', frame_names=names)
    rc, out = _eval(tmp_path, capsys, '--dataset', f'road_anomaly={tmp_path / "RoadAnomaly"}')
    assert rc == 2
    assert 'names a path outside the dataset root, refused' in out
    assert '../../outside.png' in out
    assert 'Traceback' not in out


def test_symlinked_dataset_folder_is_followed(tmp_path, capsys) -> None:
    """A dataset folder linked from another disk is a user's choice, not a traversal."""
    layouts.smiyc_anomaly_track(tmp_path / 'disk' / 'dataset_AnomalyTrack')
    (tmp_path / 'datasets').mkdir()
    (tmp_path / 'datasets' / 'RA21').symlink_to(tmp_path / 'disk' / 'dataset_AnomalyTrack')
    rc, out = _eval(tmp_path, capsys, '--dataset', f'smiyc_ra21={tmp_path / "datasets" / "RA21"}')
    assert (rc, _count_line(out, 'smiyc_ra21')) == (0, 3)


def test_unknown_labels_error_names_file_and_value_void_keeps_going(tmp_path, capsys) -> None:
    root = tmp_path / 'dataset_AnomalyTrack'
    layouts.smiyc_anomaly_track(root)
    bad = root / 'labels_masks' / 'validation0001_labels_semantic.png'
    layouts.write_label(bad, (0, 1, 7))
    from m2a_training.data.benchmarks import smiyc_road_anomaly21

    with pytest.raises(BenchmarkDatasetError) as error:
        smiyc_road_anomaly21(root)[1]
    assert f'{bad}: unexpected label values [7]' in str(error.value)
    assert '--unknown-labels void' in str(error.value)
    label = smiyc_road_anomaly21(root, strict_labels=False)[1].label
    assert label[0, :3].tolist() == [0, 1, 255]
    rc, out = _eval(
        tmp_path, capsys, '--dataset', f'smiyc_ra21={root}', '--unknown-labels', 'void'
    )
    assert (rc, _count_line(out, 'smiyc_ra21')) == (0, 3)


def test_default_pixel_protocol_is_the_leaderboards() -> None:
    protocols = parse_protocols([], ['smiyc_ra21', 'smiyc_ro21', 'road_anomaly', 'fs_static'])
    assert {name: p.name for name, p in protocols.items()} == {
        'smiyc_ra21': 'smiyc_binned',
        'smiyc_ro21': 'smiyc_binned',
        'road_anomaly': 'smiyc',
        'fs_static': 'smiyc',
    }
    overridden = parse_protocols(['smiyc'], ['smiyc_ra21'])
    assert overridden['smiyc_ra21'].name == 'smiyc'


def test_fishyscapes_released_files_flat_in_the_folder(tmp_path, capsys) -> None:
    """Both zips hold their files at the top level (bdl-benchmark lists the extraction folder):
    extracted straight into the dataset folder, with the image trees inside it."""
    fishy = tmp_path / 'fishyscapes'
    expected = layouts.fishyscapes_laf_released(tmp_path / 'staging')
    fishy.mkdir()
    for path in (tmp_path / 'staging' / 'fishyscapes_lostandfound').iterdir():
        path.rename(fishy / path.name)
    layouts.lost_and_found_images(fishy)
    static = tmp_path / 'fs_static'
    count = layouts.fishyscapes_static_released(tmp_path / 'staging', versions=(3,))
    static.mkdir()
    for path in (tmp_path / 'staging' / 'fs_val_v3').iterdir():
        path.rename(static / path.name)
    layouts.cityscapes_val_images(static)
    rc, out = _eval(
        tmp_path,
        capsys,
        '--dataset',
        f'fs_lost_and_found={fishy}',
        '--dataset',
        f'fs_static={static}',
    )
    assert rc == 0, out
    assert (_count_line(out, 'fs_lost_and_found'), _count_line(out, 'fs_static')) == (
        expected,
        count,
    )


def test_installed_console_script_prints_the_count(tmp_path) -> None:
    root = tmp_path / 'RoadAnomaly'
    expected = layouts.road_anomaly_jpg(root)
    script = Path(sys.executable).with_name('m2a-eval')
    result = subprocess.run(
        [
            str(script),
            '--list-frames',
            '--out',
            str(tmp_path / 'out'),
            '--dataset',
            f'road_anomaly={root}',
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    base = root / 'RoadAnomaly_jpg'
    assert f'dataset road_anomaly: {expected} frames (road_anomaly in {base})' in result.stdout


def test_outside_roots_applies_dotdot_on_names(tmp_path) -> None:
    from m2a_training.data.benchmarks import outside_roots

    root = tmp_path / 'cityscapes'
    inside = root / 'leftImg8bit' / 'val' / 'a.png'
    escaping = root / 'leftImg8bit' / '..' / '..' / 'b.png'
    assert outside_roots([inside, escaping, None], [root]) == [escaping]
    assert outside_roots([escaping], [root, tmp_path]) == []
