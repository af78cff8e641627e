"""Shared test helpers: the tiny model-size overrides every training / inference test starts from."""


def tiny_model(num_classes=None, queries=6, mask_dim=32, dec_layers=2):
    """KEY VALUE overrides that shrink the synthetic R18 MaskFormer / SimFormer configs to a test-sized model:
    32-d pixel decoder and queries, 64-d FFN, ``dec_layers`` decoder layers, ``queries`` queries, and
    ``num_classes`` classes when given."""
    opts = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes)] if num_classes is not None else []
    return opts + [
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
        "MODEL.SEM_SEG_HEAD.MASK_DIM", str(mask_dim),
        "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", str(queries),
        "MODEL.MASK_FORMER.DEC_LAYERS", str(dec_layers),
    ]  # fmt: skip
