"""fastres: fast, reproducible CIFAR-10 ResNet training and ablations.

Python API (the CLI is a thin layer over it)::

    import fastres
    cfg = fastres.get_preset("quick").replace(epochs=2)
    summary = fastres.train(cfg)
"""

from .config import TrainConfig
from .errors import ConfigError, FastresError
from .evaluation import evaluate_run
from .models import build_model, model_names
from .prepare import prepare_data
from .presets import PRESETS, get_preset
from .train import train

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "FastresError",
    "TrainConfig",
    "build_model",
    "evaluate_run",
    "get_preset",
    "model_names",
    "prepare_data",
    "train",
    "__version__",
]
