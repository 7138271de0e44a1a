"""rein-d2: Rein for Detectron2. Importing it registers the models, datasets and evaluators."""
from . import modeling  # noqa: F401  (registers backbones and meta-architectures)
from . import data, evaluation  # noqa: F401  (registers the DGSS datasets)
from .config import add_rein_config

__all__ = ["add_rein_config"]
