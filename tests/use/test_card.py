"""The model card: its metadata header and sections parsed back, the spread over seeds and the grid's
full and untrained rows, a loading snippet that runs, and not one string of the task's text in it."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from medpeft.run.metrics import metric_label
from medpeft.run.record import load_results
from medpeft.use.card import NOT_CLINICAL, write_card, write_cards

from use_fixtures import RUNS, trained  # noqa: F401  (trained is a fixture)

MIN_CHECKED = 12  # characters: shorter strings (a label, a word) may appear in any text by chance


def sections(text: str) -> dict[str, str]:
    """The card's `## ` sections by title, and its metadata header under "header"."""
    _, header, body = text.split("---\n", 2)
    parts = re.split(r"^## (.+)$", body, flags=re.M)
    return {"header": yaml.safe_load(header), "title": parts[0], **dict(zip(parts[1::2], parts[2::2]))}


def code_block(section: str, language: str) -> str:
    return re.search(rf"```{language}\n(.*?)\n```", section, flags=re.S).group(1)


def card_of(trained, name: str) -> tuple[dict, object]:
    cfg, run_dir, result = trained(name)
    path = write_card(run_dir, load_results(run_dir.parent))
    assert path == run_dir / "adapter" / "README.md"
    return sections(path.read_text()), result


def test_card_content_parsed_back(trained):
    trained("t5-untrained")  # the grid's baseline row
    card, result = card_of(trained, "t5-lora")
    header = card["header"]
    assert header["library_name"] == "peft" and header["base_model"] == "tiny-t5" and header["license"]
    assert {"medpeft", "lora", "pubmed-conclusion", "summarization"} <= set(header["tags"])
    assert header["metrics"] == list(result.metrics) and header["pipeline_tag"] == "text2text-generation"
    assert f"Test ROUGE-1: {100 * result.metrics['rouge1']:.2f}" in card["title"]  # states the run's test ROUGE-1
    assert "tiny random T5" in card["Base model"] and result.model_path in card["Base model"]
    assert yaml.safe_load(code_block(card["Method"], "yaml")) == result.config  # the full config
    assert f"{result.efficiency['trainable_params']:,} of {result.efficiency['total_params']:,}" in card["Method"]
    assert "split sizes: train 8, validation 0, test 4" in card["Task and data"]
    assert "NLM terms" in card["Task and data"]
    metrics = card["Test metrics"]
    for key, value in result.metrics.items():
        assert f"| {metric_label(key)} | {100 * value:.2f} |" in metrics
    assert "n/a (one seed)" in metrics
    assert "untrained baseline" in card["Compared with full fine-tuning and the untrained baseline"]
    template = code_block(card["Prompt format"], "text")
    assert template == "Write the conclusions of this study from its background, methods and results.\n\n{text}"
    assert "max_new_tokens=8" in card["Prompt format"] and "no_repeat_ngram_size=3" in card["Prompt format"]
    assert f"peft {result.env['versions']['peft']}" in card["Package versions"]
    limits = card["Intended use and limits"]
    assert NOT_CLINICAL in limits and "Test set size: 4 examples" in limits


def test_your_own_datas_unused_split_sizes_are_marked_in_the_cards_config(trained):
    """The config said train_size: 256 ... test_size: 64 next to 'split sizes: train 32, ..., test 4':
    a file's own splits make data.*_size unused unless the grid names them."""
    card, result = card_of(trained, "ner-lora")
    config = code_block(card["Method"], "yaml")
    assert yaml.safe_load(config) == result.config  # still the whole config
    for key in ("train_size", "val_size", "test_size"):
        assert f"  {key}: {result.config['data'][key]}  # not used: your file's own split" in config
    assert "max_source_tokens: 32\n" in config + "\n" and config.count("# not used") == 3
    named = {**result.config, "user_data": {**result.config["user_data"], "split_sizes": ["train_size"]}}
    from medpeft.use.card import marked_unused_sizes
    marked = marked_unused_sizes(yaml.safe_dump(named, sort_keys=False), named)
    assert marked.count("# not used") == 2 and "  train_size: 256\n" in marked


def test_seeds_ci_and_the_full_and_untrained_rows(trained):
    from scipy import stats

    for name in ("rct-lora-seed1", "rct-full", "rct-untrained"):
        trained(name)
    card, result = card_of(trained, "rct-lora")
    seeds = [r for r in load_results(trained("rct-lora")[1].parent) if r.method == "lora" and r.ok]
    assert len(seeds) == 2
    for key in result.metrics:  # mean ± t(n-1) · s/√n over the two seeds
        values = [r.metrics[key] for r in seeds]
        half = stats.t.ppf(0.975, 1) * stats.tstd(values) / 2 ** 0.5
        low, high = sum(values) / 2 - half, sum(values) / 2 + half
        row = next(line for line in card["Test metrics"].splitlines() if line.startswith(f"| {metric_label(key)} |"))
        assert row.endswith("| 2 |") and f"{100 * low:.2f} – {100 * high:.2f}" in row, row
    comparison = card["Compared with full fine-tuning and the untrained baseline"]
    assert "| this setting (lora) | 2 |" in comparison
    assert "| full fine-tuning | 1 |" in comparison and "| untrained baseline | 1 |" in comparison
    assert "labels, in the model's output order: `BACKGROUND`" in card["Task and data"]


def test_chat_template_prompt_is_rendered(trained):
    card, _ = card_of(trained, "chat-lora")
    template = code_block(card["Prompt format"], "text")
    assert template == ("[unused1]user: Write the conclusions of this study from its background, methods and results."
                        "\n\n{text}[SEP][unused1]assistant: ")
    assert card["Prompt format"].startswith(" `chat-template`") or "`chat-template`" in card["Prompt format"]


def test_a_decoder_cards_decoding_says_how_medpeft_blocked_repeats(trained):
    """The card listed no_repeat_ngram_size=3; pasted into generate(), transformers' block also scans the prompt
    and gave other summaries than medpeft predict. The card's replacement is medpeft's own block."""
    from medpeft.run.predict import generated_only

    card, _ = card_of(trained, "chat-lora")
    snippet = re.findall(r"```python\n(.*?)\n```", card["Prompt format"], flags=re.S)[-1]
    scope = {"inputs": {"input_ids": torch.tensor([[5, 6, 7, 5, 6]])}}
    exec(snippet.split("\noutput =")[0], scope)  # noqa: S102  (the card's lines before its generate call)
    ids = torch.tensor([[5, 6, 7, 5, 6, 9, 8, 9, 8]])  # a prompt of 5, then 4 generated tokens
    scores = torch.zeros(1, 12)
    ours = generated_only({"no_repeat_ngram_size": 3}, 5)["logits_processor"]
    assert torch.equal(scope["processors"](ids, scores.clone()), ours(ids, scores.clone()))
    assert scope["processors"](ids, scores.clone())[0, 9] == -float("inf")  # 9 8 9 would repeat "9 8 ..."
    quoting = torch.tensor([[5, 6, 7, 5, 6, 1, 5, 6]])  # the summary writes "5 6", the prompt had "5 6 7"
    assert scope["processors"](quoting, scores.clone())[0, 7] == 0  # allowed: only the prompt had it
    from transformers import NoRepeatNGramLogitsProcessor
    assert NoRepeatNGramLogitsProcessor(3)(quoting, scores.clone())[0, 7] == -float("inf")  # transformers' own: banned
    t5, _ = card_of(trained, "t5-lora")
    assert "sees only the generated tokens" not in t5["Prompt format"]  # an encoder-decoder has no prompt in its output


@pytest.mark.parametrize("name", ["rct-lora", "mesh-lora", "t5-lora-fp32", "t5-lora-bf16", "rct-full"])
def test_loading_snippet_runs_and_gives_the_runs_model(trained, name):
    """The card's snippet gives the model `medpeft predict` loads (the run's own, a frozen base held in bf16
    included), to the last digit."""
    from test_export import logits_of  # noqa: PLC0415  (the same logits helpers)

    from medpeft.use.runs import load_adapters, open_run

    card, result = card_of(trained, name)
    scope: dict = {}
    exec(code_block(card["Loading"], "python"), scope)  # noqa: S102  (the card's own snippet, as a user runs it)
    seq2seq = result.model_kind == "seq2seq"
    got = logits_of(scope["model"], scope["tokenizer"], seq2seq)
    if result.method == "full":
        assert "PeftModel" not in card["Loading"]
        from test_export import plain_logits

        expected = plain_logits(trained(name)[1] / "adapter", "AutoModelForSequenceClassification", False)
    else:
        expected = logits_of(*load_adapters([open_run(trained(name)[1])], ["default"]), seq2seq)
    assert ("bfloat16" in card["Loading"]) == name.endswith("-bf16")
    assert ("mixed precision with the frozen base in bf16." in card["Package versions"]) == name.endswith("-bf16")
    if name == "t5-lora-fp32":
        assert card["Package versions"].rstrip().endswith(", in fp32.")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_readmes_loading_snippet_gives_the_runs_classifier(trained):
    """README's "Using the adapters", run as a user runs it on a classification run: the run's own model, to the
    last digit (it loaded a classifier as a causal LM: vocabulary logits from a new, random head)."""
    from pathlib import Path

    from test_export import logits_of  # noqa: PLC0415

    from medpeft.use.runs import load_adapters, open_run

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    snippet = code_block(readme[readme.index("### Using the adapters"):], "python")
    run_dir = trained("rct-lora")[1]
    scope: dict = {}
    exec(snippet.replace("runs/quick/<run_id>", str(run_dir)), scope)  # noqa: S102
    expected = logits_of(*load_adapters([open_run(run_dir)], ["default"]), False)
    torch.testing.assert_close(logits_of(scope["model"], scope["tokenizer"], False), expected, rtol=0, atol=1e-6)


def task_strings(cfg) -> list[str]:
    """Every input text (and summary) of the task's splits, as a run of `cfg` loads them."""
    from medpeft.plan import load_data, task_spec

    data = load_data(task_spec(cfg), cfg, online=False)
    found = []
    for examples in data.splits.values():
        for ex in examples:
            found.append(" ".join(ex["text"]) if isinstance(ex["text"], list) else ex["text"])
            if data.type == "summarization":
                found.append(ex["target"])
    return found


def test_cards_hold_no_training_or_test_text(trained):
    names = [n for n in RUNS if RUNS[n][3] != "untrained"]
    configs = {RUNS[n][0]: trained(n)[0] for n in names}  # one config per grid: its task's data
    grids = {trained(n)[1].parent for n in names}
    written = {}
    for grid in grids:
        written.update(write_cards(grid))
    assert set(written) == {trained(n)[2].run_id for n in names}
    for grid_name, cfg in configs.items():
        strings = [s.strip() for s in task_strings(cfg)]
        checked = [s for s in strings if len(s) >= MIN_CHECKED]
        assert len(checked) >= 0.9 * len(strings), grid_name
        for run_id, path in written.items():
            if path.parent.parent.parent.name != grid_name:
                continue
            card = path.read_text()
            leaked = [s for s in checked if s in card]
            assert not leaked, (run_id, leaked[:2])


def test_write_cards_skips_trials_and_replaces_peft_template(trained, tmp_path):
    for name in ("rct-lora", "rct-prompt", "rct-untrained"):
        trained(name)
    grid = tmp_path / "rct"
    source = trained("rct-lora")[1].parent
    for run_dir in source.iterdir():
        if run_dir.name.split(".")[2] in ("lora", "prompt_tuning", "untrained"):
            shutil.copytree(run_dir, grid / run_dir.name)
    trial = grid / trained("rct-prompt")[1].name
    data = json.loads((trial / "result.json").read_text())
    (trial / "result.json").write_text(json.dumps(dict(data, tuning_trial=True)))
    (trial / "adapter" / "README.md").write_text("peft's template\n")
    written = write_cards(grid)
    lora_ids = {r.run_id for r in load_results(grid) if r.method == "lora"}
    assert set(written) == lora_ids  # not the trial, not the untrained baseline (it has no adapter)
    assert (trial / "adapter" / "README.md").read_text() == "peft's template\n"
    for path in written.values():
        assert path.read_text().startswith("---\nlibrary_name: peft\n")


HOSTILE_HTML = re.compile(r"<(script|img src=x|b onmouseover|iframe)")  # the user's HTML, as a viewer would run it


def edited_copy(run_dir, folder, **changes):
    """A copy of a finished run whose result.json has `changes` (`data` is merged into its data)."""
    copy = folder / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, copy)
    result = json.loads((copy / "result.json").read_text())
    result["data"].update(changes.pop("data", {}))
    (copy / "result.json").write_text(json.dumps({**result, **changes}))
    return copy


def test_html_in_labels_task_and_instruction_is_shown_not_run(trained, tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    rct_dir, t5_dir = trained("rct-lora")[1], trained("t5-lora")[1]
    labels = json.loads((rct_dir / "result.json").read_text())["labels"]
    hostile = ["<script>alert(1)</script>", "a`<b onmouseover=alert(2)>`b", *labels[2:]]
    rct = edited_copy(rct_dir, tmp_path, task="<iframe src=x>", labels=hostile,
                      data={"warnings": ["label <img src=x onerror=alert(3)> is rare"]})
    instruction = "Summarise <script>alert(4)</script>\n```\n<img src=x onerror=alert(5)>"
    t5 = edited_copy(t5_dir, tmp_path, data={"instruction": instruction})
    viewer = markdown_it.MarkdownIt("commonmark")
    for run_dir in (rct, t5):  # the body, as the Hub shows a card: its metadata header is data, read as YAML
        shown = viewer.render(write_card(run_dir).read_text().split("---\n", 2)[2])
        assert not HOSTILE_HTML.search(shown), HOSTILE_HTML.search(shown)
    card = sections(write_card(rct).read_text())
    shown = viewer.render(card["Task and data"])
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in shown  # each label shown as written
    assert "<code>a`&lt;b onmouseover=alert(2)&gt;`b</code>" in shown and "&lt;iframe src=x&gt;" in shown
    template = viewer.render(sections(write_card(t5).read_text())["Prompt format"])
    assert "```\n&lt;img src=x onerror=alert(5)&gt;\n\n{text}" in template  # the instruction, inside its code block
