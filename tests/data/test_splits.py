"""Class lists and weak-shot splits (spec §7)."""
import pytest

from simformer.data.datasets.splits import (
    ADE20K_150_CLASSES,
    ADE20K_150_NOVEL_IDS,
    ADE20K_EXCLUDED_STEMS,
    COCO_STUFF_10K_EXCLUDED_STEMS,
    COCO_STUFF_10K_NOVEL_IDS,
    COCO_STUFF_10K_RANDP,
    COCO_STUFF_171_CLASSES,
    COCO_STUFF_171_COCO_IDS,
    base_ids,
)

# Explicit lists of spec §7.3, written out independently of the randp derivation in splits.py.
SPEC_COCO_SPLIT4 = [
    3, 12, 13, 14, 17, 24, 25, 26, 27, 33, 37, 40, 46, 50, 57, 58, 61, 69, 76, 83, 87, 89, 92, 100,
    102, 106, 109, 110, 112, 113, 114, 121, 128, 133, 134, 137, 144, 149, 151, 161, 162, 164, 170,
]
SPEC_COCO_ADDED = {
    5: [0, 31, 47, 66, 82, 91, 111, 120],
    6: [9, 28, 39, 45, 131, 136, 157, 163],
    7: [1, 4, 19, 42, 49, 68, 130, 150, 155],
    8: [7, 48, 71, 75, 85, 96, 116, 132],
    9: [54, 78, 93, 95, 105, 115, 139, 156, 159],
}
SPEC_COCO_SPLIT1_NAMES = (
    "motorcycle, train, fire hydrant, stop sign, sheep, cow, handbag, tie, snowboard, baseball bat, "
    "surfboard, tennis racket, wine glass, cup, broccoli, pizza, cake, bed, toilet, microwave, scissors, "
    "branch, bush, ceiling-other, cloth, clouds, floor-other, floor-wood, fog, grass, gravel, leaves, "
    "metal, paper, pillow, plastic, salad, skyscraper, textile-other, towel, wall-brick, water-other, "
    "window-other"
).split(", ")
SPEC_ADE_SPLIT1_SHORT_NAMES = (
    "building, floor, road, window, cabinet, earth, plant, painting, sofa, field, desk, rail, box, "
    "refrigerator, grandstand, pool table, book, countertop, stove, computer, bar, towel, clothes, pole, "
    "bottle, stage, van, ship, stool, falls, ball, step, animal, bicycle, screen, traffic light, glass, flag"
).split(", ")


def test_class_lists():
    assert len(COCO_STUFF_171_CLASSES) == len(set(COCO_STUFF_171_CLASSES)) == 171
    assert len(ADE20K_150_CLASSES) == len(set(ADE20K_150_CLASSES)) == 150
    assert COCO_STUFF_171_CLASSES[:3] == ("person", "bicycle", "car")
    assert COCO_STUFF_171_CLASSES[80] == "banner" and COCO_STUFF_171_CLASSES[170] == "wood"
    assert ADE20K_150_CLASSES[6] == "road, route"
    assert ADE20K_150_CLASSES[8] == "window "  # trailing space kept, as in SceneParse150
    assert ADE20K_150_CLASSES[149] == "flag"


def test_coco_ids_table_is_a_bijection_onto_train_ids():
    ids = COCO_STUFF_171_COCO_IDS
    assert len(ids) == len(set(ids)) == 171
    assert list(ids) == sorted(ids)
    unused = sorted(set(range(1, 183)) - set(ids))
    assert unused == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
    assert ids[3] == 4 and ids[11] == 13 and ids[80] == 92 and ids[170] == 182


@pytest.mark.parametrize(
    "table,num_classes,counts",
    [
        (COCO_STUFF_10K_NOVEL_IDS, 171, {1: 43, 2: 43, 3: 43, 4: 43, 5: 51, 6: 59, 7: 68, 8: 76, 9: 85}),
        (ADE20K_150_NOVEL_IDS, 150, {1: 38, 2: 38, 3: 38, 4: 38}),
    ],
)
def test_split_sizes_and_ranges(table, num_classes, counts):
    assert {k: len(v) for k, v in table.items()} == counts
    for novel in table.values():
        assert len(set(novel)) == len(novel)
        assert all(0 <= c < num_classes for c in novel)
        assert len(base_ids(num_classes, novel)) == num_classes - len(novel)


def test_coco_randp_splits_match_the_explicit_spec_lists():
    assert len(COCO_STUFF_10K_RANDP) == len(set(COCO_STUFF_10K_RANDP)) == 100
    expected = sorted(SPEC_COCO_SPLIT4)
    assert list(COCO_STUFF_10K_NOVEL_IDS[4]) == expected
    for k in range(5, 10):
        expected = sorted(expected + SPEC_COCO_ADDED[k])
        assert list(COCO_STUFF_10K_NOVEL_IDS[k]) == expected
    for k in range(4, 9):
        assert set(COCO_STUFF_10K_NOVEL_IDS[k]) < set(COCO_STUFF_10K_NOVEL_IDS[k + 1])


def test_split_ids_and_names():
    coco1 = COCO_STUFF_10K_NOVEL_IDS[1]
    assert 3 in coco1 and COCO_STUFF_171_CLASSES[3] == "motorcycle"
    assert 169 in coco1 and COCO_STUFF_171_CLASSES[169] == "window-other"
    assert [COCO_STUFF_171_CLASSES[c] for c in coco1] == SPEC_COCO_SPLIT1_NAMES
    ade1 = ADE20K_150_NOVEL_IDS[1]
    assert 1 in ade1 and ADE20K_150_CLASSES[1] == "building"
    assert 149 in ade1 and ADE20K_150_CLASSES[149] == "flag"
    assert [ADE20K_150_CLASSES[c].split(",")[0].strip() for c in ade1] == SPEC_ADE_SPLIT1_SHORT_NAMES
    assert 0 in COCO_STUFF_10K_NOVEL_IDS[3] and 0 in ADE20K_150_NOVEL_IDS[2]


def test_base_ids():
    assert base_ids(5, [1, 3]) == (0, 2, 4)
    assert base_ids(3, []) == (0, 1, 2)
    with pytest.raises(ValueError, match="outside"):
        base_ids(5, [5])
    with pytest.raises(ValueError, match="duplicates"):
        base_ids(5, [1, 1])


def test_excluded_stems():
    assert len(COCO_STUFF_10K_EXCLUDED_STEMS) == 7
    assert "COCO_train2014_000000003518" in COCO_STUFF_10K_EXCLUDED_STEMS
    assert len(ADE20K_EXCLUDED_STEMS) == 16
    assert "ADE_train_00005149" in ADE20K_EXCLUDED_STEMS
