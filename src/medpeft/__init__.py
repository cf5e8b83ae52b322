"""medpeft: compare parameter-efficient fine-tuning methods with full fine-tuning on medical text.

Importing medpeft does no work. The registries (medpeft.registry: MODELS, METHODS, TASKS) are filled by
the modules that define their entries, medpeft.models, medpeft.methods and medpeft.tasks; a module that
reads a registry imports the one that fills it (plan.py imports all three), and `load_registries()`
fills all three at once (the CLI's `medpeft list`, a notebook, the tests).
"""

__version__ = "0.1.0"


def load_registries() -> None:
    """Fill MODELS, METHODS and TASKS with medpeft's own entries (importing them registers them; cheap:
    no model or data is read)."""
    from medpeft import methods, models, tasks  # noqa: F401
