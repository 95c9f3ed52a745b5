"""`torchrun --nproc_per_node 2` on CPU (gloo): DDP training gives one coherent checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from m2a_perception.weights import read_checkpoint
from m2a_training import checkpointing
from m2a_training.trainer import train

from .train_helpers import make_tiny_world, tiny_stage2_config

_DRIVER = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from m2a_training.config import load_train_config
    from m2a_training.distributed import init_distributed, shutdown_distributed
    from m2a_training.trainer import Trainer

    config = load_train_config(sys.argv[1])
    context = init_distributed('cpu')
    try:
        trainer = Trainer(config, context)
        summary = trainer.run()
        state = trainer.model.state_dict()
        weights = torch.cat([state[k].detach().flatten() for k in sorted(state)])
        report = {
            'rank': context.rank,
            'world_size': context.world_size,
            'backend': torch.distributed.get_backend(),
            'losses': summary.losses,
            'validations': summary.validations,
            'digest': hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
        }
        Path(sys.argv[2], f'rank{context.rank}.json').write_text(json.dumps(report))
    finally:
        shutdown_distributed(context)
    """
)


pytestmark = pytest.mark.usefixtures('single_thread')


def digest(state: dict[str, torch.Tensor]) -> str:
    weights = torch.cat([state[k].detach().flatten() for k in sorted(state)])
    return hashlib.sha256(weights.numpy().tobytes()).hexdigest()


@pytest.mark.xdist_group('torchrun')  # with test_contrastive_world_size.py: one gloo job at a time
def test_torchrun_two_cpu_ranks_train_to_one_coherent_checkpoint(tmp_path: Path) -> None:
    world = make_tiny_world(tmp_path / 'world')
    output = tmp_path / 'run'
    # Global batch 2 = one image per rank; a data-loader worker per rank.
    config = tiny_stage2_config(world, output, max_iters=4, period=2, extra=['data.num_workers=1'])
    config_file = tmp_path / 'config.yaml'
    config_file.write_text(config.to_yaml())
    driver = tmp_path / 'driver.py'
    driver.write_text(_DRIVER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',
        '--nproc_per_node',
        '2',
        str(driver),
        str(config_file),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    reports = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert [(r['world_size'], r['backend']) for r in reports] == [(2, 'gloo'), (2, 'gloo')]
    # DDP keeps the replicas identical; each rank saw its own half of every batch.
    assert reports[0]['digest'] == reports[1]['digest']
    assert reports[0]['losses'] != reports[1]['losses']
    # Validation is sharded and merged: every rank reports the same metrics.
    assert reports[0]['validations'] == reports[1]['validations']
    assert set(reports[0]['validations']) == {'2', '4'}

    root = output / 'checkpoints'
    assert sorted(p.name for p in root.iterdir()) == [
        'iter_0000002',
        'iter_0000004',
        'last_checkpoint',
    ]
    folder = checkpointing.find_last_checkpoint(root)
    assert folder == root / 'iter_0000004'
    assert (
        digest(read_checkpoint(folder / checkpointing.MODEL_FILE).state_dict)
        == (reports[0]['digest'])
    )
    state = checkpointing.load_training_state(folder)
    assert state['rng']['world_size'] == 2 and len(state['rng']['ranks']) == 2
    assert state['sampler']['samples_seen'] == 4 * 2
    meta = json.loads((folder / checkpointing.META_FILE).read_text())
    assert meta['world_size'] == 2

    # The same run continues in one process (same global batch, same sample stream).
    longer = tiny_stage2_config(world, output, max_iters=6, period=2)
    summary = train(longer, resume=True)
    assert summary.start_iteration == 4 and summary.iteration == 6
    assert checkpointing.find_last_checkpoint(root) == root / 'iter_0000006'
