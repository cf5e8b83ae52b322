"""The model kinds: one `ModelKind` per head, and everything that differs between them.

A kind says how a model is loaded (Auto class, peft task type, a new head or not), how examples are
encoded and batched, how its outputs are predicted and scored, and what the untrained baseline
predicts when the head is random (the training split's prior). Code elsewhere asks its kind; it
never branches on a kind's name. `plan.py` picks the kind of a run from its task type and model.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from medpeft.run.encode import encode_causal, encode_class, encode_label_set, encode_seq2seq, encode_tokens, token_collator
from medpeft.run.loss import labelled_positions_loss
from medpeft.run.metrics import (LABEL_THRESHOLD, entity_counts, generated, label_counts, score_classification,
                                 score_multilabel, score_ner, score_rouge, single_label)
from medpeft.run.predict import generate_texts, generation_rows, predict_probs, predict_tags


@dataclass(frozen=True)
class ModelKind:
    """How one kind of model is loaded, fed, trained, predicted and scored."""

    name: str
    auto_class: str  # the transformers Auto class that loads it
    peft_task_type: str  # peft's TaskType name
    new_head: bool  # a freshly initialised head: trained and saved with the adapter (modules_to_save)
    problem_type: str | None  # transformers problem_type of a classification head
    encode: Callable  # (ex, tokenizer, instruction, data_cfg, labels, for_generation) -> (row, source_cut, target_cut)
    collator: Callable  # (tokenizer, soft_prefix) -> a data collator that pads a batch
    predict: Callable  # (model, tokenizer, rows, test, labels, cfg, device, soft_prefix) -> outputs
    score: Callable  # (test, outputs, labels) -> (metrics, one dict per example: prediction and its scores)
    prior: Callable | None  # (train_rows, test, labels) -> outputs of the untrained baseline with a random head
    task_type: str  # the task type it serves (tasks/base.TASK_TYPES)
    pipeline_tag: str  # the Hugging Face Hub pipeline tag of such a model (a model card's metadata)
    placeholder: Callable  # (ex, labels) -> a stand-in target, so the encoder runs on a new text (`medpeft predict`)
    decide: Callable  # (output, labels) -> what `medpeft predict` writes for one input
    seq2seq_trainer: bool = False  # Seq2SeqTrainer rather than Trainer
    # The Trainer multiplies the loss by the number of processes when the forward takes **kwargs, expecting
    # it to divide by the global token count. Only causal LMs' loss_function does; T5 and the classification
    # heads take a plain mean, so under DDP their loss (and gradient) would be doubled.
    loss_kwargs: bool = False
    # (model, inputs, num_items_in_batch) -> (loss, outputs): the kind's own training loss; None: the model's
    loss: Callable | None = None
    reads_words: bool = False  # its input is a list of words (NER): a new text is split on whitespace
    prior_words: str | None = None  # what `prior` predicts, for the report (result.json evaluation.baseline)

    @property
    def decoder_only(self) -> bool:
        """A causal LM: the prompt and its continuation are one sequence."""
        return self.peft_task_type == "CAUSAL_LM"

    @property
    def generates(self) -> bool:
        """Its outputs are texts written by decoding (summaries), scored by ROUGE; not labels or tags."""
        return generated(self.task_type)

    @property
    def single_label(self) -> bool:
        """One label per example (classification): a confusion matrix applies, accuracy is its diagonal."""
        return single_label(self.task_type)


def kind_of_task(task_type: str) -> ModelKind:
    """A kind that serves `task_type`, for callers that hold a task type only (reports, cards): what the
    outputs are (texts, one label, label sets, tags) is the same for every kind of one task type."""
    for kind in KINDS.values():
        if kind.task_type == task_type:
            return kind
    raise KeyError(f"no model kind serves task type {task_type!r}; types: {', '.join(sorted({k.task_type for k in KINDS.values()}))}")


# --- collators ---------------------------------------------------------------------------


def pad_seq2seq(tokenizer, prefix: int = 0):
    """Pads inputs with the pad id and labels with -100."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)


def pad_inputs(tokenizer, prefix: int = 0):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


# --- predictions -------------------------------------------------------------------------


def generate(model, tokenizer, rows, test, labels, cfg, device, prefix=0, *, decoder_only: bool):
    return generate_texts(model, tokenizer, rows, decoder_only, decoding(cfg), generation_batch(model, rows, cfg, device), device)


def generation_batch(model, rows, cfg, device) -> int:
    """Texts per generate() call of a run's evaluation: generation.batch_size, else chosen by memory."""
    return cfg.generation.batch_size or generation_rows(model, rows, cfg.train.eval_batch_size, decoding(cfg), device)


def decoding(cfg) -> dict:
    """generate() keyword arguments of a run: its generation block, the budget defaulting to data.max_target_tokens."""
    g = cfg.generation
    return {"max_new_tokens": g.max_new_tokens or cfg.data.max_target_tokens, "num_beams": g.num_beams,
            "length_penalty": g.length_penalty, "no_repeat_ngram_size": g.no_repeat_ngram_size,
            "repetition_penalty": g.repetition_penalty}


def class_probs(model, tokenizer, rows, test, labels, cfg, device, prefix=0, *, multilabel: bool = False):
    return predict_probs(model, tokenizer, rows, cfg.train.eval_batch_size, device, multilabel)


def word_tags(model, tokenizer, rows, test, labels, cfg, device, prefix=0):
    return predict_tags(model, tokenizer, rows, [len(ex["text"]) for ex in test], labels, cfg.train.eval_batch_size,
                        device, prefix)


# --- the untrained baseline's prior --------------------------------------------------------


def majority_class(train_rows, test, labels) -> np.ndarray:
    """One-hot majority class of the training split (uniform without one: an evaluation-only task)."""
    if not train_rows:
        return np.full((len(test), len(labels)), 1.0 / len(labels))
    majority = np.bincount([r["labels"] for r in train_rows], minlength=len(labels)).argmax()
    return np.tile(np.eye(len(labels))[majority], (len(test), 1))


def label_shares(train_rows, test, labels) -> np.ndarray:
    """Each label's share of the training examples, as every example's probability."""
    if not train_rows:
        return np.full((len(test), len(labels)), 1.0 / len(labels))
    return np.tile(np.mean([r["labels"] for r in train_rows], axis=0), (len(test), 1))


def majority_tag(train_rows, test, labels) -> list[list[str]]:
    counts = np.bincount([t for r in train_rows for t in r["labels"] if t != -100], minlength=len(labels))
    return [[labels[int(counts.argmax())]] * len(ex["text"]) for ex in test]


# --- scores --------------------------------------------------------------------------------


def score_texts(test, texts, labels=None):
    metrics, per_example = score_rouge(texts, [ex["target"] for ex in test])
    return metrics, [{"prediction": t, "scores": s} for t, s in zip(texts, per_example)]


def predicted_class(probs, labels: list[str]) -> str:
    return labels[int(probs.argmax())]


def predicted_labels(probs, labels: list[str]) -> list[str]:
    return [name for name, p in zip(labels, probs) if p >= LABEL_THRESHOLD]


def score_classes(test, probs, labels):
    metrics = score_classification([labels.index(ex["target"]) for ex in test], probs, len(labels))
    rows = []
    for ex, p in zip(test, probs):
        predicted = predicted_class(p, labels)
        rows.append({"prediction": predicted, "correct": int(predicted == ex["target"]), "probs": rounded(p)})
    return metrics, rows


def score_label_sets(test, probs, labels):
    """A label is predicted when its probability is >= LABEL_THRESHOLD; `correct` is an exact match of the set."""
    metrics = score_multilabel([[int(name in ex["target"]) for name in labels] for ex in test], probs)
    rows = []
    for ex, p in zip(test, probs):
        predicted = predicted_labels(p, labels)
        rows.append({"prediction": predicted, "correct": int(sorted(predicted) == sorted(ex["target"])),
                     "probs": rounded(p), "counts": label_counts(set(ex["target"]), set(predicted))})
    return metrics, rows


def score_tags(test, tags, labels=None):
    metrics = score_ner([ex["target"] for ex in test], tags)
    rows = [{"prediction": t, "correct": int(t == ex["target"]), "counts": entity_counts(ex["target"], t)}
            for t, ex in zip(tags, test)]
    return metrics, rows


def rounded(probs) -> list[float]:
    return [round(float(x), 6) for x in probs]


# --- `medpeft predict` on new texts ---------------------------------------------------------


def no_text(ex, labels):
    return ""


def first_label(ex, labels):
    return labels[0]


def no_labels(ex, labels):
    return []


def first_label_per_word(ex, labels):
    return [labels[0]] * len(ex["text"])


def decide_text(output, labels) -> dict:
    return {"prediction": output}


def decide_class(probs, labels) -> dict:
    return {"prediction": predicted_class(probs, labels), "probs": dict(zip(labels, rounded(probs)))}


def decide_labels(probs, labels) -> dict:
    return {"prediction": predicted_labels(probs, labels), "probs": dict(zip(labels, rounded(probs)))}


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("seq2seq", "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", False, None, encode_seq2seq, pad_seq2seq,
              functools.partial(generate, decoder_only=False), score_texts, None, "summarization", "text2text-generation",
              no_text, decide_text, seq2seq_trainer=True),
    ModelKind("causal", "AutoModelForCausalLM", "CAUSAL_LM", False, None, encode_causal, pad_seq2seq,
              functools.partial(generate, decoder_only=True), score_texts, None, "summarization", "text-generation",
              no_text, decide_text, loss_kwargs=True, loss=labelled_positions_loss),
    ModelKind("seq_cls", "AutoModelForSequenceClassification", "SEQ_CLS", True, None, encode_class, pad_inputs,
              class_probs, score_classes, majority_class, "classification", "text-classification", first_label, decide_class,
              prior_words="the training split's majority class for every example"),
    ModelKind("multilabel", "AutoModelForSequenceClassification", "SEQ_CLS", True, "multi_label_classification",
              encode_label_set, pad_inputs, functools.partial(class_probs, multilabel=True), score_label_sets, label_shares,
              "multilabel", "text-classification", no_labels, decide_labels,
              prior_words="each label's share of the training examples as every example's probability"),
    ModelKind("token_cls", "AutoModelForTokenClassification", "TOKEN_CLS", True, None, encode_tokens, token_collator,
              word_tags, score_tags, majority_tag, "ner", "token-classification", first_label_per_word, decide_text,
              reads_words=True, prior_words="the training split's most frequent tag for every word"),
)}
