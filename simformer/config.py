"""``add_simformer_config(cfg)``: every key simformer adds to detectron2's config, with its default.

Keys are read only by ``from_config`` methods (model, heads, criterion, mapper, trainer); yacs rejects
unknown keys, so this function is the complete list of knobs.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_simformer_config"]


def add_simformer_config(cfg):
    """Add simformer's keys (in place) to a detectron2 config from ``get_cfg()``."""
    # ---------------------------------------------------------------- data
    # Training dataset mapper, by class name in MAPPER_REGISTRY ("SemSegDatasetMapper": single image, full labels).
    cfg.INPUT.DATASET_MAPPER_NAME = "SemSegDatasetMapper"
    # SSD-style photometric jitter (brightness, contrast, saturation, hue) in training.
    cfg.INPUT.COLOR_AUG_SSD = True
    # Random crop: largest fraction of the crop one category may cover (1.0 = plain random crop).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad training images (bottom/right) to this fixed square size; -1 = no fixed-size padding.
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Horizontal flip probability in training.
    cfg.INPUT.FLIP_PROB = 0.5

    # ---------------------------------------------------------------- weak-shot data
    # Read by WeakShotDatasetMapper / PairDatasetMapper (simformer/data/dataset_mappers/); base / novel
    # class ids come from the metadata of DATASETS.TRAIN[0] (register_simulated_weakshot / _real_weakshot).
    cfg.INPUT.WEAKSHOT = CN()
    # Where image-level novel labels come from: "image" = the dataset dict's "novel_tags" (whole image,
    # true to the weak-shot setting); "crop" = novel ids still present after augmentation (the official
    # code's behaviour; needs full labels, i.e. simulated weak-shot data); "none" = no novel targets
    # (base-only training, novel pixels ignored).
    cfg.INPUT.WEAKSHOT.IMAGE_LEVEL_LABELS = "image"
    # Novel classes are ordinary mask targets (retraining on pseudo-labels) instead of image-level targets.
    cfg.INPUT.WEAKSHOT.NOVEL_HAS_MASK = False
    # Pseudo-label folder ("" = none): labels are read from <dir>/<basename of sem_seg_file_name>; a missing
    # file is an error (never a fallback to the ground truth).
    cfg.INPUT.WEAKSHOT.PSEUDO_LABEL_DIR = ""
    # Partner rule of PairDatasetMapper: "Deconf<p>" (0 <= p <= 1), "Rand", "BInter" or "NInter" (spec §1.3).
    cfg.INPUT.WEAKSHOT.PAIR_TYPE = "Deconf0.01"
    # Folder for the cached partner table ("" = <folder of the first label file>/../pair_cache).
    cfg.INPUT.WEAKSHOT.PAIR_CACHE_DIR = ""

    # ---------------------------------------------------------------- optimiser / schedule
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # LR multiplier for parameters whose module name contains "backbone".
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Weight decay of nn.Embedding parameters (query embeddings).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Poly schedule: lr = base * (1 - it / MAX_ITER) ** POLY_LR_POWER (after warmup).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # CLIP_GRADIENTS.CLIP_TYPE additionally accepts "full_model": one L2 norm over all parameters.

    # ---------------------------------------------------------------- mask-classification model
    cfg.MODEL.MASK_FORMER = CN()
    # Loss weights: classification CE, sigmoid focal mask loss, dice mask loss.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    # CE weight of the "no object" class.
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Add the losses of every intermediate decoder layer (suffix _0.._L-2).
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Matching costs: -p(class), sigmoid focal, dice (computed at mask-feature resolution).
    cfg.MODEL.MASK_FORMER.COST_CLASS = 1.0
    cfg.MODEL.MASK_FORMER.COST_FOCAL = 20.0
    cfg.MODEL.MASK_FORMER.COST_DICE = 1.0
    # Transformer decoder, by name in TRANSFORMER_DECODER_REGISTRY.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "StandardTransformerDecoder"
    # Backbone / pixel-decoder feature the decoder attends to ("res5" or "transformer_encoder").
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    # Pre-LayerNorm transformer layers instead of post-norm.
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    # Always project the decoder input with a 1x1 conv, even when its channels equal HIDDEN_DIM.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Pad the batch to a multiple of this (backbone stride); the mapper may pad further.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # Matching cost of a target without a mask (weak-shot novel class): -p(class) only (spec §3, NoMaskCls).
    cfg.MODEL.MASK_FORMER.COST_CLASS_NO_MASK = 1.0

    # ---------------------------------------------------------------- SimFormer (spec §3-§5)
    # Read by the "SimFormer" meta-architecture and its criterion (simformer/modeling/simformer_criterion.py).
    cfg.MODEL.SIMFORMER = CN()
    # Complementary loss weight (LOSS.CompSupNovel): union of the matched novel masks vs. the not-base,
    # not-padding region; 0.15 COCO, 0.2 ADE, 0 = off (retraining).
    cfg.MODEL.SIMFORMER.COMP_LOSS_WEIGHT = 0.0
    # Fixed "ignore proposal" logit (LOSS.IgnoreInit = logit(0.05)) that floors the novel union; <= -50 disables.
    cfg.MODEL.SIMFORMER.IGNORE_PROPOSAL_LOGIT = -2.9444
    # Pixel-pixel similarity transfer (CROSS_IMG_SIM.*); needs the pair mapper (INPUT.DATASET_MAPPER_NAME
    # "PairDatasetMapper"), whose SOLVER.IMS_PER_BATCH counts pairs.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM = CN()
    # Weight of SimNet's base pixel-pair loss (loss_cro_sim); 0 = no SimNet and no pair losses.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_LOSS = 0.0
    # Weight of the SimNet -> novel semantic mask distillation (loss_cro_dit).
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_LOSS = 0.0
    # Distillation function: "ce" (soft BCE, clamped), "cce" (confidence-thresholded), "b<theta>" (linear).
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_FUNC = "ce"
    # Student semantic map: "NovelScore", "FullScore", "FullLogit" or "FullLogitC" (spec §4.6).
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_TO = "NovelScore"
    # Student pixel pairs: "cross" (pixels of the two images, as in the paper) or "same" (the released
    # code's same-image pairs scored against cross-image teacher targets).
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.STUDENT_PAIRS = "cross"
    # Sampled points per image for the base loss and for the distillation.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_POINT_NUM = 100
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.NOVEL_POINT_NUM = 100
    # Fraction of base points drawn from the (common-class) positive region; the rest are negatives.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.POSITIVE_FRACTION = 0.8
    # Stop gradients from SimNet's base loss / teacher into the pixel features.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_DETACH = True
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.TEACH_DETACH = True
    # SimNet: residual blocks, hidden width, BatchNorm.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.LAYER_NUM = 3
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.HIDDEN_DIM = 256
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BN = True
    # Running positive/negative balance of the base pair loss: window (iterations) and count stride.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BALANCE_WINDOW = 25
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BALANCE_STRIDE = 5

    # ---------------------------------------------------------------- pixel decoder / heads
    # Pixel decoder, by name in PIXEL_DECODER_REGISTRY ("BasePixelDecoder": FPN;
    # "TransformerEncoderPixelDecoder": FPN whose coarsest level goes through a transformer encoder).
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Channels of the per-pixel embedding ("mask_features").
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Transformer-encoder layers of TransformerEncoderPixelDecoder.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    # Classification layer of the per-pixel head, by name in CLASSIFIER_REGISTRY.
    cfg.MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME = "LinearClassifier"

    # ---------------------------------------------------------------- evaluation
    # Print and log this many predictions as colour overlays after evaluation (0 = none).
    cfg.TEST.NUM_VIS_OVERLAYS = 0
    # With --eval-only on a weak-shot training split: write pseudo-labels (spec §5.4) into this folder
    # instead of evaluating ("" = evaluate as usual). Retraining reads them via INPUT.WEAKSHOT.PSEUDO_LABEL_DIR.
    cfg.TEST.PSEUDO_LABEL_DIR = ""
    # Also report Boundary IoU (bIoU, per class and per group) at this pixel tolerance; 0 = off.
    cfg.TEST.BOUNDARY_TOLERANCE = 0

    # ---------------------------------------------------------------- reliability (simformer/engine/nonfinite.py)
    # A step whose loss terms are not all finite is caught before its backward pass. False: save
    # OUTPUT_DIR/model_before_nonfinite_iter<i>.pth (state before the step) and stop with a FloatingPointError
    # naming the terms; True: skip the step with a warning and count it (metric nonfinite_skipped_steps).
    cfg.SOLVER.SKIP_NONFINITE_STEPS = False

    # ---------------------------------------------------------------- SSA classifier (ssa_adapter; /work/shared/specs/ssa.md)
    # Read by "SSAClassifier" in CLASSIFIER_REGISTRY (MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME; simformer/modeling/classifiers/ssa.py).
    cfg.MODEL.SSA = CN()
    # Fixed scale of the cosine logits (|logit| <= TAU); official 15.
    cfg.MODEL.SSA.TAU = 15.0
    # Dropout2d on the features of the coarse-mask path only (mmseg heads 0.1; the per-pixel head has none).
    cfg.MODEL.SSA.DROPOUT = 0.0
    # Build the training-only GT-guided teacher; False = no teacher and no teacher / distillation losses
    # (inference-only models: training checkpoints still load, their teacher weights are dropped).
    cfg.MODEL.SSA.TEACHER = True
    # Boundary band of the response distillation: odd neighbourhood size at feature resolution (a label change
    # gives a band of BOUNDARY_WIDTH - 1 pixels), and a frame of BOUNDARY_BORDER pixels along the image border
    # where no pixel is a boundary (official: 6; 0 = none).
    cfg.MODEL.SSA.BOUNDARY_WIDTH = 3
    cfg.MODEL.SSA.BOUNDARY_BORDER = 0
    # Weight of the teacher distribution in the response-distillation target (the rest is the one-hot label).
    cfg.MODEL.SSA.KD_SMOOTH = 0.5
    # Loss weights (spec §4; 0 = term skipped): coarse-mask CE, dice of the SSA logits, teacher CE and dice,
    # response- / semantic-relation- / spatial-domain distillation. The main CE is the head's LOSS_WEIGHT.
    cfg.MODEL.SSA.COARSE_WEIGHT = 1.0
    cfg.MODEL.SSA.DICE_WEIGHT = 1.0
    cfg.MODEL.SSA.TEACHER_CE_WEIGHT = 1.0
    cfg.MODEL.SSA.TEACHER_DICE_WEIGHT = 1.0
    cfg.MODEL.SSA.RD_WEIGHT = 1.0
    cfg.MODEL.SSA.SD_WEIGHT = 10.0
    cfg.MODEL.SSA.PD_WEIGHT = 0.4

    # ---------------------------------------------------------------- masked-attention query decoder
    # Read by MaskedAttentionTransformerDecoder (simformer/modeling/transformer_decoder/masked_attention.py),
    # selected with MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME "MaskedAttentionTransformerDecoder"; it also
    # uses the MASK_FORMER keys above (HIDDEN_DIM, NHEADS, DIM_FEEDFORWARD, DEC_LAYERS, PRE_NORM, ...).
    cfg.MODEL.MASK_FORMER.MASKED_ATTN = CN()
    # Pixel-decoder levels attended round-robin, coarsest first (FPN over res2..res5: strides 32, 16, 8).
    cfg.MODEL.MASK_FORMER.MASKED_ATTN.NUM_FEATURE_LEVELS = 3
    # A query attends to the pixels whose previous mask probability is above this (empty mask: everywhere).
    cfg.MODEL.MASK_FORMER.MASKED_ATTN.MASK_THRESHOLD = 0.5
    # DEC_LAYERS + 1 predictions (initial queries, every layer), DEC_LAYERS - 1 deep-supervision slots:
    # True = supervise the initial prediction and leave out layer DEC_LAYERS - 1; False = the reverse.
    cfg.MODEL.MASK_FORMER.MASKED_ATTN.SUPERVISE_INITIAL = True
