"""Deployment without detectron2: run a model exported by ``simformer-export`` (:mod:`simformer.engine.export`).

Only NumPy, Pillow and onnxruntime are needed (:class:`.onnx_predictor.OnnxPredictor`)."""
