"""The metrics benchmark runs, and the metrics package keeps to its allowed dependencies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from m2a_perception.cli import metrics_bench


def test_bench_reports_frames_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    assert metrics_bench.main(['--frames', '2', '--size', '64x128', '--json', '-']) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) >= {'pixel_smiyc_exact_float16', 'smiyc_pass_pixel_plus_component'}
    assert all(value > 0 for value in results.values())


def test_bench_writes_the_json_file_and_prints_the_table(tmp_path, capsys) -> None:
    path = tmp_path / 'figures.json'
    assert metrics_bench.main(['--frames', '2', '--size', '64x128', '--json', str(path)]) == 0
    printed = capsys.readouterr().out
    assert 'frames of 64x128' in printed and f'wrote {path}' in printed
    assert set(json.loads(path.read_text())) >= {'pixel_smiyc_exact_float16'}


def test_bench_rejects_bad_size() -> None:
    with pytest.raises(SystemExit):
        metrics_bench.main(['--size', 'big'])


def test_metrics_import_no_forbidden_modules() -> None:
    code = (
        'import sys, m2a_perception.metrics, m2a_perception.metrics.bench\n'
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sklearn', 'rclpy', 'torchvision', 'm2a_training', 'cityscapesscripts'})\n"
        'print(bad)\n'
        'sys.exit(1 if bad else 0)\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
