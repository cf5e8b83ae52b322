"""The model card: README.md in every run's adapter/ (replacing peft's empty template) and in every export.

It has the Hugging Face metadata header (library_name, base_model, tags, metrics, license), then what a
team needs to judge and use the model: base model, method and full config, parameters, task and data,
test metrics with their spread over seeds, the grid's full fine-tuning and untrained rows, the exact
prompt format, a loading snippet, versions, and limits. It is built from result.json and the task's
description only, so it never holds training or test text.
"""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from medpeft.config import SIZE_KEYS, USER_SIZES_KEY
from medpeft.errors import MedpeftError
from medpeft.files import write_atomic
from medpeft.methods import Role
from medpeft.registry import MODELS, TASKS
from medpeft.report.frame import aggregate
from medpeft.report.tables import COSTS, format_score, md_code, md_fence, md_text
from medpeft.run.encode import ANSWER_CUE, ANSWER_CUE_FORMAT, CHAT_TEMPLATE, source_text
from medpeft.run.kinds import decoding
from medpeft.run.metrics import PRIMARY_METRIC, metric_label
from medpeft.run.record import RunResult, load_results
from medpeft.use.runs import TEXT_ONLY, FinishedRun, open_run, pair_field_of, reads_pairs, run_instruction

log = logging.getLogger("medpeft")

SOURCES = {"packaged": "packaged offline with medpeft", "hub": "Hugging Face hub", "random": "tiny random test model"}
PLACEHOLDER = "{text}"
SMALL_TEST = 200  # test examples below which the card warns that one score is a rough estimate
NOT_CLINICAL = "Not validated for clinical decisions."


def write_card(run_dir, grid_results: list[RunResult] | None = None, *, folder=None, export: dict | None = None,
               frame=None) -> Path:
    """Write the run's card to `folder`/README.md (default adapter/); grid results add seeds and comparison rows
    (`frame`: their report frame, when the caller has it already)."""
    run = open_run(run_dir)
    path = Path(folder or run.adapter_dir) / "README.md"
    results = grid_results or []
    write_atomic(path, card_text(run, grid_frame(run.result, results, frame), {g.run_id: g for g in results}, export))
    return path


def write_cards(grid_dir) -> dict[str, Path]:
    """A card in the adapter/ of every succeeded run of a grid (tuning trials and untrained runs have none)."""
    results = load_results(Path(grid_dir))
    frame = aggregate(results)  # once for the grid: every card reads its rows
    written = {}
    for result in results:
        if not result.ok or result.tuning_trial or not (result.run_dir / "adapter").is_dir():
            continue
        try:  # a card is derived from the run: failing to write one never fails the grid
            written[result.run_id] = write_card(result.run_dir, results, frame=frame)
        except (MedpeftError, OSError, ValueError, KeyError) as err:
            log.warning("model card of %s not written (%s: %s)", result.run_id, type(err).__name__, err)
    return written


def grid_frame(result: RunResult, grid: list[RunResult], frame=None):
    """The report's frame (report/frame.py: one row per setting, seeds over runs) of the grid the run is in,
    or of the run alone when the grid's results do not hold it."""
    if frame is not None and any(result.run_id in ids for ids in frame.get("run_ids", [])):
        return frame
    in_grid = any(g.run_id == result.run_id for g in grid)
    return aggregate(grid if in_grid else [result])


def own_row(result: RunResult, frame):
    """The frame's row of the run's setting: the run and its other seeds."""
    return frame[frame["run_ids"].map(lambda ids: result.run_id in ids)].iloc[0]


def card_text(run: FinishedRun, frame, runs_by_id: dict, export: dict | None) -> str:
    r = run.result
    primary = PRIMARY_METRIC.get(r.task_type)
    score = f" Test {metric_label(primary)}: {points(r.metrics.get(primary))} (×100)." if primary in r.metrics else ""
    # names, labels and paths a user wrote: shown as written (md_code, md_text), never run as HTML by a viewer
    title = (f"# {md_text(r.run_id)}\n\n{md_code(r.method)} on {md_code(r.model)} for the task {md_code(r.task)} "
             f"({r.task_type}), trained and evaluated with medpeft.{score}")
    parts = [metadata(run, export), title, export_section(export), base_section(run), method_section(run),
             data_section(run), metrics_section(run, frame), comparison_section(run, frame, runs_by_id), prompt_section(run),
             loading_section(run, export), versions_section(r), limits_section(run)]
    return "\n\n".join(p for p in parts if p) + "\n"


def base_identity(run: FinishedRun) -> tuple[str, str]:
    """(hub id or name of the base model, its license) for the metadata header."""
    model, path = run.config.model, run.result.model_path or ""
    spec = MODELS.get(model)
    if spec is not None and spec.hub_id:
        return spec.hub_id, spec.license
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return path, "other"
    return model, "other"


def metadata(run: FinishedRun, export: dict | None) -> str:
    plain = run.is_full or (export or {}).get("kind") == "merged"
    base, license_ = base_identity(run)
    meta = {"library_name": "transformers" if plain else "peft", "base_model": base, "license": license_}
    if license_ == "other":
        meta["license_name"] = "see-base-model-and-data"
    meta["tags"] = ["medpeft", run.config.method, run.result.task, run.result.task_type, "medical"]
    meta["metrics"] = list(run.result.metrics)
    meta["pipeline_tag"] = run.kind.pipeline_tag
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def export_section(export: dict | None) -> str:
    if not export:
        return ""
    what = dict(merged="the adapter merged into its base (peft `merge_and_unload`): a standalone transformers folder "
                       "with the tokenizer; it loads without peft",
                adapter="the peft adapter with the tokenizer and `base_model.json`, a pinned reference to its base "
                        "model (a prompt-learning adapter adds soft tokens to every input and cannot be merged)",
                full="the whole fine-tuned model (full fine-tuning) with its tokenizer")[export["kind"]]
    return f"## This export\n\n{what}; weights in {export.get('dtype') or 'the dtype the run saved'}."


def base_section(run: FinishedRun) -> str:
    model, path = run.config.model, run.result.model_path
    spec = MODELS.get(model)
    source = f"{spec.description} ({SOURCES.get(spec.source, spec.source)})" if spec else (
        "a local model folder" if path and Path(path).is_absolute() else "a hub model")
    lines = [f"- {md_code(model)}: {md_text(source)}", f"- loaded from: {md_code(path)}"]
    if spec is not None and spec.hub_id:
        lines.append(f"- original: `{spec.hub_id}` (license {spec.license})")
    return "## Base model\n\n" + "\n".join(lines)


def method_section(run: FinishedRun) -> str:
    cost = run.result.cost
    params = (f"Trainable parameters: {cost.trainable_params or 0:,} of {cost.total_params or 0:,} "
              f"({COSTS['trainable_pct'].format(cost.trainable_pct or 0.0)}); "
              f"weights stored: {COSTS['adapter_bytes'].format(cost.adapter_bytes or 0)}.")
    config = marked_unused_sizes(yaml.safe_dump(run.result.config, sort_keys=False, allow_unicode=True).strip(),
                                 run.result.config)
    return (f"## Method\n\n`{run.config.method}`: {run.method.description}. {params}\n\n"
            f"The run's full config (result.json `config`):\n\n{md_fence(config, 'yaml')}")


def marked_unused_sizes(text: str, config: dict) -> str:
    """The config's YAML with each data.*_size that your own file's splits made unused marked so (it stays in
    the config, which names the run, but the model never saw a split of that size)."""
    user = config.get("user_data")
    if not isinstance(user, dict):
        return text
    named = set(user.get(USER_SIZES_KEY) or ())
    unused = {f"  {key}: " for key in SIZE_KEYS if key not in named}
    lines, in_data = [], False
    for line in text.splitlines():
        in_data = line == "data:" or (in_data and line.startswith("  "))
        lines.append(f"{line}  # not used: your file's own split" if in_data and any(line.startswith(u) for u in unused) else line)
    return "\n".join(lines)


def task_facts(run: FinishedRun) -> tuple[str, str, str]:
    """(description, source, license) of the task, from the registry or your own data's settings (no data read)."""
    user = run.config.user_data
    if user is not None:
        return f"your own {user.get('type')} data", f"file {user.get('path')}", "your own data (its terms apply)"
    spec = TASKS[run.config.task] if run.config.task in TASKS else None
    return (spec.description, spec.source, spec.license) if spec else ("unregistered task", "unknown", "unknown")


def data_section(run: FinishedRun) -> str:
    r, data = run.result, run.result.inputs
    description, source, license_ = task_facts(run)
    sizes = (f"train {or_unknown(data.train.examples)}, validation {or_unknown(data.validation_examples)}, "
             f"{r.evaluated_on} {or_unknown(data.split(r.evaluated_on).examples)}")
    lines = [f"- task {md_code(r.task)} ({r.task_type}): {md_text(description)}", f"- data source: {md_text(source)}",
             f"- license: {md_text(license_)}", f"- split sizes: {sizes}"]
    if run.labels:
        lines.append(f"- labels, in the model's output order: {', '.join(map(md_code, run.labels))}")
    lines += [f"- note: {md_text(w)}" for w in data.warnings]
    return "## Task and data\n\n" + "\n".join(lines)


def or_unknown(count) -> str:
    return "?" if count is None else str(count)


def points(value) -> str:
    return format_score(value, missing="n/a")


def metrics_section(run: FinishedRun, frame) -> str:
    r, row = run.result, own_row(run.result, frame)
    rows = ["| metric | this run | mean ± std over seeds | 95% CI over seeds | seeds |", "|---|---|---|---|---|"]
    for key, value in r.metrics.items():
        n = row.get(f"{key}_n")
        if n is None or n != n:
            continue
        mean, std, (lo, hi) = row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_ci"]
        spread = format_score(mean, std) if n > 1 else f"{points(mean)} (one seed)"
        rows.append(f"| {metric_label(key)} | {points(value)} | {spread} | "
                    f"{f'{points(lo)} – {points(hi)}' if n > 1 else 'n/a (one seed)'} | {int(n)} |")
    n_test = or_unknown(r.inputs.split(r.evaluated_on).examples)
    return (f"## Test metrics\n\nOn the {r.evaluated_on} split ({n_test} examples), ×100; the seeds are the runs of "
            "this setting in the grid (CI: Student t over seeds).\n\n" + "\n".join(rows))


def same_test(a: RunResult, b: RunResult) -> bool:
    """Scored on the same test examples: task, model and the settings that draw the test split."""
    keys = ("test_size", "split_seed")
    return (a.task, a.model, a.evaluated_on) == (b.task, b.model, b.evaluated_on) and all(
        a.config.get("data", {}).get(k) == b.config.get("data", {}).get(k) for k in keys) and \
        a.config.get("user_data") == b.config.get("user_data")


def comparison_section(run: FinishedRun, frame, runs_by_id: dict) -> str:
    """The run's setting beside the grid's full fine-tuning and untrained rows on the same test examples."""
    r, row = run.result, own_row(run.result, frame)
    primary = PRIMARY_METRIC.get(r.task_type)
    others = [o for _, o in frame.iterrows() if o["role"] in (Role.FULL, Role.BASELINE) and o["run_ids"] != row["run_ids"]
              and same_test(runs_by_id[o["run_ids"][0]], r)]
    if not others or primary is None:
        return ""
    rows = [f"| run | seeds | {metric_label(primary)} (mean) | trainable % |", "|---|---|---|---|"]
    for label, member in [(f"this setting ({r.method})", row)] + [(group_label(o), o) for o in others]:
        pct = member.get("trainable_pct_mean")
        rows.append(f"| {md_text(label)} | {member['seeds']} | {points(member.get(f'{primary}_mean'))} | "
                    f"{COSTS['trainable_pct'].format(pct) if pct is not None and pct == pct else 'n/a'} |")
    return ("## Compared with full fine-tuning and the untrained baseline\n\nThe grid's rows scored on the same "
            "test examples (×100).\n\n" + "\n".join(rows))


def group_label(row) -> str:
    name = "full fine-tuning" if row["role"] == Role.FULL else "untrained baseline"
    return f"{name} ({row['variant']})" if row["variant"] else name


FORMAT_NOTES = {
    CHAT_TEMPLATE: "one user turn holding the instruction, a blank line and the text, in the tokenizer's chat template "
                   "with its generation prompt (rendered below; tokenized without adding special tokens). The text is "
                   "cut to its first {n} tokens before templating, so the template itself is never cut; the reply "
                   "ends with the template's end-of-turn token.",
    ANSWER_CUE_FORMAT: "the instruction, a blank line, the text cut to its first {n} tokens, then an answer cue; no "
                       "special tokens are added.",
    "instruction+source": "the instruction, a blank line and the text, tokenized with the tokenizer's special tokens "
                          "and cut to {n} tokens as a whole (the instruction counts).",
    TEXT_ONLY: "the text alone (NER: its words, as given), tokenized with the tokenizer's special tokens and cut to "
               "{n} tokens.",
}


def pair_note(run: FinishedRun, field: str) -> str:
    """What the run's second text holds: its built-in task's own words, else the field it is read from."""
    spec = TASKS[run.config.task] if run.config.task in TASKS and not run.config.user_data else None
    return (spec.pair if spec else "") or field


def prompt_template(run: FinishedRun, fmt: str, instruction: str) -> str:
    """The prompt the model sees, with `{text}` where the input goes (special tokens of a chat template included)."""
    if fmt == CHAT_TEMPLATE:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(run.adapter_dir) if run.is_full else run.result.model_path)
        return tokenizer.apply_chat_template([{"role": "user", "content": source_text(instruction, PLACEHOLDER)}],
                                             add_generation_prompt=True, tokenize=False)
    if fmt == ANSWER_CUE_FORMAT:
        return source_text(instruction, PLACEHOLDER) + ANSWER_CUE
    return PLACEHOLDER if fmt == TEXT_ONLY else source_text(instruction, PLACEHOLDER)


def prompt_section(run: FinishedRun) -> str:
    fmt = run.result.inputs.prompt_format or "unknown"
    try:
        template = prompt_template(run, fmt, run_instruction(run))
    except (MedpeftError, OSError, ValueError) as err:  # e.g. the base model's folder is gone from this machine
        template = f"(not rendered here: {err})"
    note = FORMAT_NOTES.get(fmt, "not recorded by this run.").format(n=run.config.data.max_source_tokens)
    text = f"## Prompt format\n\n{md_code(fmt)}: {note}\n\n{md_fence(template, 'text')}"
    if reads_pairs(run):
        field = pair_field_of(run)
        text += (f"\n\nEach input is a text pair: the text, then a second text ({md_text(pair_note(run, field))}). "
                 "An encoder with a separator token reads them as two segments with their segment ids, the longer cut "
                 "first; any other model reads the two joined by a blank line. `medpeft predict` takes the second text "
                 f"from `--pair-field` (default {md_code(field)}).")
    if run.kind.generates:
        chosen = decoding(run.config)
        settings = ", ".join(f"{k}={v}" for k, v in chosen.items())
        text += f"\n\nDecoding: greedy or beam search, never sampled: {settings}."
        n = chosen["no_repeat_ngram_size"]
        if run.kind.decoder_only and n:
            text += (f" The {n}-gram block sees only the generated tokens; transformers' own `no_repeat_ngram_size` "
                     "also scans the prompt (it forbids quoting the source) and gives other texts. To decode as "
                     "medpeft did, replace it by:\n\n" + md_fence(
                         "from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor\n"
                         f"block, start = NoRepeatNGramLogitsProcessor({n}), inputs['input_ids'].shape[1]\n"
                         "processors = LogitsProcessorList([lambda ids, scores: block(ids[:, start:], scores)])\n"
                         "output = model.generate(**inputs, logits_processor=processors, no_repeat_ngram_size=0, ...)",
                         "python"))
    if run.labels:
        text += "\n\nOutputs follow the label order under *Task and data*."
    return text


def loading_section(run: FinishedRun, export: dict | None) -> str:
    auto, kind, folder = run.kind.auto_class, (export or {}).get("kind"), (export or {}).get("path")
    if run.is_full or kind in ("merged", "full"):
        path = folder or str(run.adapter_dir)
        lead = "With plain transformers (no peft needed):"
        code = [f"from transformers import {auto}, AutoTokenizer", "", f"model = {auto}.from_pretrained({path!r})",
                f"tokenizer = AutoTokenizer.from_pretrained({path!r})"]
    else:
        lead = "With plain peft, on the base model the adapter was trained on:"
        code = ["from peft import PeftModel", f"from transformers import {auto}, AutoTokenizer", "",
                f"base_model = {run.result.model_path!r}  # a local folder or a hub id",
                f"adapter = {folder or str(run.adapter_dir)!r}",
                f"tokenizer = AutoTokenizer.from_pretrained({'adapter' if folder else 'base_model'})",
                "if tokenizer.pad_token is None:", "    tokenizer.pad_token = tokenizer.eos_token"]
        head = ""
        if run.kind.new_head:  # the trained head is in the adapter (modules_to_save); the base needs its size
            code.append(f"labels = {run.labels!r}")
            head = ", num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}"
            head += f", problem_type={run.kind.problem_type!r}" if run.kind.problem_type else ""
        code.append(f"base = {auto}.from_pretrained(base_model{head})")
        if run.result.provenance.bf16_base:  # as the run evaluated (use/runs.load_adapters)
            code = ["import torch", *code, "for weight in base.parameters():  # as the run evaluated: its frozen base in bf16",
                    "    weight.data = weight.data.to(torch.bfloat16)  # (peft loads the adapter itself in fp32)"]
        code.append("model = PeftModel.from_pretrained(base, adapter)")
    code.append("model.eval()")
    snippet, predict = "\n".join(code), md_code(f"medpeft predict {run.run_dir} --input notes.csv --output predictions.jsonl")
    return (f"## Loading\n\n{lead}\n\n{md_fence(snippet, 'python')}\n\nFeed it prompts in the format above, "
            f"or let medpeft do it: {predict}.")


def versions_section(result: RunResult) -> str:
    ran = result.provenance
    versions = ", ".join(f"{k} {v}" for k, v in ran.versions)
    precision = f", in {ran.precision_words()}" if ran.precision_words() else ""
    return (f"## Package versions\n\nTrained with {versions or 'unrecorded versions'}; medpeft commit "
            f"`{ran.commit or 'unknown'}`, on {ran.device or 'an unrecorded device'}{precision}.")


def limits_section(run: FinishedRun) -> str:
    r, data_cfg = run.result, run.config.data
    n_test = r.inputs.split(r.evaluated_on).examples or 0
    small = f": a small test set, on another {n_test} examples the score could move by several points" if n_test < SMALL_TEST else ""
    lines = ["- Intended use: comparing ways to adapt a language model to medical text, and a starting point for a "
             "model that is then validated on the setting's own data.",
             f"- Test set size: {n_test} examples of {md_code(r.task)}{small}.",
             f"- Inputs are cut to {data_cfg.max_source_tokens} tokens (data.max_source_tokens): text beyond that is not seen.",
             f"- {NOT_CLINICAL} Its outputs must not be used to diagnose, treat or triage patients.",
             "- It inherits the biases, errors and license terms of its base model and its training data.",
             "- This card holds no training or test text: only settings, counts and scores."]
    return "## Intended use and limits\n\n" + "\n".join(lines)
