"""Tasks: named loaders that turn a data source into train/validation/test examples.

Importing this package registers every built-in task (cheap: data is read on first load):
MEDLINE tasks, the PMC articles, the clinical benchmarks packaged in wheels, the hub data
sets (need --online), and the user's own files (`task: {type, path, ...}`).
"""
from medpeft.errors import DataError
from medpeft.tasks.base import (SPLIT_KEYS, SPLITS, TASK_TYPES, TaskData, TaskSpec, check_task_data,
                                load_task, offline_task_names, register_task, sample_per_class, sort_key,
                                split_by_group, split_eval_only, split_examples, split_predefined, split_sizes)
from medpeft.tasks.medline_tasks import (CONCLUSION_SOURCE_CATEGORIES, MEDLINE_LICENSE, MEDLINE_SOURCE, MESH_TOP_K,
                                         RCT_LABELS, conclusion_examples, mesh_examples, rct_abstracts,
                                         split_sentences, structured_abstracts, title_examples)
from medpeft.tasks import clinical, hub, pmc  # noqa: E402,F401  (registers their tasks)
from medpeft.tasks.user import check_user_task, user_task_spec

__all__ = [
    "SPLIT_KEYS", "SPLITS", "TASK_TYPES", "DataError", "TaskData", "TaskSpec", "check_task_data",
    "load_task", "offline_task_names", "register_task", "sample_per_class", "sort_key", "split_by_group", "split_eval_only",
    "split_examples", "split_predefined", "split_sizes", "CONCLUSION_SOURCE_CATEGORIES", "MEDLINE_LICENSE",
    "MEDLINE_SOURCE", "MESH_TOP_K", "RCT_LABELS", "conclusion_examples", "mesh_examples", "rct_abstracts",
    "split_sentences", "structured_abstracts", "title_examples", "check_user_task", "user_task_spec",
]
