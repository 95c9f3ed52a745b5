"""Cityscapes class metadata comes from the cityscapesscripts table."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import trainId2label

from m2a_perception import classes


def test_nineteen_classes_in_train_id_order_match_the_table():
    infos = classes.cityscapes_classes()
    assert [info.train_id for info in infos] == list(range(19))
    for info in infos:
        label = trainId2label[info.train_id]
        assert (info.name, info.is_thing, info.color) == (
            label.name,
            label.hasInstances,
            label.color,
        )


def test_things_and_stuff_split():
    assert classes.thing_train_ids() == tuple(range(11, 19))
    assert classes.stuff_train_ids() == tuple(range(11))
    assert classes.train_id_of('road') == 0
    assert classes.train_id_of('bicycle') == 18
    with pytest.raises(ValueError, match='not a Cityscapes evaluation class'):
        classes.train_id_of('giraffe')


def test_unknown_and_void_ids_and_palette():
    assert classes.UNKNOWN_ID == 19
    assert classes.VOID_ID == 255
    names = classes.class_names(include_unknown=True)
    assert len(names) == 20
    assert names[classes.UNKNOWN_ID] == 'unknown'
    palette = classes.semantic_palette()
    assert palette.shape == (256, 3)
    assert palette.dtype == np.uint8
    assert tuple(palette[0]) == (128, 64, 128)  # road
    assert tuple(palette[classes.UNKNOWN_ID]) == classes.UNKNOWN_COLOR
    assert tuple(palette[classes.VOID_ID]) == (0, 0, 0)


def test_label_ids_of_void_and_known_labels():
    assert classes.label_id_of('ego vehicle') == 1
    assert classes.label_id_of('road') == 7
    assert classes.label_id_of('license plate') == -1
    with pytest.raises(ValueError, match='not a Cityscapes label'):
        classes.label_id_of('giraffe')
