"""Deploying a trained model: ONNX export with a self-check (``export``, torch) and prediction
with ONNX Runtime (``runtime``, which imports neither torch nor transformers).

This package sits above ``training/`` (the export checks itself against the torch model) and
below ``cli/``; nothing in it imports the other layers' packages eagerly, so that
``pretune.deploy.runtime`` stays light.
"""
