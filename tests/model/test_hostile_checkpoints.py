"""Hostile checkpoints through the real `m2a-infer` CLI: refused before building the network.

A small file whose config asks for a huge network (15000 queries) is refused by the config's
size limits; a config inside the limits whose stored tensors do not fit is refused by a shape
check on a meta-device model, before any real allocation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.weights import read_checkpoint, save_checkpoint


def forged_checkpoint(tmp_path: Path, **decoder: int) -> Path:
    """The tiny model's real tensors with a model config edited to ask for `decoder` sizes."""
    torch.manual_seed(0)
    config = load_model_config('tiny')
    honest = save_checkpoint(
        tmp_path / 'honest.safetensors', build_model(config).state_dict(), config
    )
    contents = read_checkpoint(honest)
    config_dict = json.loads(contents.metadata['model_config'])
    config_dict['transformer_decoder'].update(decoder)
    metadata = {**contents.metadata, 'model_config': json.dumps(config_dict)}
    path = tmp_path / 'forged.safetensors'
    save_file(dict(contents.state_dict), str(path), metadata=metadata)
    return path


# m2a-infer's main, then its peak resident memory on stderr.
INFER_WITH_RSS = (
    'import resource, sys\n'
    'from m2a_perception.cli.infer import main\n'
    'rc = main(sys.argv[1:])\n'
    'peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
    'print("maxrss_kb", peak, file=sys.stderr)\n'
    'sys.exit(rc)\n'
)


def run_infer(tmp_path: Path, checkpoint: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    image = tmp_path / 'frame.png'
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(image)
    command = [
        sys.executable,
        '-c',
        INFER_WITH_RSS,
        str(image),
        '--checkpoint',
        str(checkpoint),
        '--out',
        str(tmp_path / 'out'),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    rss_line = [line for line in done.stderr.splitlines() if line.startswith('maxrss_kb')]
    return done, int(rss_line[0].split()[1]) if rss_line else -1


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line for line in done.stderr.splitlines() if line.strip() and not line.startswith('maxrss')
    ]


def test_checkpoint_asking_for_15000_queries_is_refused_by_the_config_limits(tmp_path):
    path = forged_checkpoint(tmp_path, num_queries=15000)
    assert path.stat().st_size < 1_000_000
    done, maxrss_kb = run_infer(tmp_path, path)
    assert done.returncode == 2, done.stderr
    lines = error_lines(done)
    assert len(lines) == 1 and 'Traceback' not in done.stderr, done.stderr
    assert f'{path}: invalid model config in metadata' in lines[0]
    assert (
        'transformer_decoder.num_queries = 15000 is outside the allowed range [0, 1000]'
        in (lines[0])
    )
    assert maxrss_kb < 1_500_000, maxrss_kb  # torch alone; never the 5 GB network


def test_tensors_that_do_not_fit_the_config_are_refused_before_building(tmp_path):
    path = forged_checkpoint(tmp_path, num_queries=1000, num_layers=32, ffn_dim=16384)
    done, maxrss_kb = run_infer(tmp_path, path)
    assert done.returncode == 2, done.stderr
    lines = error_lines(done)
    assert len(lines) == 1 and 'Traceback' not in done.stderr, done.stderr
    assert f'{path}: weights do not fit the model config' in lines[0]
    assert (
        'shape mismatches' in lines[0]
        and 'checkpoint (12, 24, 1, 1) vs model (1000, 2000, 1, 1)' in lines[0]
    )
    assert maxrss_kb < 1_500_000, maxrss_kb


def test_convert_checkpoint_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from m2a_perception.cli.convert_checkpoint import main as convert_main
    from m2a_perception.weights import checkpoint as checkpoint_module

    from ..disk import small_disk

    torch.manual_seed(0)
    source = tmp_path / 'official.pth'
    torch.save({'model': build_model(load_model_config('tiny')).state_dict()}, source)
    first = tmp_path / 'first.safetensors'
    assert convert_main([str(source), '--model-config', 'tiny', '--out', str(first)]) == 0
    size = first.stat().st_size
    with small_disk(tmp_path / 'disk', int(size * 1.5)) as disk:
        if disk is None:  # not root: a full disk as safetensors reports it

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(checkpoint_module, 'save_file', no_space)
        out = (disk or tmp_path) / 'model.safetensors'
        out.write_bytes(first.read_bytes())  # the previous good file
        capsys.readouterr()
        assert convert_main([str(source), '--model-config', 'tiny', '--out', str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f'error: no space left on {disk or ""}'), err
        assert f'while writing {out};' in err[0]
        assert out.read_bytes() == first.read_bytes()
        assert [p.name for p in out.parent.iterdir()] == ['model.safetensors']
