"""e2urec_fast: fast, faithful E2URec unlearning for LLM recommenders."""

__version__ = "0.1.0"

from .api import ForgetResult, forget  # noqa: E402,F401  (the Python API; the CLI is a shell over it)
from .config import Config, preset, replace_fields  # noqa: E402,F401  (the typed config)
from .errors import UserError  # noqa: E402,F401
