"""Hub data sets (need --online): the summarization study's PubMed set and NER in the tokens/ner_tags layout.

Loaded through `datasets.load_dataset`. Repositories that still ship a loading script (which
`datasets` >= 4 no longer runs) are read from the hub's automatic parquet export instead.
"""
from __future__ import annotations

from typing import Any

from medpeft.errors import ConfigError
from medpeft.tasks.base import TaskData, offline_task_names, register_task, split_predefined

PARQUET_EXPORT = "refs/convert/parquet"


def require_online(task: str, online: bool) -> None:
    """Fail fast offline, naming the tasks that do work offline."""
    if not online:
        raise ConfigError(
            f"task {task!r} downloads its data from the hub and medpeft is offline by default; pass --online "
            f"(plan_run(cfg, online=True) in Python) to allow it. Offline tasks: {', '.join(offline_task_names())}")


def load_hub_dataset(repo: str, config: str | None):
    """`datasets.load_dataset(repo, config)`, or its parquet export when the repository is script-based."""
    from datasets import load_dataset

    try:
        return load_dataset(repo, config)
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        return load_dataset(repo, config, revision=PARQUET_EXPORT)


def hub_pools(dataset, make_example) -> dict[str, list[dict]]:
    """train/validation/test pools of examples from a DatasetDict (validation only if the source has it)."""
    pools = {}
    for split in ("train", "validation", "test"):
        if split in dataset:
            pools[split] = [make_example(split, i, row) for i, row in enumerate(dataset[split])]
    return pools


def ner_task_data(name: str, dataset, data_cfg: Any) -> TaskData:
    """A `tokens`/`ner_tags` data set (tag ids named by the ClassLabel feature) as an ner task."""
    tag_names = list(dataset["train"].features["ner_tags"].feature.names)
    pools = hub_pools(dataset, lambda split, i, row: {
        "id": f"{split}-{i:06d}", "text": list(row["tokens"]), "target": [tag_names[t] for t in row["ner_tags"]]})
    return TaskData(name, "ner", split_predefined(name, pools, data_cfg), tag_names,
                    "Tag the named entities in this sentence.")


@register_task("pubmed-summarization", type="summarization",
               description="Write the abstract of a PubMed article (ccdv/pubmed-summarization, the summarization study's data set).",
               source="hub: ccdv/pubmed-summarization (document config; needs --online)",
               license="see the data set card (Cohan et al. 2018 arXiv/PubMed)", online=True)
def load_pubmed_summarization(data_cfg: Any, online: bool) -> TaskData:
    """The hub's own train/validation/test splits, each shuffled and cut to the configured size."""
    require_online("pubmed-summarization", online)
    dataset = load_hub_dataset("ccdv/pubmed-summarization", "document")
    pools = hub_pools(dataset, lambda split, i, row: {"id": f"{split}-{i:06d}", "text": row["article"], "target": row["abstract"]})
    return TaskData("pubmed-summarization", "summarization", split_predefined("pubmed-summarization", pools, data_cfg),
                    None, "Write the abstract of this scientific article.")


@register_task("ncbi-disease", type="ner",
               description="Tag disease mentions in PubMed sentences (NCBI disease corpus, BIO tags; entity-level F1).",
               source="hub: ncbi/ncbi_disease (needs --online)", license="see the data set card", online=True)
def load_ncbi_disease(data_cfg: Any, online: bool) -> TaskData:
    require_online("ncbi-disease", online)
    return ner_task_data("ncbi-disease", load_hub_dataset("ncbi/ncbi_disease", None), data_cfg)
