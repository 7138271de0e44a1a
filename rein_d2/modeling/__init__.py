"""Models of rein-d2; importing a submodule registers what it defines."""
from . import backbone  # noqa: F401
