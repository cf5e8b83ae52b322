"""`medpeft predict`: finished runs on new texts (CSV or JSONL) -> one JSON line per input.

Each run predicts exactly as it predicted its test split: the same encoder (prompt format, chat
template, truncation), the same model kind's predict function and decoding settings, the same
batches (inputs sorted by length, as run/predict.py forms them). Several peft runs on one base
share one loaded model (peft's load_adapter / set_adapter); each run gets its own output field.
The input is checked before any model is loaded, and the output is written in one atomic rename.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.dist import local_device
from medpeft.errors import ConfigError, OutputError
from medpeft.methods import output_prefix_tokens
from medpeft.run.encode import encode_examples, source_that_fits
from medpeft.run.kinds import generation_batch
from medpeft.run.predict import length_batches
from medpeft.run.record import write_jsonl
from medpeft.tasks.base import data_error
from medpeft.tasks.user import RECORD_SUFFIXES, fields_of, raise_problems, read_records
from medpeft.use.runs import (FinishedRun, base_model_path, check_output_place, load_adapters, load_run_model, open_run,
                              pair_field_of, reads_pairs, run_instruction, share_base)

UNSEEN_WORDS = "unseen_words"  # NER: how many last words were past data.max_source_tokens (tagged "O", never read)
CHUNK_BATCHES = 4  # batches per progress-bar step; a multiple of the rows per call keeps the run's own batches


@dataclass
class Prediction:
    """What `predict_runs` did: inputs read, where the output went, and the truncation of each run."""

    inputs: int
    output: Path
    fields: dict[str, str | None]  # run id -> its output field (None: one run, fields at the top level)
    truncated: dict[str, int] = field(default_factory=dict)  # run id -> inputs longer than data.max_source_tokens
    max_tokens: dict[str, str] = field(default_factory=dict)  # run id -> where its inputs were cut, in words

    def lines(self) -> list[str]:
        """A report for the console: what was written, and each run's truncated inputs."""
        out = [f"wrote {self.inputs} predictions of {len(self.fields)} run(s) to {self.output}"]
        for run_id, count in self.truncated.items():
            if count:
                out.append(f"{run_id}: {count} of {self.inputs} inputs are longer than {self.max_tokens[run_id]} "
                           "and were cut there, as in training")
        return out


def predict_runs(run_dirs, input_path, output_path, *, text_field: str | None = None, id_field: str | None = None,
                 pair_field: str | None = None, batch_size: int | None = None, online: bool = False, progress: bool = True) -> Prediction:
    """Predict every input with every run; write one JSON line per input to `output_path` (atomically)."""
    runs = open_runs(run_dirs)
    input_path, output_path = Path(input_path), Path(output_path)
    text_field = text_field or default_text_field(runs)
    id_field = id_field or default_id_field(runs)
    pair_field = resolve_pair_field(runs, pair_field)
    inputs = read_inputs(input_path, text_field, id_field, pair_field)
    check_output(input_path, output_path)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    instructions = {run.name: run_instruction(run, online) for run in runs}  # may load a task: fail before any model
    for run in runs:
        if not run.is_full:  # a missing, empty or changed base fails now, not after other runs predicted
            base_model_path(run, online)
    fields = {run.name: (None if len(runs) == 1 else run.name) for run in runs}
    result = Prediction(len(inputs), output_path, fields)
    outputs = {}
    for group in model_groups(runs):
        names = [f"run{i}" for i in range(len(group))]  # peft adapter names cannot hold the dots of run ids
        model, tokenizer = load_adapters(group, names, online) if share_base(group[0]) else load_run_model(group[0], online)
        for run, name in zip(group, names):
            if share_base(run):
                model.set_adapter(name)
            outputs[run.name], result.truncated[run.name], cut_at = predict_inputs(
                model, tokenizer, run, inputs, instructions[run.name], batch_size, progress)
            given = run.config.data.max_source_tokens
            result.max_tokens[run.name] = (f"data.max_source_tokens={given} tokens" if cut_at == given else
                                           f"{cut_at} tokens (data.max_source_tokens={given}, less the soft prompt's positions)")
        del model
    write_jsonl(output_path, output_rows(inputs, runs, outputs, fields))
    return result


def open_runs(run_dirs) -> list[FinishedRun]:
    runs = [open_run(d) for d in run_dirs]
    names = [run.name for run in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"run {twice[0]} is given twice; give each run once")
    return runs


def default_text_field(runs: list[FinishedRun]) -> str:
    """The field the runs were trained on (your own data's text_field), else `text`; runs that disagree need --text-field."""
    found = {fields_of(r.config.user_data)[0] if r.config.user_data else "text" for r in runs}
    if len(found) > 1:
        raise ConfigError(f"the runs were trained on different text fields ({', '.join(sorted(found))}); "
                          "pass --text-field with the input's column")
    return found.pop()


def resolve_pair_field(runs: list[FinishedRun], pair_field: str | None) -> str | None:
    """The input's second-text column when a run reads pairs (--pair-field, else the run's own
    pair_field, else `pair`); None when no run does."""
    pair_runs = [run for run in runs if reads_pairs(run)]
    if not pair_runs:
        if pair_field:
            raise ConfigError(f"--pair-field {pair_field!r} given, but no run was trained on text pairs; leave it out")
        return None
    found = {pair_field_of(run) for run in pair_runs}
    if pair_field is None and len(found) > 1:
        raise ConfigError(f"the runs were trained with different second-text fields ({', '.join(sorted(found))}); "
                          "pass --pair-field with the input's column")
    return pair_field or found.pop()


def default_id_field(runs: list[FinishedRun]) -> str:
    """The id column of the data the first run was trained on (your own data's id_field), else `id`."""
    user = runs[0].config.user_data or {}
    return user.get("id_field") or "id"


def model_groups(runs: list[FinishedRun]) -> list[list[FinishedRun]]:
    """Runs one loaded base serves (see runs.share_base), in first-seen order; each full or untrained run alone."""
    groups: dict[object, list[FinishedRun]] = {}
    for run in runs:
        groups.setdefault(share_base(run) or run.name, []).append(run)
    return list(groups.values())


def read_inputs(path: Path, text_field: str, id_field: str = "id", pair_field: str | None = None) -> list[dict]:
    """{line, id, text, pair} per record of a CSV or JSONL file; each problem names the file, the line and the fix.

    `pair` is the second text of a run trained on text pairs, from `pair_field` (see resolve_pair_field),
    required in every record; None: the runs read one text and no second one is taken."""
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise data_error(str(path), "the input must be a .csv, .tsv or .jsonl file", "save it as CSV or JSON lines (UTF-8)")
    if not path.is_file():
        raise data_error(str(path), "no such file", "check the path given to --input")
    records = read_records(path)
    if not records:
        raise data_error(str(path), "the file has no records", "add one record (one text) per line")
    problems, inputs = [], []
    for line, record in records:
        problem = text_problem(record, text_field) or pair_problem(record, pair_field)
        if problem is not None:
            problems.append(f"{path}:{line}: {problem[0]}. Fix: {problem[1]}")
            continue
        text = record[text_field]
        ex_id = record.get(id_field)
        inputs.append({"line": line, "id": None if ex_id in (None, "") else ex_id,
                       "text": text.strip() if isinstance(text, str) else text,
                       **({"pair": record[pair_field].strip()} if pair_field else {})})
    raise_problems(problems)
    return inputs


def pair_problem(record: dict, pair_field: str | None) -> tuple[str, str] | None:
    """(problem, fix) of one record's second text, or None (also when the runs read no second text)."""
    if pair_field is None:
        return None
    if pair_field not in record:
        return (f"no field {pair_field!r}, the second text the run was trained on (the record has "
                f"{', '.join(map(repr, record)) or 'no fields'})",
                f"add {pair_field!r} to every record (it may be empty), or pass --pair-field with the column that holds it")
    if not isinstance(record[pair_field], str):
        return f"field {pair_field!r} holds {type(record[pair_field]).__name__}, not text", "write the second text as a string"
    return None


def text_problem(record: dict, text_field: str) -> tuple[str, str] | None:
    """(problem, fix) of one record's text, or None: a string, or (NER) a list of words."""
    if text_field not in record:
        return (f"no field {text_field!r} (the record has {', '.join(map(repr, record)) or 'no fields'})",
                f"add {text_field!r} to every record, or pass --text-field with the column that holds the text")
    text = record[text_field]
    if isinstance(text, list):
        if text and all(isinstance(word, str) and word.strip() for word in text):
            return None
        return f"field {text_field!r} is a list, but not of non-empty words", "give a list of words, or the text as one string"
    if not isinstance(text, str):
        return f"field {text_field!r} holds {type(text).__name__}, not text", "write the text as a string"
    if not text.strip():
        return f"empty text in field {text_field!r}", "fill in the text or remove the line"
    return None


def check_output(input_path: Path, output_path: Path) -> None:
    """The output can be written where it goes (checked before any model loads, not after every prediction)."""
    if output_path.resolve() == input_path.resolve():
        raise data_error(str(output_path), "the output would replace the input", "write the predictions to another file")
    if output_path.is_dir():
        raise OutputError(f"--output {output_path} is a folder; give the file to write, e.g. "
                          f"{output_path / 'predictions.jsonl'}")
    check_output_place(output_path, "--output")


def run_examples(run: FinishedRun, inputs: list[dict]) -> list[dict]:
    """The inputs as the run's task examples: NER takes words (a string is split on whitespace), the others text;
    the kind's placeholder stands in for the (unknown) target, so the training-time encoders run unchanged."""
    words = run.kind.reads_words
    examples = []
    for inp in inputs:
        text = inp["text"]
        text = (text.split() if isinstance(text, str) else text) if words else (" ".join(text) if isinstance(text, list) else text)
        ex = {"id": inp["id"], "text": text, **({"pair": inp["pair"]} if reads_pairs(run) else {})}
        examples.append(dict(ex, target=run.kind.placeholder(ex, run.labels)))
    return examples


def predict_inputs(model, tokenizer, run: FinishedRun, inputs: list[dict], instruction: str, batch_size: int | None,
                   progress: bool) -> tuple[list[dict], int, int]:
    """One output dict per input for one run, how many inputs were longer than its truncation, and that
    truncation in tokens (data.max_source_tokens, or less where a soft prompt takes positions)."""
    from tqdm.auto import tqdm

    cfg = run.config
    if batch_size:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_batch_size=batch_size))
    examples = run_examples(run, inputs)
    peft_config = model.peft_config[model.active_adapter] if share_base(run) else None
    data_cfg, _ = source_that_fits(cfg.data, model, peft_config, run.kind.decoder_only)  # cut as the run's own inputs were
    rows, stats = encode_examples(examples, tokenizer, run.kind, instruction, data_cfg, run.labels, for_generation=True)
    prefix = output_prefix_tokens(peft_config)
    per_call = cfg.train.eval_batch_size
    if run.kind.generates:  # texts per generate() call as the run's evaluation chose them for these rows, in every chunk:
        per_call = generation_batch(model, rows, cfg, local_device())  # under bf16 a text can change with its batch
        cfg = dataclasses.replace(cfg, generation=dataclasses.replace(cfg.generation, batch_size=per_call))
    outputs = [None] * len(rows)
    with tqdm(total=len(rows), desc=run.name, unit="text", disable=not progress) as bar:
        for chunk in length_batches(rows, per_call * CHUNK_BATCHES):
            part = run.kind.predict(model, tokenizer, [rows[i] for i in chunk], [examples[i] for i in chunk], run.labels,
                                    cfg, local_device(), prefix)
            for i, output in zip(chunk, part):
                outputs[i] = output
            bar.update(len(chunk))
    decided = [run.kind.decide(output, run.labels) for output in outputs]
    if run.kind.reads_words:  # a word past the cut has no labelled sub-word: the model never saw it, its "O" is a filler
        for out, row, ex in zip(decided, rows, examples):
            seen = sum(label != -100 for label in row["labels"])
            if seen < len(ex["text"]):
                out[UNSEEN_WORDS] = len(ex["text"]) - seen
    return decided, stats["truncated_sources"], data_cfg.max_source_tokens


def output_rows(inputs: list[dict], runs: list[FinishedRun], outputs: dict, fields: dict) -> list[dict]:
    """One row per input: its id (else its line), then each run's output (under the run's field when several)."""
    rows = []
    for i, inp in enumerate(inputs):
        row = {"id": inp["id"]} if inp["id"] is not None else {"line": inp["line"]}
        for run in runs:
            if fields[run.name] is None:
                row.update(outputs[run.name][i])
            else:
                row[fields[run.name]] = outputs[run.name][i]
        rows.append(row)
    return rows
