"""pretune: automatic fine-tuning and hyperparameter search for pretrained models."""

from pretune._version import __version__

from pretune.api import distill, predict, train, tune  # noqa: E402
from pretune.errors import PretuneError  # noqa: E402

__all__ = ["train", "tune", "predict", "distill", "PretuneError", "__version__"]
