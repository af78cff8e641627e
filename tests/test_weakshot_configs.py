"""Per-split facts of the real weak-shot configs (configs/coco_stuff_10k, configs/ade20k_150; spec §4.6, §4.7,
§5.5, §8): datasets of the split folder, stage settings, per-split distillation, schedule per dataset.
Only merges configs (no model is built: tests/test_configs.py does that)."""
import os

import pytest

import simformer  # noqa: F401  (registers the built-in datasets)
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from simformer import add_simformer_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_R50 = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
STAGES = ("seg", "seg_crosim", "retraining")

# folder -> dataset-wide facts
DATASETS = {
    "coco_stuff_10k": dict(
        prefix="coco_stuff_split", splits=range(1, 10), num_classes=171, max_iter=60000, comp=0.15, crop=640, eval_period=10000,
        train_sizes=tuple(range(320, 961, 64)), max_size=2560,
        # split -> (DISTILL_WEIGHT, DISTILL_FUNC) of seg_crosim: s1 keeps the official 0.0 (distillation off), s3 "ce"
        distill={1: (0.0, "ce"), 2: (0.1, "cce"), 3: (0.1, "ce"), **{k: (0.1, "cce") for k in range(4, 10)}},
    ),
    "ade20k_150": dict(
        prefix="ADE_split", splits=range(1, 5), num_classes=150, max_iter=160000, comp=0.2, crop=512, eval_period=20000,
        train_sizes=(256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024), max_size=2048,
        distill={k: (0.5, "cce") for k in range(1, 5)},
    ),
}
CASES = [(ds, k, stage) for ds, facts in DATASETS.items() for k in facts["splits"] for stage in STAGES]
# timm backbone variants (split 1 of each dataset): <stage>_<backbone>.yaml next to <stage>.yaml
BACKBONE_VARIANTS = {"swin_t": "swin_tiny_patch4_window7_224", "convnext_t": "convnext_tiny"}
VARIANT_STAGES = ("seg", "seg_crosim", "retraining")
VARIANTS = [(ds, 1, stage, bb) for ds in DATASETS for stage in VARIANT_STAGES for bb in BACKBONE_VARIANTS]


def config_path(ds, k, stage):
    return os.path.join(ROOT, "configs", ds, f"split{k}", f"{stage}.yaml")


def load(ds, k, stage):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(config_path(ds, k, stage))
    return cfg


def test_every_split_has_every_stage_and_nothing_else():
    for ds, facts in DATASETS.items():
        folder = os.path.join(ROOT, "configs", ds)
        found = {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files if f.endswith(".yaml") and not f.startswith("Base-")}
        expected = {os.path.join(f"split{k}", f"{stage}.yaml") for k in facts["splits"] for stage in STAGES}
        expected |= {os.path.join(f"split{k}", f"{stage}_{bb}.yaml") for d, k, stage, bb in VARIANTS if d == ds}
        assert found == expected, f"{ds}: unexpected {sorted(found - expected)}, missing {sorted(expected - found)}"


@pytest.mark.parametrize("ds,k,stage,bb", VARIANTS, ids=[f"{ds}/split{k}/{stage}_{bb}" for ds, k, stage, bb in VARIANTS])
def test_backbone_variant_changes_only_the_backbone_recipe(ds, k, stage, bb):
    """The Swin-T / ConvNeXt-T variant = its stage config + the timm backbone and Mask2Former's optimiser
    recipe (backbone LR x 0.1, weight decay 0.05, none on norms / position embeddings)."""
    base, variant = load(ds, k, stage), load(ds, k, f"{stage}_{bb}")
    assert variant.MODEL.BACKBONE.NAME == "TimmBackbone" and variant.MODEL.TIMM.NAME == BACKBONE_VARIANTS[bb]
    assert variant.MODEL.WEIGHTS == "" and variant.MODEL.TIMM.PRETRAINED_FILE.endswith(BACKBONE_VARIANTS[bb] + ".pth")
    assert (variant.SOLVER.BACKBONE_MULTIPLIER, variant.SOLVER.WEIGHT_DECAY, variant.SOLVER.WEIGHT_DECAY_NORM, variant.SOLVER.WEIGHT_DECAY_EMBED) == (0.1, 0.05, 0.0, 0.0)
    for key in ("WEIGHTS", "BACKBONE", "TIMM"):
        variant.MODEL.pop(key), base.MODEL.pop(key)
    for key in ("BACKBONE_MULTIPLIER", "WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "WEIGHT_DECAY_EMBED"):
        variant.SOLVER.pop(key), base.SOLVER.pop(key)
    assert variant.OUTPUT_DIR == base.OUTPUT_DIR + f"_{bb}"
    variant.OUTPUT_DIR = base.OUTPUT_DIR
    assert variant == base


@pytest.mark.parametrize("ds,k,stage", CASES, ids=[f"{ds}/split{k}/{stage}" for ds, k, stage in CASES])
def test_split_config(ds, k, stage):
    facts = DATASETS[ds]
    cfg = load(ds, k, stage)
    crosim, retrain = stage == "seg_crosim", stage == "retraining"
    cis = cfg.MODEL.SIMFORMER.CROSS_IMG_SIM

    # datasets of the split folder: train on the split, evaluate on the same split's val set
    train, test = f"{facts['prefix']}{k}_train", f"{facts['prefix']}{k}_val"
    assert tuple(cfg.DATASETS.TRAIN) == (train,)
    assert tuple(cfg.DATASETS.TEST) == (test,)
    assert sorted(MetadataCatalog.get(train).novel_class_ids) == sorted(MetadataCatalog.get(test).novel_class_ids)
    assert cfg.OUTPUT_DIR == f"output/{ds}/split{k}/{stage}"

    # model and schedule shared by every stage
    assert cfg.MODEL.META_ARCHITECTURE == "SimFormer"
    assert cfg.MODEL.WEIGHTS == IMAGENET_R50  # every stage starts from ImageNet R-50, retraining included
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == facts["num_classes"]
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100
    mf = cfg.MODEL.MASK_FORMER
    assert (mf.COST_CLASS, mf.COST_CLASS_NO_MASK, mf.COST_FOCAL, mf.COST_DICE) == (1.0, 1.0, 20.0, 1.0)
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT) == (1.0, 20.0, 1.0, 0.1)
    assert cfg.MODEL.SIMFORMER.IGNORE_PROPOSAL_LOGIT == pytest.approx(-2.9444)
    assert cfg.SOLVER.MAX_ITER == facts["max_iter"]
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.TEST.EVAL_PERIOD == facts["eval_period"]
    crop = facts["crop"]
    assert cfg.INPUT.CROP.ENABLED and tuple(cfg.INPUT.CROP.SIZE) == (crop, crop) and cfg.INPUT.CROP.TYPE == "absolute"
    assert cfg.INPUT.PAD_TO_SIZE == crop and cfg.INPUT.MIN_SIZE_TEST == crop
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and tuple(cfg.INPUT.MIN_SIZE_TRAIN) == facts["train_sizes"]
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TEST) == (facts["max_size"], facts["max_size"])
    assert cfg.INPUT.WEAKSHOT.IMAGE_LEVEL_LABELS == "image"
    assert cfg.INPUT.WEAKSHOT.PSEUDO_LABEL_DIR == ""  # set by tools/weakshot_pipeline.py

    # stage: mapper, batch (pairs in seg_crosim), novel masks
    assert cfg.INPUT.DATASET_MAPPER_NAME == ("PairDatasetMapper" if crosim else "WeakShotDatasetMapper")
    assert cfg.SOLVER.IMS_PER_BATCH == (4 if crosim else 8)  # 4 pairs = 8 images
    assert cfg.INPUT.WEAKSHOT.NOVEL_HAS_MASK == retrain

    # losses: complementary per dataset (0 in retraining), pair losses only in seg_crosim
    assert cfg.MODEL.SIMFORMER.COMP_LOSS_WEIGHT == (0.0 if retrain else facts["comp"])
    if crosim:
        assert cis.BASE_WEIGHT == 1.0
        assert (cis.DISTILL_WEIGHT, cis.DISTILL_FUNC) == facts["distill"][k]
        assert cis.DISTILL_TO == "NovelScore" and cis.STUDENT_PAIRS == "cross"
        assert (cis.BASE_POINT_NUM, cis.NOVEL_POINT_NUM) == (100, 100)
        assert cis.BASE_DETACH and cis.TEACH_DETACH
        assert (cis.LAYER_NUM, cis.HIDDEN_DIM, cis.BN) == (3, 256, True)
        assert cfg.INPUT.WEAKSHOT.PAIR_TYPE == "Deconf0.01"
    else:
        assert cis.BASE_WEIGHT == 0.0 and cis.DISTILL_WEIGHT == 0.0


@pytest.mark.parametrize("ds", sorted(DATASETS))
@pytest.mark.parametrize("stage", ["seg", "retraining"])
def test_single_image_mapper_builds(ds, stage):
    """The training mapper of seg / retraining builds from the config (no data read; the pair mapper of
    seg_crosim reads the training labels for its partner table, so it is not built here)."""
    from simformer.data.dataset_mappers.build import build_mapper

    cfg = load(ds, 1, stage)
    mapper = build_mapper(cfg, is_train=True)
    assert mapper.novel_has_mask == (stage == "retraining")
    assert sorted(mapper.novel_class_ids) == sorted(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).novel_class_ids)
