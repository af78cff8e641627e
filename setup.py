"""Install simformer (weak-shot semantic segmentation on detectron2) and ssa_adapter.

detectron2 itself is not on PyPI: `bash tools/setup_env.sh` installs it (see README, "Install").
"""
from setuptools import find_packages, setup

setup(
    name="simformer",
    version="0.1.0",
    description="Weak-shot semantic segmentation (SimFormer, SSA) on detectron2",
    packages=find_packages(include=("simformer*", "ssa_adapter*")),
    python_requires=">=3.9",
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools",
        "numpy",
        "opencv-python-headless",
        "scipy",
        "Pillow",
        "tqdm",
        "tabulate",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout", "hypothesis", "timm>=1.0", "onnx>=1.16", "onnxruntime>=1.18"],
        # Swin / ConvNeXt / ... backbones (MODEL.BACKBONE.NAME "TimmBackbone")
        "timm": ["timm>=1.0"],
        # simformer-export --format onnx and simformer-predict --onnx
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        # peer model of benchmarks/bench_vs_hf_maskformer.py only (transformers does not pull in torch)
        "bench": ["transformers>=4.40"],
    },
    entry_points={
        "console_scripts": [
            "simformer-train=simformer.tools.train:main",
            "simformer-pipeline=simformer.tools.pipeline:main",
            "simformer-predict=simformer.tools.predict:main",
            "simformer-plot=simformer.tools.plot:main",
            "simformer-convert-weights=simformer.tools.convert_weights:main",
            "simformer-export=simformer.tools.export:main",
            "simformer-tags=simformer.tools.tags:main",
        ],
    },
)
