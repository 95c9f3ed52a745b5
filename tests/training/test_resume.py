"""Resume, atomic checkpoints and divergence handling of the trainer (tiny model, CPU, 1 thread).

Resume equivalence: 2N iterations in one go give the same losses and weights as N iterations,
a stop (or a kill in the middle of writing the next checkpoint), and a resume for N more.
"""

from __future__ import annotations

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
from m2a_training.losses import SetCriterion
from m2a_training.trainer import TrainingDivergedError, TrainingSummary, train

from .train_helpers import make_tiny_world, tiny_stage2_config

N = 3


pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_world(tmp_path_factory.mktemp('resume_world'))


@pytest.fixture(scope='module')
def uninterrupted(world: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingSummary:
    """2N iterations in one run (checkpoint and validation every N)."""
    output = tmp_path_factory.mktemp('uninterrupted')
    config = tiny_stage2_config(
        world, output, max_iters=2 * N, period=N, extra=['logging.tensorboard=true']
    )
    return train(config)


def final_weights(summary: TrainingSummary) -> dict[str, torch.Tensor]:
    assert summary.last_checkpoint is not None
    return read_checkpoint(summary.last_checkpoint / checkpointing.MODEL_FILE).state_dict


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


def test_stop_and_resume_reproduces_the_uninterrupted_run(
    world: Path, tmp_path: Path, uninterrupted: TrainingSummary
) -> None:
    config = tiny_stage2_config(world, tmp_path, max_iters=2 * N, period=N)
    first = train(config, stop_after=N)
    assert first.iteration == N
    assert first.last_checkpoint == tmp_path / 'checkpoints' / 'iter_0000003'

    second = train(config, resume=True)
    assert second.start_iteration == N and second.iteration == 2 * N
    losses = {**first.losses, **second.losses}
    assert sorted(losses) == list(range(1, 2 * N + 1))
    for iteration, loss in uninterrupted.losses.items():
        assert losses[iteration] == pytest.approx(loss, rel=1e-6), iteration
    assert_same_weights(final_weights(second), final_weights(uninterrupted))
    # The best-so-far survives the restart: same selection as the uninterrupted run.
    assert (second.best_iteration, second.best_score) == (
        uninterrupted.best_iteration,
        uninterrupted.best_score,
    )


def test_checkpoint_holds_plain_state_config_and_provenance(
    uninterrupted: TrainingSummary,
) -> None:
    folder = uninterrupted.last_checkpoint
    assert folder is not None
    # weights_only=True: tensors and plain containers only, nothing is unpickled as code.
    state = torch.load(folder / checkpointing.STATE_FILE, weights_only=True)
    assert state['iteration'] == 2 * N
    assert state['sampler'] == {'samples_seen': 2 * N * 2, 'global_batch': 2, 'seed': 1}
    assert {'optimizer', 'scheduler', 'scaler', 'rng', 'best'} <= state.keys()
    assert state['rng']['world_size'] == 1
    assert isinstance(state['rng']['ranks'][0]['torch'], torch.Tensor)
    assert state['optimizer']['state'], 'AdamW moments must be saved'
    meta = json.loads((folder / checkpointing.META_FILE).read_text())
    assert meta['seed'] == 1 and meta['iteration'] == 2 * N and meta['git_revision']
    assert 'seed: 1' in (folder / checkpointing.CONFIG_FILE).read_text()
    metadata = read_checkpoint(folder / checkpointing.MODEL_FILE).metadata
    assert metadata['iteration'] == str(2 * N) and 'contrastive:' in metadata['train_config']
    best = uninterrupted.output_dir / checkpointing.BEST_MODEL_FILE
    assert read_checkpoint(best).metadata['selection_metric'] == 'anomaly_auprc'
    records = [
        json.loads(line)
        for line in (uninterrupted.output_dir / 'metrics.jsonl').read_text().splitlines()
    ]
    assert [r['iteration'] for r in records if 'loss' in r] == list(range(1, 2 * N + 1))
    assert all('lr' in r and 'eta_seconds' in r for r in records if 'loss' in r)
    assert {r['iteration'] for r in records if 'validation' in r} == {N, 2 * N}


def test_tensorboard_has_losses_lr_and_score_histograms(uninterrupted: TrainingSummary) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(uninterrupted.output_dir / 'tensorboard')).Reload()
    scalars = set(events.Tags()['scalars'])
    assert {'train/loss', 'train/loss_ood', 'train/lr', 'val/anomaly_auprc', 'val/miou'} <= scalars
    histograms = set(events.Tags()['histograms'])
    prefix = 'val/fishyscapes_lost_and_found/anomaly_score'
    assert {f'{prefix}_in_distribution', f'{prefix}_ood'} <= histograms
    assert [e.step for e in events.Scalars('train/lr')] == list(range(1, 2 * N + 1))


_KILLER = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from m2a_training import checkpointing
    from m2a_training.config import load_train_config
    from m2a_training.trainer import train

    write = checkpointing.write_training_state
    calls = []

    def write_then_die(path, state):
        calls.append(path)
        write(path, state)
        if len(calls) == 2:
            # Half-written training state of the second checkpoint, then a hard kill.
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            os._exit(137)

    checkpointing.write_training_state = write_then_die
    train(load_train_config(sys.argv[1], sys.argv[2:]))
    """
)


def test_kill_during_checkpoint_write_keeps_the_last_good_one(
    world: Path, tmp_path: Path, uninterrupted: TrainingSummary
) -> None:
    output = tmp_path / 'run'
    config = tiny_stage2_config(world, output, max_iters=2 * N, period=N)
    config_file = tmp_path / 'config.yaml'
    config_file.write_text(config.to_yaml())
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    result = subprocess.run(
        [sys.executable, '-c', _KILLER, str(config_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 137, result.stderr[-3000:]
    root = output / 'checkpoints'
    leftovers = [p.name for p in root.iterdir() if p.name.startswith('.tmp-')]
    assert leftovers and all(name.startswith('.tmp-iter_0000006') for name in leftovers)
    assert not (root / 'iter_0000006').exists()
    assert checkpointing.find_last_checkpoint(root) == root / 'iter_0000003'
    assert checkpointing.load_training_state(root / 'iter_0000003')['iteration'] == N

    resumed = train(config, resume=True)
    assert resumed.start_iteration == N and resumed.iteration == 2 * N
    assert not [p for p in root.iterdir() if p.name.startswith('.tmp-')]
    for iteration in range(N + 1, 2 * N + 1):
        assert resumed.losses[iteration] == pytest.approx(
            uninterrupted.losses[iteration], rel=1e-6
        )
    assert_same_weights(final_weights(resumed), final_weights(uninterrupted))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = SetCriterion.forward
    calls = []

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            return type(output)(output.total * float('nan'), output.terms)
        return output

    monkeypatch.setattr(SetCriterion, 'forward', poisoned)
    config = tiny_stage2_config(
        world, tmp_path, max_iters=6, period=2, extra=['validation.period=0']
    )
    with pytest.raises(TrainingDivergedError) as raised:
        train(config)
    message = str(raised.value)
    assert 'iteration 3' in message and 'non-finite training loss' in message
    assert 'iter_0000002' in message and '--resume' in message
    root = tmp_path / 'checkpoints'
    assert checkpointing.find_last_checkpoint(root) == root / 'iter_0000002'
    assert sorted(p.name for p in root.iterdir()) == ['iter_0000002', 'last_checkpoint']
    read_checkpoint(root / 'iter_0000002' / checkpointing.MODEL_FILE)


def test_existing_run_is_not_overwritten_without_resume(
    world: Path, uninterrupted: TrainingSummary
) -> None:
    config = tiny_stage2_config(world, uninterrupted.output_dir, max_iters=2 * N, period=N)
    with pytest.raises(FileExistsError, match='--resume'):
        train(config)
    # Resuming a finished run is a no-op that reports the finished state.
    summary = train(config, resume=True)
    assert summary.start_iteration == summary.iteration == 2 * N


def test_stage1_starts_from_a_backbone_only_checkpoint(
    world: Path, tmp_path: Path, tiny_config
) -> None:  # type: ignore[no-untyped-def]
    from m2a_perception.model import build_model
    from m2a_perception.weights import save_checkpoint
    from m2a_training.config import ConfigError, load_train_config

    from .train_helpers import CONFIG_DIR, tiny_overrides

    torch.manual_seed(5)
    initial = build_model(tiny_config).state_dict()
    init = save_checkpoint(
        tmp_path / 'init.safetensors', initial, tiny_config, weights_state='backbone_only'
    )
    overrides = tiny_overrides(world, tmp_path / 'run', max_iters=1, period=1)
    overrides += [f'model.init_checkpoint={init}', 'model.config=null', 'validation.period=0']
    summary = train(load_train_config(CONFIG_DIR / 'synthetic_stage1.yaml', overrides))
    assert summary.iteration == 1
    trained = final_weights(summary)
    # The frozen backbone is the checkpoint's; the heads moved.
    backbone = [k for k in initial if k.startswith('backbone.')]
    assert all(torch.equal(trained[k], initial[k]) for k in backbone)
    assert not torch.equal(
        trained['sem_seg_head.predictor.class_embed.weight'],
        initial['sem_seg_head.predictor.class_embed.weight'],
    )
    mismatch = load_train_config(
        CONFIG_DIR / 'synthetic_stage1.yaml',
        [*overrides, 'model.config=cityscapes_r50_gma', f'output_dir={tmp_path / "other"}'],
    )
    with pytest.raises(ConfigError, match='differs from the config stored'):
        train(mismatch)
