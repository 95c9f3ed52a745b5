"""`m2a-compare-options`: the option table, the grouping that trains each model config once,
the unknown-instance ground truth, and the command end to end on a tiny world (twice, with the
same figures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from m2a_perception.config import load_model_config
from m2a_perception.metrics.panoptic import UNKNOWN_CATEGORY_ID, PanopticSegment
from m2a_perception.postprocess import PostprocessConfig
from m2a_training.cli.compare_options import main
from m2a_training.compare import (
    JSON_NAME,
    MARKDOWN_NAME,
    OPTIONS,
    ComparedOption,
    build_option_model_config,
    build_option_postprocess,
    group_by_model,
    select_options,
    unknown_instance_truth,
)
from m2a_training.data.synthetic import FULL_FRAME_LABELS

from .test_demo import SMALL_WORLD


def test_the_option_table_names_the_issue_options():
    by_name = {option.name: option for option in OPTIONS}
    assert next(iter(by_name)) == 'default' and by_name['default'].model == ()
    assert by_name['kan'].model == ('transformer_decoder.mask_embed=kan',)
    assert 'backbone.freeze_at=5' in by_name['dinov2_vit'].model
    assert 'backbone.freeze_at=0' in by_name['dinov2_vit_trained'].model
    assert 'RANDOM' in by_name['dinov2_vit'].note
    assert by_name['query_regions'].postprocess == ('mining_split=query_regions',)
    assert 'instance_head.kind=centroid' in by_name['centroid_head'].model
    assert by_name['centroid_head'].postprocess == ('mining_split=centroid_head',)
    assert by_name['centroid_head'].recipe == by_name['panoptic_targets'].recipe
    assert by_name['panoptic_targets'].recipe == ('data.target_mode=panoptic',)
    # demo_centroid.yaml is the centroid row's model, written as overrides on demo.yaml.
    centroid = build_option_model_config('demo', by_name['centroid_head'].model, 'centroid_head')
    assert (
        centroid['instance_head'] == load_model_config('demo_centroid').to_dict()['instance_head']
    )
    # Every option's model config and post-processing validate on the demo model.
    for option in OPTIONS:
        config = build_option_model_config('demo', option.model, option.name)
        assert config['name'] == f'demo_{option.name}'
        build_option_postprocess(PostprocessConfig(), option.postprocess)


def test_options_with_the_same_model_share_one_trained_model():
    extra = ComparedOption(
        'kan_split',
        model=('transformer_decoder.mask_embed=kan',),
        postprocess=('mining_split=query_regions',),
    )
    options = [*select_options(['default', 'kan', 'query_regions']), extra]
    groups = group_by_model(options)
    assert [(g.name, [o.name for o in g.options]) for g in groups] == [
        ('default', ['default', 'query_regions']),
        ('kan', ['kan', 'kan_split']),
    ]


def test_an_option_with_its_own_recipe_is_trained_on_its_own():
    # panoptic_targets has the default model but another recipe: never the default's model.
    options = select_options(['default', 'panoptic_targets', 'centroid_head', 'query_regions'])
    groups = group_by_model(options)
    assert [(g.name, [o.name for o in g.options], g.recipe) for g in groups] == [
        ('default', ['default', 'query_regions'], ()),
        ('panoptic_targets', ['panoptic_targets'], ('data.target_mode=panoptic',)),
        ('centroid_head', ['centroid_head'], ('data.target_mode=panoptic',)),
    ]


def test_bad_options_fail_in_one_sentence():
    with pytest.raises(ValueError, match=r"unknown options \['nope'\]; known: default, kan"):
        select_options(['default', 'nope'])
    with pytest.raises(ValueError, match='listed twice'):
        select_options(['kan', 'kan'])
    with pytest.raises(ValueError, match=r"option 'bad': .*mask_embed must be one of"):
        build_option_model_config('demo', ['transformer_decoder.mask_embed=cnn'], 'bad')
    with pytest.raises(ValueError, match='mining_split'):
        build_option_postprocess(PostprocessConfig(), ['mining_split=nope'])


def test_unknown_instance_truth_is_the_8_connected_obstacle_components():
    label = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1],
            [255, 255, 0, 0, 0],
        ],
        np.uint8,
    )
    ids, segments = unknown_instance_truth(label)
    # Two obstacles (the diagonal pair is one, 8-connected); known pixels are the unlisted id 3.
    assert ids.tolist() == [
        [1, 1, 3, 3, 3],
        [1, 3, 3, 3, 3],
        [3, 3, 3, 2, 3],
        [3, 3, 3, 3, 2],
        [0, 0, 3, 3, 3],
    ]
    assert segments == [
        PanopticSegment(1, UNKNOWN_CATEGORY_ID),
        PanopticSegment(2, UNKNOWN_CATEGORY_ID),
    ]


def _run(out, capsys) -> tuple[dict, str, str]:
    argv = ['--out', str(out), '--options', 'default,kan,query_regions', '--budget', '0.002']
    argv += ['--model-config', 'tiny']
    for override in SMALL_WORLD:
        argv += ['--set', override]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    return json.loads((out / JSON_NAME).read_text()), (out / MARKDOWN_NAME).read_text(), printed


def test_compare_end_to_end_trains_each_model_once_and_reruns_identically(tmp_path, capsys):
    report, table, printed = _run(tmp_path, capsys)
    assert [row['name'] for row in report['rows']] == ['default', 'kan', 'query_regions']
    assert report['not_run'] == []
    # Two models trained (3 + 1 iterations: 0.002 x 1500 and x 500), query_regions reuses one.
    assert sorted(report['models']) == ['default', 'kan']
    assert not (tmp_path / 'query_regions').exists()
    for model in report['models'].values():
        assert model['iterations'] == {'stage1': 3, 'stage2': 1}
        assert model['seeds'] == {'stage1': 0, 'stage2': 1}
    rows = {row['name']: row for row in report['rows']}
    assert rows['query_regions']['trained_as'] == 'default'
    assert rows['query_regions']['postprocess_overrides'] == ['mining_split=query_regions']
    assert rows['kan']['parameters'] > rows['default']['parameters']
    # Same evaluator as the trainer's final validation: the default row repeats its figures.
    validation = report['models']['default']['trainer_validation']
    for key in ('anomaly_auprc', 'anomaly_fpr95', 'miou'):
        assert rows['default'][key] == validation[key]
    # Every ground-truth obstacle is a TP or an FN.
    labels = sorted((tmp_path / 'world' / 'anomaly_val' / FULL_FRAME_LABELS).glob('*.png'))
    structure = np.ones((3, 3), bool)
    obstacles = sum(ndimage.label(np.asarray(Image.open(p)) == 1, structure)[1] for p in labels)
    assert len(labels) == 3 and obstacles > 0
    for row in report['rows']:
        unknown = row['unknown_instances']
        assert unknown['tp'] + unknown['fn'] == obstacles
        assert set(unknown) == {'pq', 'sq', 'rq', 'tp', 'fp', 'fn'}

    lines = table.splitlines()
    assert lines[0].startswith('| option | model overrides | post-processing | trained |')
    assert [line.split('|')[1].strip() for line in lines[2:5]] == [
        '`default`',
        '`kan`',
        '`query_regions`',
    ]
    assert '| `query_regions` | — | `mining_split=query_regions` | `default` model |' in table
    assert 'Budget: 0.002 × the demo recipes = 3 stage-1 + 1 stage-2 iterations' in table
    assert f'Command: `{report["command"]}`' in table
    assert report['command'].startswith('m2a-compare-options --out ')
    assert table in printed

    # The same command again: the same figures, digit for digit.
    again, again_table, _ = _run(tmp_path, capsys)
    assert again['rows'] == report['rows']
    assert again['models'] == report['models']
    assert again_table == table
