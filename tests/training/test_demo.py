"""`m2a-demo` end to end with a handful of training steps: every promised output is written."""

from __future__ import annotations

import json

import torch

from m2a_perception.weights import load_checkpoint
from m2a_training.demo import main


def test_demo_writes_checkpoint_gallery_and_metrics(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code = main(
            [
                '--out',
                str(tmp_path),
                '--stage1-steps',
                '3',
                '--stage2-steps',
                '2',
                '--batch',
                '2',
                '--gallery',
                '1',
                # The replay through the node is covered by tests/replay.
                '--no-replay',
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    assert 'm2a demo summary' in printed and 'anomaly AuPRC' in printed
    _model, config = load_checkpoint(tmp_path / 'm2a_demo_tiny.safetensors')
    assert config.name == 'tiny'
    report = json.loads((tmp_path / 'metrics.json').read_text())
    for stage in ('after_stage1', 'after_stage2'):
        assert 0.0 <= report[stage]['anomaly_auprc'] <= 1.0
        assert report[stage]['anomaly_images'] > 0
    scene = next((tmp_path / 'gallery').iterdir())
    for name in (
        'input.png',
        'anomaly_heatmap.png',
        'semantic_overlay.png',
        'panoptic_overlay.png',
        'segments.json',
    ):
        assert (scene / name).is_file(), name
