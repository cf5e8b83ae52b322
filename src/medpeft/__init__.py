"""medpeft: compare parameter-efficient fine-tuning methods with full fine-tuning on medical text."""
from medpeft import methods, models, tasks  # noqa: F401  (fill the registries; no work is done)

__version__ = "0.1.0"
