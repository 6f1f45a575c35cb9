"""pretune: automatic fine-tuning and hyperparameter search for pretrained models."""

__version__ = "0.1.0"

from pretune.api import predict, train, tune  # noqa: E402
from pretune.errors import PretuneError  # noqa: E402

__all__ = ["train", "tune", "predict", "PretuneError", "__version__"]
