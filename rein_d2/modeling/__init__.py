"""Models of rein-d2; importing a submodule registers what it defines."""
from . import backbone  # noqa: F401
from . import pixel_decoder  # noqa: F401
from . import transformer_decoder  # noqa: F401
from . import meta_arch  # noqa: F401
