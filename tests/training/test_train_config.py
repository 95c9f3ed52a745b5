"""Training config (YAML -> frozen dataclasses, overrides), schedule, sampler and CLI errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from m2a_training.cli.train import main
from m2a_training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    build_train_config,
    load_train_config,
    parse_override,
)
from m2a_training.data.sampler import IterationBatches
from m2a_training.schedule import PolyWithWarmup

from .train_helpers import CONFIG_DIR


def test_shipped_recipes_load_and_match_the_paper() -> None:
    stage1 = load_train_config(CONFIG_DIR / 'cityscapes_stage1.yaml')
    stage2 = load_train_config(CONFIG_DIR / 'cityscapes_stage2.yaml')
    assert (stage1.stage, stage2.stage) == (1, 2)
    assert (stage1.solver.lr, stage1.solver.batch_size, stage1.solver.max_iters) == (
        1e-4,
        16,
        90000,
    )
    assert (stage2.solver.lr, stage2.solver.batch_size, stage2.solver.max_iters) == (
        1e-5,
        8,
        5000,
    )
    for config in (stage1, stage2):
        assert config.solver.weight_decay == 0.05 and config.solver.poly_power == 0.9
        assert config.solver.grad_clip == 0.01 and config.solver.amp
        assert config.data.augment.crop_size == (380, 760)
        assert (config.loss.class_weight, config.loss.mask_weight, config.loss.dice_weight) == (
            2.0,
            5.0,
            5.0,
        )
        assert config.loss.num_points == 12544 and config.loss.no_object_weight == 0.1
    assert stage2.checkpoint.period == 500 and stage2.validation.period == 500
    assert stage2.validation.selection_metric == 'anomaly_auprc'
    assert stage2.validation.anomaly_sets
    assert stage2.loss.contrastive is not None and stage2.loss.contrastive.margin == 1.0
    assert stage2.data.anomaly_mix is not None and stage2.data.anomaly_mix.probability == 0.2
    assert stage2.data.anomaly_mix.pool_size == 300
    assert stage1.validation.selection_metric == 'miou'
    for name in ('synthetic_stage1.yaml', 'synthetic_stage2.yaml'):
        assert load_train_config(CONFIG_DIR / name).model.config in ('demo', None)


def test_overrides_are_typed_and_nested() -> None:
    config = load_train_config(
        CONFIG_DIR / 'cityscapes_stage1.yaml',
        [
            'solver.lr=1e-5',  # YAML reads this as a string; the float field converts it
            'data.augment.crop_size=[512, 1024]',
            'loss.contrastive.margin=paper',  # creates the section the file leaves null
            'data.anomaly_mix.probability=0.3',
            'validation.anomaly_sets=[{name: smiyc_ra21, root: smiyc/RoadAnomaly21}]',
            'checkpoint.keep_last=null',
            'validation.postprocess.refinement=off',  # YAML 1.1 would read a boolean
        ],
    )
    assert config.solver.lr == 1e-5 and isinstance(config.solver.lr, float)
    assert config.data.augment.crop_size == (512, 1024)
    assert config.loss.contrastive is not None and config.loss.contrastive.margin == 0.75
    assert config.loss.contrastive.variant == 'reference'
    assert config.data.anomaly_mix is not None and config.data.anomaly_mix.probability == 0.3
    assert config.validation.anomaly_sets[0].name == 'smiyc_ra21'
    assert config.checkpoint.keep_last is None
    assert config.validation.postprocess.refinement == 'off'
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.solver.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ('override', 'message'),
    [
        ('solver.lrr=1', "solver: unknown keys ['lrr']"),
        ('bogus=1', "unknown keys ['bogus']"),
        ('solver.lr=fast', 'solver.lr: expected a number'),
        ('solver.max_iters=1.5', 'solver.max_iters: expected an integer'),
        ('solver.amp=yes please', 'solver.amp: expected true or false'),
        ('solver.amp_dtype=float8', "solver.amp_dtype: must be one of ['float16', 'bfloat16']"),
        ('data.augment.crop_size=[1, 2, 3]', 'data.augment.crop_size: expected 2 values'),
        ('data.augment.mode=mosaic', 'data.augment.mode'),
        ('loss.contrastive.variant=hinge', 'loss.contrastive.variant: must be one of'),
        ('validation.selection_metric=anomaly_auprc', 'needs validation.anomaly_sets'),
        ('solver.batch_size=0', 'must be positive'),
        ('solver=3', 'solver: expected a mapping'),
        ('solver.lr.base=1', 'solver.lr is a value, not a section'),
        ('nodots', 'not of the form dotted.key=value'),
    ],
)
def test_bad_configs_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_train_config(CONFIG_DIR / 'cityscapes_stage1.yaml', [override])
    assert message in str(raised.value)


def test_stage2_without_outliers_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r'needs data\.anomaly_mix'):
        load_train_config(CONFIG_DIR / 'cityscapes_stage2.yaml', ['data.anomaly_mix=null'])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_train_config(CONFIG_DIR / 'cityscapes_stage2.yaml')
    path = tmp_path / 'resolved.yaml'
    path.write_text(config.to_yaml())
    assert load_train_config(path) == config
    assert build_train_config(yaml.safe_load(config.to_yaml())) == config
    assert build_train_config({}) == TrainConfig()


def test_parse_override_and_apply() -> None:
    assert parse_override('a.b=[1, 2]') == (['a', 'b'], [1, 2])
    assert parse_override('a=') == (['a'], None)
    data = {'a': {'b': 1}, 'c': None}
    assert apply_overrides(data, ['a.b=2', 'c.d=x']) == {'a': {'b': 2}, 'c': {'d': 'x'}}
    assert data == {'a': {'b': 1}, 'c': None}, 'the input must not change'


def test_poly_schedule_matches_detectron2() -> None:
    poly = PolyWithWarmup(max_iters=100, power=0.9)
    assert poly(0) == 1.0 and poly(100) == 0.0
    assert poly(50) == pytest.approx(0.5**0.9)
    warm = PolyWithWarmup(max_iters=100, power=0.9, warmup_iters=10, warmup_factor=0.001)
    assert warm(0) == pytest.approx(0.001)
    assert warm(5) == pytest.approx((0.001 * 0.5 + 0.5) * 0.95**0.9)
    assert warm(10) == pytest.approx(0.9**0.9)


class _Images:
    """A stand-in dataset: `(index, draw)` -> the key itself."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


def test_sampler_splits_global_batches_over_ranks_and_epochs() -> None:
    images = _Images(10)
    common = {'global_batch': 4, 'seed': 7, 'pixel_mean': (0,) * 3, 'pixel_std': (1,) * 3}
    single = IterationBatches(images, **common)  # type: ignore[arg-type]
    ranks = [
        IterationBatches(images, rank=r, world_size=2, **common)  # type: ignore[arg-type]
        for r in (0, 1)
    ]
    for iteration in range(6):
        keys = single.keys(iteration)
        assert ranks[0].keys(iteration) + ranks[1].keys(iteration) == keys
        assert [draw for _, draw in keys] == list(range(4 * iteration, 4 * iteration + 4))
    # Every epoch visits each image once, in a seeded order that changes between epochs.
    stream = [index for it in range(5) for index, _ in single.keys(it)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]
    again = IterationBatches(images, **common)  # type: ignore[arg-type]
    assert again.keys(3) == single.keys(3)
    np.testing.assert_array_equal(again.permutation(1), single.permutation(1))
    with pytest.raises(ValueError, match='does not split evenly'):
        IterationBatches(images, rank=0, world_size=3, **common)  # type: ignore[arg-type]


def test_cli_reports_config_errors_and_prints_resolved_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([str(CONFIG_DIR / 'synthetic_stage1.yaml'), 'solver.lrr=1']) == 1
    assert "unknown keys ['lrr']" in capsys.readouterr().err
    assert main([str(CONFIG_DIR / 'missing.yaml')]) == 1
    assert 'not found' in capsys.readouterr().err
    config = str(CONFIG_DIR / 'synthetic_stage1.yaml')
    assert main([config, 'seed=5', '--print-config', 'solver.lr=2e-3']) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed['seed'] == 5 and printed['model']['config'] == 'demo'
    assert printed['solver']['lr'] == 2e-3


def test_cli_reports_a_missing_dataset_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            str(CONFIG_DIR / 'synthetic_stage1.yaml'),
            f'data.root={tmp_path / "nowhere"}',
            'data.synthetic_world=null',
            f'output_dir={tmp_path / "out"}',
            'runtime.device=cpu',
            'logging.tensorboard=false',
        ]
    )
    assert code == 1
    log = (tmp_path / 'out' / 'log.txt').read_text()
    assert 'dataset at' in log and 'the dataset root does not exist' in log
