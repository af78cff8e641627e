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
    # Pad training images (bottom/right) to this fixed square size (formerly INPUT.SIZE_DIVISIBILITY, which
    # was no divisibility); -1 = no fixed-size padding.
    cfg.INPUT.PAD_TO_SIZE = -1
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
    # Retraining on pseudo-labels: a tagged novel class with no pixel in the (cropped) pseudo-label stays an
    # image-level target (class only, no mask) instead of vanishing from the targets (spec §5.5); False = paper.
    cfg.INPUT.WEAKSHOT.KEEP_LOST_TAGS = False
    # Partner rule of PairDatasetMapper: "Deconf<p>" (0 <= p <= 1), "Rand", "BInter" or "NInter" (spec §1.3).
    cfg.INPUT.WEAKSHOT.PAIR_TYPE = "Deconf0.01"
    # Folder for the cached partner table ("" = <folder of the first label file>/../pair_cache).
    cfg.INPUT.WEAKSHOT.PAIR_CACHE_DIR = ""
    # Deterministic noise on the image-level tags (simformer/data/tag_noise.py; IMAGE_LEVEL_LABELS "image"):
    # each true novel tag is dropped with probability DROP, one spurious novel tag is added with probability
    # ADD; a function of (SEED, image id), the same in every epoch. 0 / 0 = the dataset's tags.
    cfg.INPUT.WEAKSHOT.TAG_NOISE = CN()
    cfg.INPUT.WEAKSHOT.TAG_NOISE.DROP = 0.0
    cfg.INPUT.WEAKSHOT.TAG_NOISE.ADD = 0.0
    cfg.INPUT.WEAKSHOT.TAG_NOISE.SEED = 0

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
    # Run the convolutions in channels-last (NHWC) memory format: the model's 4-D weights and the input
    # batch are converted once; the same math, float-tolerance results. Faster for convolutions on CPU
    # (oneDNN) and for mixed precision on recent GPUs; see benchmarks/bench_vs_hf_maskformer.py.
    cfg.MODEL.MASK_FORMER.CHANNELS_LAST = False

    # Matching cost of a target without a mask (weak-shot novel class): -p(class) only (spec §3, NoMaskCls).
    cfg.MODEL.MASK_FORMER.COST_CLASS_NO_MASK = 1.0
    # Point-sampled mask losses and matching costs (spec §11: a flagged deviation from the exact objective).
    # Points per matched mask for focal / dice and per image for the matching costs; 0 = every pixel
    # (losses at the target resolution, costs at the mask-logit resolution: the exact objective).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 0
    # Matching costs with TRAIN_NUM_POINTS > 0: "auto" reads the points only when they are fewer than the
    # mask-logit pixels h*w, else every pixel (exact and cheaper: R50 at 256² has 64² = 4,096 < 12,544);
    # "always" reads TRAIN_NUM_POINTS points at every size (Mask2Former's matcher). The losses always use
    # the points when TRAIN_NUM_POINTS > 0.
    cfg.MODEL.MASK_FORMER.MATCHER_POINT_SAMPLING = "auto"
    # Loss points: ceil(OVERSAMPLE_RATIO * TRAIN_NUM_POINTS) uniform candidates (>= 1) of which the
    # IMPORTANCE_SAMPLE_RATIO (in [0, 1]) share with the most uncertain logits is kept, the rest uniform;
    # 0 = uniform points (an unbiased estimate of the full-resolution losses).
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # ---------------------------------------------------------------- SimFormer (spec §3-§5)
    # Read by the "SimFormer" meta-architecture and its loss terms (simformer/modeling/loss_terms.py, assembled by
    # simformer/modeling/build_criterion.py).
    cfg.MODEL.SIMFORMER = CN()
    # Complementary loss weight (LOSS.CompSupNovel): union of the matched novel masks vs. the not-base,
    # not-padding region; 0.15 COCO, 0.2 ADE, 0 = off (retraining).
    cfg.MODEL.SIMFORMER.COMP_LOSS_WEIGHT = 0.0
    # Fixed "ignore proposal" logit (LOSS.IgnoreInit = logit(0.05)) that floors the novel union (there is no
    # off switch; a very negative value such as -50 makes the floor negligible).
    cfg.MODEL.SIMFORMER.IGNORE_PROPOSAL_LOGIT = -2.9444
    # Pixel-pixel similarity transfer (CROSS_IMG_SIM.*); needs the pair mapper (INPUT.DATASET_MAPPER_NAME
    # "PairDatasetMapper"), whose SOLVER.IMS_PER_BATCH counts pairs.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM = CN()
    # Weight of SimNet's base pixel-pair loss (loss_cro_sim); 0 = no SimNet and no pair losses.
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT = 0.0
    # Weight of the SimNet -> novel semantic mask distillation (loss_cro_dit).
    cfg.MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_WEIGHT = 0.0
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
    # Cross-image pixel contrast (related_methods §C, §D.3): auxiliary loss loss_pixel_contrast on projected
    # mask features of labelled pixels, anchors from every image of the batch; training only (PixelContrast in
    # simformer/modeling/pixel_contrast_head.py, built by the "SimFormer" meta-architecture).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST = CN()
    # Loss weight (official in-batch 0.1; 1.0 with memory); 0 = off: no projection head, no loss.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.WEIGHT = 0.0
    # Projection head on the mask features: "convmlp" (1x1 conv, MODEL.SEM_SEG_HEAD.NORM, ReLU, 1x1 conv) or
    # "linear" (one 1x1 conv); output L2-normalised.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ = "convmlp"
    # Embedding channels of the projection head.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ_DIM = 256
    # Stride of the embeddings: 4 (mask-feature resolution) or a multiple of 4 (average-pooled first; 8 = 4x cheaper).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ_STRIDE = 4
    # Softmax temperature tau of the similarities.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.TEMPERATURE = 0.1
    # Loss multiplier (not a temperature); -1 = TEMPERATURE / 0.07, the official base_temperature scaling.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.LOSS_SCALE = -1.0
    # Anchor budget per process and most anchors per (image, class) (n_view = min(MAX_SAMPLES // groups, MAX_VIEWS)).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MAX_SAMPLES = 1024
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MAX_VIEWS = 100
    # An (image, class) gives anchors only with more than this many pixels at embedding resolution (official: MAX_VIEWS).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MIN_PIXELS_PER_CLASS = 100
    # Half of each class's anchors from pixels the detached semantic prediction gets wrong; False = uniform.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.HARD_ANCHORS = True
    # The loss is multiplied by 0 for this many training iterations; -1 = round(0.125 * SOLVER.MAX_ITER).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.WARMUP_ITERS = -1
    # Pixels contrasted: "base" (base classes with a mask target) or "labelled" (every class with a mask
    # target: base + pseudo-labelled novel classes when retraining with INPUT.WEAKSHOT.NOVEL_HAS_MASK).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.CLASSES = "base"
    # Class-wise memory of pixel / region embeddings, all-gathered so every process holds the same one and
    # saved in checkpoints; with it, anchors are contrasted against the memory only (official MEM variant).
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY = CN()
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.ENABLED = False
    # Slots per class of the pixel and the region (per image-class mean) queue; 0 = that queue is off.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.PIXEL_SIZE = 2000
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.REGION_SIZE = 1000
    # Random pixels pushed per (image, class) per iteration.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.PIXELS_PER_IMAGE = 10
    # Contrast against a random subset of this many filled memory entries per iteration; 0 = all of them.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.CANDIDATES = 16384
    # Store the queues in float16 (half the memory); the loss is computed in float32.
    cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.STORE_FP16 = True

    # ---------------------------------------------------------------- pixel decoder / heads
    # Pixel decoder, by name in PIXEL_DECODER_REGISTRY ("BasePixelDecoder": FPN;
    # "TransformerEncoderPixelDecoder": FPN whose coarsest level goes through a transformer encoder).
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Channels of the per-pixel embedding ("mask_features").
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Transformer-encoder layers of TransformerEncoderPixelDecoder.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    # Top-down upsampler of the FPN pixel decoders (simformer/modeling/pixel_decoder/fpn.py): "nearest"
    # (MaskFormer), "bilinear" (align_corners=False) or "srm" (semantic refinement module, srm.py: a learned
    # per-pixel offset warp of the bilinear upsample, guided by the finer lateral map; equals "bilinear" at init).
    cfg.MODEL.SEM_SEG_HEAD.UPSAMPLER = "nearest"
    # Context module on the coarsest pixel-decoder input (res5): "none" or "crm" (contextual refinement module,
    # crm.py: channel-then-spatial attention over all input stages pooled to res5 size; identity at init).
    cfg.MODEL.SEM_SEG_HEAD.CONTEXT_MODULE = "none"
    # SRM options, read when UPSAMPLER is "srm" (our design; the paper's code is not public).
    cfg.MODEL.SEM_SEG_HEAD.SRM = CN()
    # Merges that get SRM, named by their finer feature (e.g. ["res2"] = only the stride 8->4 merge);
    # empty = every merge. The other merges upsample bilinearly.
    cfg.MODEL.SEM_SEG_HEAD.SRM.LEVELS = []
    # Channels of the compressed upsampled / guide maps that predict the offsets.
    cfg.MODEL.SEM_SEG_HEAD.SRM.REDUCED_DIM = 64
    # Offset groups: channel group g of the upsampled map is warped by its own offset (must divide CONVS_DIM).
    cfg.MODEL.SEM_SEG_HEAD.SRM.OFFSET_GROUPS = 1
    # Window of the neighbour-guided offset refinement (odd); 0 = off (raw predicted offsets).
    cfg.MODEL.SEM_SEG_HEAD.SRM.NEIGHBOR_KERNEL = 3
    # Passes of the neighbour refinement (>= 1 when NEIGHBOR_KERNEL > 0).
    cfg.MODEL.SEM_SEG_HEAD.SRM.REFINE_ITERS = 1
    # CRM options, read when CONTEXT_MODULE is "crm" (our design; the paper's code is not public).
    cfg.MODEL.SEM_SEG_HEAD.CRM = CN()
    # Channels of the aggregated multi-stage map (>= 8; the spatial attention uses REDUCED_DIM // 8).
    cfg.MODEL.SEM_SEG_HEAD.CRM.REDUCED_DIM = 512
    # Classification layer of the per-pixel head, by name in CLASSIFIER_REGISTRY.
    cfg.MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME = "LinearClassifier"

    # ---------------------------------------------------------------- CCS classifier (/work/shared/specs/related_methods.md §A, §D.1)
    # Read by "CCSClassifier" in CLASSIFIER_REGISTRY (simformer/modeling/classifiers/ccs.py): scene-adaptive class
    # centres + cosine pixel-to-centre logits. Everything is our design (only the paper's abstract is public).
    cfg.MODEL.CCS = CN()
    # Initial softmax temperature of the cosine logits (formerly CCS.TAU): the learnable logit scale starts at
    # 1/INIT_TEMPERATURE and is clamped to [1, 100]; INIT_TEMPERATURE in [0.01, 1]. (SSA.TAU is a logit scale.)
    cfg.MODEL.CCS.INIT_TEMPERATURE = 0.1
    # Fixed scale of the coarse cosine logits against the global centres (their spatial softmax pools the centres).
    cfg.MODEL.CCS.COARSE_SCALE = 10.0
    # Scale each centre update by the detached presence score max_p softmax_k(coarse logits) (spec §A.6).
    cfg.MODEL.CCS.PRESENCE_GATING = True
    # Average-pool the features by this factor (>= 1) for the coarse logits and pooled centres; 2 = ~4x cheaper.
    cfg.MODEL.CCS.POOL_STRIDE = 1
    # Loss weights (0 = term skipped): CE of the coarse logits, intra-class (pixel-to-own-centre) hinge,
    # inter-class (centre-to-centre) hinge. The main CE is the head's LOSS_WEIGHT.
    cfg.MODEL.CCS.COARSE_WEIGHT = 0.4
    cfg.MODEL.CCS.INTRA_WEIGHT = 0.5
    cfg.MODEL.CCS.INTER_WEIGHT = 0.5
    # Intra-class hinge max(0, INTRA_MARGIN - cos(pixel, own centre)); 1.0 = plain 1 - cos.
    cfg.MODEL.CCS.INTRA_MARGIN = 1.0
    # Inter-class hinge max(0, cos(centre_k, centre_l) - INTER_MARGIN); 0.0 = centres at most orthogonal.
    cfg.MODEL.CCS.INTER_MARGIN = 0.0
    # Centre pairs of the inter-class loss: "present" (classes labelled in the image) or "all" (every pair).
    cfg.MODEL.CCS.INTER_CLASSES = "present"

    # ---------------------------------------------------------------- evaluation
    # Print and log this many predictions as colour overlays after evaluation (0 = none).
    cfg.TEST.NUM_VIS_OVERLAYS = 0
    # With --eval-only on a weak-shot training split: write pseudo-labels (spec §5.4) into this folder
    # instead of evaluating ("" = evaluate as usual). Retraining reads them via INPUT.WEAKSHOT.PSEUDO_LABEL_DIR.
    cfg.TEST.PSEUDO_LABEL_DIR = ""
    # Also report Boundary IoU (bIoU, per class and per group) at this pixel tolerance; 0 = off.
    cfg.TEST.BOUNDARY_TOLERANCE = 0
    # Sliding-window inference (simformer/modeling/sliding_window.py) for images larger than the window:
    # windows of SIZE (h, w) every STRIDE (h, w) pixels of the resized input, scores averaged where they
    # overlap; an image within one window is predicted whole. SIZE (0, 0) = INPUT.CROP.SIZE; STRIDE (0, 0)
    # = two thirds of SIZE. Off = whole-image inference.
    cfg.TEST.SLIDING_WINDOW = CN()
    cfg.TEST.SLIDING_WINDOW.ENABLED = False
    cfg.TEST.SLIDING_WINDOW.SIZE = (0, 0)
    cfg.TEST.SLIDING_WINDOW.STRIDE = (0, 0)
    # Test-time augmentation (simformer/modeling/test_time_augmentation.py; detectron2's TEST.AUG keys):
    # ENABLED averages the class score maps of every short side in MIN_SIZES (long side <= MAX_SIZE), with
    # and without a horizontal flip (FLIP), at the original resolution; combines with SLIDING_WINDOW.
    # PSEUDO_LABELS: use TTA for the pipeline's pseudo-labels only (evaluation stays single-scale unless
    # ENABLED), as the official ADE20K pseudo-label recipe does.
    cfg.TEST.AUG.PSEUDO_LABELS = False

    # ---------------------------------------------------------------- reliability (simformer/engine/nonfinite.py)
    # A step whose loss terms are not all finite is caught before its backward pass. False: save
    # OUTPUT_DIR/model_before_nonfinite_iter<i>.pth (state before the step) and stop with a FloatingPointError
    # naming the terms; True: skip the step with a warning and count it (metric nonfinite_skipped_steps).
    cfg.SOLVER.SKIP_NONFINITE_STEPS = False
    # Mixed precision (simformer/engine/amp.py): the training forward runs under torch.autocast on the
    # model's device; the matcher, the losses and semantic inference stay in fp32. detectron2's own
    # SOLVER.AMP.ENABLED switches it on (any device); SOLVER.AMP.DTYPE: "bfloat16" (CPU or GPU, no loss
    # scaling) or "float16" (CUDA only, with a dynamic GradScaler).
    cfg.SOLVER.AMP.DTYPE = "bfloat16"

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
    # Weak-shot options (spec §9.3). Semantic prototype update: "replace" = S_p = phi_s([S_c ; W]) (official);
    # "residual" = S_p = W + g * phi_s([S_c ; W]) with a learnable scalar gate g starting at SEMANTIC_GATE_INIT.
    cfg.MODEL.SSA.SEMANTIC_UPDATE = "replace"
    cfg.MODEL.SSA.SEMANTIC_GATE_INIT = 0.1
    # Position basis P: "learned" = a K x C table (official); "prototypes" = P = A W, a learned C x C map of
    # the prototypes, so classes without teacher signal (novel) and per-image prototypes get a basis.
    cfg.MODEL.SSA.POSITION_BASIS = "learned"
    # Classes of the semantic / spatial distillation (L_sd, L_pd): "present" = those in each image's labels
    # (classes without ground truth, e.g. novel, get no teacher target; spec §9.3.1; set by the weak-shot
    # configs); "all" = all K (official, the default, as in the per-pixel SSA-Seg setting).
    cfg.MODEL.SSA.DISTILL_CLASSES = "all"

    # ---------------------------------------------------------------- pixel classifier of the mask-classification model
    # Spec §9.2 "B2", read by MaskFormerHead and the MaskFormer / SimFormer meta-architectures: a classifier from
    # CLASSIFIER_REGISTRY over the pixel decoder's mask_features, whose per-image class prototypes are the
    # final-layer query mask-embeddings pooled with the queries' class probabilities.
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER = CN()
    # Classifier name in CLASSIFIER_REGISTRY (e.g. "SSAClassifier"); "" = off (plain MaskFormer).
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME = ""
    # Weight of the per-pixel CE of its logits (loss_pixel_ce; base / labelled pixels only). The classifier's
    # own terms (e.g. loss_ssa_*) come weighted by its keys (MODEL.SSA.*).
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.CE_WEIGHT = 1.0
    # Weight of loss_pixel_novel (weak-shot, SimFormer meta-architecture): on pixels outside every base mask and
    # the padding of an image with image-level novel labels, -log of the pixel classifier's probability of the
    # tagged novel classes (the pixel-level complementary loss); 0 = off (novel classes get no pixel signal).
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NOVEL_WEIGHT = 0.0
    # Class prototypes of the pixel classifier: "queries" = per-image prototypes pooled from the final-layer query
    # mask-embeddings (spec §9.2 "B2"); "learned" = the classifier's own class weights, shared by all images, so
    # the pixel features themselves must tell the classes apart (on the second synthetic dataset both leave the
    # model shape-blind alike: README, second dataset, item (6)).
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.PROTOTYPES = "queries"
    # Semantic map of inference: "maskformer" = sum_q p_q(k) sigmoid(m_q); "pixel" = softmax of the pixel
    # classifier's logits; "fusion" = maskformer^(1 - FUSION_WEIGHT) * pixel^FUSION_WEIGHT (weighted geometric mean).
    # Any other than "maskformer" needs NAME. On the synthetic weak-shot ablation (README) "pixel" was best with SSA,
    # "fusion" with CCS: set it in the config that turns the classifier on (configs/synthetic/simformer/seg_ssa.yaml).
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP = "maskformer"
    # Exponent of the pixel map in the "fusion" semantic map, in [0, 1].
    cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.FUSION_WEIGHT = 0.5

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

    # ---------------------------------------------------------------- timm backbones
    # Read by TimmBackbone (simformer/modeling/backbone/timm_backbone.py), MODEL.BACKBONE.NAME "TimmBackbone";
    # needs pip install -e .[timm].
    cfg.MODEL.TIMM = CN()
    # timm model name, e.g. "swin_tiny_patch4_window7_224", "convnext_tiny", "resnet50".
    cfg.MODEL.TIMM.NAME = "convnext_tiny"
    # Local state dict of the timm classification model (.pth / .bin / .safetensors), loaded by timm's
    # pretrained loader; "" = random initialisation (or MODEL.WEIGHTS). Never downloaded.
    cfg.MODEL.TIMM.PRETRAINED_FILE = ""
    # Feature maps given to the pixel decoder: res2..res5 = strides 4, 8, 16, 32.
    cfg.MODEL.TIMM.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth rate (Mask2Former: 0.3 for Swin-T/S/B/L).
    cfg.MODEL.TIMM.DROP_PATH_RATE = 0.0
    # 0 = train everything; 1 = freeze the stem; k >= 2 = freeze the stem and the stages up to res<k>.
    cfg.MODEL.TIMM.FREEZE_AT = 0
    # "" = the model's own normalisation; "FrozenBN", "SyncBN" or "BN" convert its BatchNorm layers.
    cfg.MODEL.TIMM.NORM = ""
