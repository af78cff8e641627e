"""Class lists and weak-shot base/novel splits (data only; spec §7).

Every id here is a *train id*: the value stored in the converted label PNG and, because the dataset
id -> contiguous id mapping is the identity for both datasets, also the classifier index. 255 is the
ignore label. Everything not listed as novel in a split is base (see :func:`base_ids`).
"""
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

__all__ = [
    "COCO_STUFF_171_CLASSES",
    "COCO_STUFF_171_COCO_IDS",
    "COCO_STUFF_10K_RANDP",
    "COCO_STUFF_10K_NOVEL_IDS",
    "COCO_STUFF_10K_EXCLUDED_STEMS",
    "ADE20K_150_CLASSES",
    "ADE20K_150_NOVEL_IDS",
    "ADE20K_EXCLUDED_STEMS",
    "base_ids",
]

# ------------------------------------------------------------------------------------------------
# COCO-Stuff-10K (171 classes): 0-79 the COCO things in COCO order, 80-170 the stuff classes in
# alphabetical order (§7.1).
# ------------------------------------------------------------------------------------------------
# fmt: off
COCO_STUFF_171_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table",
    "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road",
    "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)

# Original COCO category id (the value of ``S`` in the COCO-Stuff-10K v1.1 .mat files) of each train
# id. The 11 COCO ids that COCO-Stuff never uses (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91) are absent.
COCO_STUFF_171_COCO_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
    58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
    88, 89, 90, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110,
    111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130,
    131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150,
    151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170,
    171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182,
)

# The fixed 100-element permutation ``randp`` (§7.3): split 4 = randp[:43], split k (5-9) =
# randp[:int(171 * r)] with r = 0.30, 0.35, 0.40, 0.45, 0.50 -> nested sets of 51/59/68/76/85 classes.
COCO_STUFF_10K_RANDP = (
    170, 112, 3, 26, 121, 69, 50, 87, 14, 13, 58, 106, 17, 134, 164, 161, 100, 151, 24, 114, 25, 92, 12,
    61, 102, 113, 89, 110, 76, 128, 149, 57, 144, 137, 46, 27, 83, 133, 162, 37, 109, 33, 40, 82, 47, 0,
    31, 111, 66, 91, 120, 136, 39, 157, 163, 45, 28, 131, 9, 49, 19, 155, 150, 1, 4, 68, 130, 42, 132,
    75, 71, 48, 7, 85, 116, 96, 93, 159, 139, 115, 95, 105, 78, 156, 54, 5, 11, 44, 65, 88, 62, 60, 41,
    104, 107, 8, 168, 117, 98, 143,
)

_COCO_RANDP_SPLIT_SIZES = {
    4: 43,  # round(171 / 4)
    5: int(171 * 0.30),
    6: int(171 * 0.35),
    7: int(171 * 0.40),
    8: int(171 * 0.45),
    9: int(171 * 0.50),
}

COCO_STUFF_10K_NOVEL_IDS = {
    1: (
        3, 6, 10, 11, 18, 19, 26, 27, 31, 34, 37, 38, 40, 41, 50, 53, 55, 59, 61, 68, 76, 82, 85, 90,
        92, 94, 103, 106, 108, 112, 113, 117, 120, 127, 129, 131, 141, 146, 155, 156, 159, 166, 169,
    ),
    2: (
        1, 3, 6, 7, 9, 10, 13, 27, 31, 35, 38, 40, 43, 44, 53, 62, 68, 74, 77, 80, 82, 84, 86, 99, 101,
        108, 110, 111, 116, 118, 121, 122, 125, 131, 137, 141, 148, 153, 155, 156, 160, 161, 166,
    ),
    3: (
        0, 5, 10, 13, 15, 16, 20, 23, 25, 27, 28, 31, 33, 34, 35, 36, 40, 43, 47, 50, 51, 58, 62, 69,
        80, 81, 83, 84, 87, 90, 101, 105, 119, 121, 124, 126, 137, 138, 150, 154, 157, 158, 164,
    ),
    **{k: tuple(sorted(COCO_STUFF_10K_RANDP[:n])) for k, n in _COCO_RANDP_SPLIT_SIZES.items()},
}

# Dropped by the dataset loaders from both the train and the test listing (§7.1).
COCO_STUFF_10K_EXCLUDED_STEMS = frozenset(
    f"COCO_train2014_{n:012d}" for n in (16680, 230639, 382127, 429995, 314646, 3518, 58075)
)

# ------------------------------------------------------------------------------------------------
# ADE20K-150 (SceneParse150 order; the full strings, e.g. "road, route" and "window " with its
# trailing space, as detectron2 has them, because base/novel names are matched on these strings).
# ------------------------------------------------------------------------------------------------
ADE20K_150_CLASSES = tuple(ADE20K_SEM_SEG_CATEGORIES)

ADE20K_150_NOVEL_IDS = {
    1: (
        1, 3, 6, 8, 10, 13, 17, 22, 23, 29, 33, 38, 41, 50, 51, 56, 67, 70, 71, 74, 77, 81, 92, 93, 98,
        101, 102, 103, 110, 113, 119, 121, 126, 127, 130, 136, 147, 149,
    ),
    2: (
        0, 10, 21, 27, 28, 29, 34, 40, 42, 43, 51, 57, 58, 65, 66, 68, 69, 73, 76, 78, 85, 88, 90, 100,
        105, 110, 111, 112, 113, 114, 117, 123, 124, 132, 134, 139, 142, 146,
    ),
    3: (
        0, 5, 9, 15, 16, 21, 24, 25, 27, 32, 34, 35, 38, 39, 55, 70, 76, 85, 95, 96, 98, 100, 106, 109,
        111, 118, 119, 124, 128, 132, 134, 135, 136, 138, 140, 141, 143, 144,
    ),
    4: (
        5, 11, 13, 16, 21, 24, 26, 32, 35, 42, 53, 56, 60, 61, 63, 64, 68, 70, 75, 82, 91, 93, 94, 99,
        100, 105, 111, 115, 118, 121, 122, 130, 132, 135, 137, 138, 141, 143,
    ),
}

# The 16 all-ignore training images dropped by the loader (§7.2), leaving 20,194 for training.
ADE20K_EXCLUDED_STEMS = frozenset(
    f"ADE_train_{n:08d}"
    for n in (
        5149, 5150, 5152, 5333, 5905, 6510, 13298, 14634, 14636, 14884, 15320, 15330, 15928, 19743,
        19385, 19873,
    )
)
# fmt: on


def base_ids(num_classes, novel_ids):
    """Sorted tuple of the ids in ``range(num_classes)`` that are not in ``novel_ids``."""
    novel = set(int(c) for c in novel_ids)
    if len(novel) != len(novel_ids):
        raise ValueError(f"splits.base_ids: novel_ids contain duplicates: {sorted(novel_ids)}")
    outside = sorted(c for c in novel if not 0 <= c < num_classes)
    if outside:
        raise ValueError(f"splits.base_ids: novel ids {outside} are outside [0, {num_classes})")
    return tuple(c for c in range(num_classes) if c not in novel)
