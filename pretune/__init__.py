"""pretune: automatic fine-tuning and hyperparameter search for pretrained models."""

__version__ = "0.1.0"
