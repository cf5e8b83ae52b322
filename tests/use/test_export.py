"""`medpeft export`: a merged folder gives the logits of base + adapter without peft; prompt learning
says it cannot merge and ships the adapter with a pinned base reference; a full run ships as it is."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from medpeft import cli
from medpeft.errors import ConfigError, ModelError, OutputError
from medpeft.use import export as export_module
from medpeft.use.export import export_run
from medpeft.use.runs import base_model_path, open_run

from use_fixtures import trained  # noqa: F401  (a fixture)

TEXTS = ["Patients were randomised to two arms.", "Mortality fell by a third in the treated group of the trial."]


@torch.no_grad()
def logits_of(model, tokenizer, seq2seq: bool) -> torch.Tensor:
    model.eval()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    if seq2seq:
        batch["decoder_input_ids"] = torch.zeros((len(TEXTS), 3), dtype=torch.long)
    return model(**batch).logits.float()


def reference_logits(run_dir, with_adapter: bool = True) -> torch.Tensor:
    """Logits of the run's base with its adapter attached by plain peft (or of the base alone)."""
    from peft import PeftModel

    from medpeft.models import load_model

    run = open_run(run_dir)
    base, tokenizer, _ = load_model(base_model_path(run), run.kind.auto_class, run.head_labels, run.kind.problem_type)
    model = PeftModel.from_pretrained(base, run.adapter_dir) if with_adapter else base
    return logits_of(model, tokenizer, run.kind.name == "seq2seq")


def plain_logits(folder, auto_class: str, seq2seq: bool) -> torch.Tensor:
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(folder)
    return logits_of(model.float(), transformers.AutoTokenizer.from_pretrained(folder), seq2seq)


def card_header(folder) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("name", ["rct-lora", "rct-dora", "rct-ia3", "t5-lora"])
def test_merged_export_loads_without_peft_and_matches_base_plus_adapter(trained, tmp_path, name):
    _, run_dir, result = trained(name)
    done = export_run(run_dir, tmp_path / "merged", merge=True)
    out = tmp_path / "merged"
    assert done.kind == "merged" and done.out == out and not done.notes
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()  # a plain transformers folder
    assert (out / "tokenizer_config.json").is_file()
    seq2seq = result.model_kind == "seq2seq"
    merged = plain_logits(out, open_run(run_dir).kind.auto_class, seq2seq)
    expected = reference_logits(run_dir)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(reference_logits(run_dir, with_adapter=False), expected, atol=1e-4)  # the test can fail
    header = card_header(out)
    assert header["library_name"] == "transformers" and "merged into its base" in (out / "README.md").read_text()


def test_dtype_export_casts_the_weights(trained, tmp_path):
    from safetensors.torch import load_file

    _, run_dir, _ = trained("rct-lora")
    export_run(run_dir, tmp_path / "bf16", merge=True, dtype="bf16")
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}
    merged = plain_logits(tmp_path / "bf16", "AutoModelForSequenceClassification", False)
    torch.testing.assert_close(merged, reference_logits(run_dir), rtol=0, atol=5e-2)


def test_weights_are_as_readable_as_the_files_beside_them(trained, tmp_path):
    """safetensors >= 0.8.1 writes 0o600 files: a run's adapter and an export's weights were owner-only
    while their README.md and config were readable to the group (umask 022 here: 0o644)."""
    import os

    _, run_dir, _ = trained("rct-lora")
    mask = os.umask(0o022)
    try:
        export_run(run_dir, tmp_path / "merged", merge=True)
    finally:
        os.umask(mask)
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    adapter = run_dir / "adapter"
    assert mode(adapter / "adapter_model.safetensors") == mode(adapter / "adapter_config.json") != 0o600
    assert mode(tmp_path / "merged" / "model.safetensors") == mode(tmp_path / "merged" / "config.json") == 0o644


def test_prompt_learning_cannot_merge_and_says_so(trained, tmp_path, capsys):
    from peft import PeftModel

    from medpeft.files import folder_fingerprint
    from medpeft.models import load_model

    _, run_dir, result = trained("rct-prompt")
    out = tmp_path / "prompt"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--merge"]) == 0
    captured = capsys.readouterr()
    assert "cannot be merged" in captured.err and "prompt_tuning" in captured.err
    assert "exported (adapter)" in captured.out
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    reference = json.loads((out / "base_model.json").read_text())
    assert reference["path"] == result.model_path and reference["fingerprint"] == folder_fingerprint(result.model_path)
    run = open_run(run_dir)
    base, _, _ = load_model(result.model_path, run.kind.auto_class, run.head_labels)
    from transformers import AutoTokenizer

    shipped = logits_of(PeftModel.from_pretrained(base, out), AutoTokenizer.from_pretrained(out), False)
    torch.testing.assert_close(shipped, reference_logits(run_dir), rtol=0, atol=1e-6)
    assert card_header(out)["library_name"] == "peft"


def test_full_run_exports_as_it_is(trained, tmp_path):
    _, run_dir, _ = trained("rct-full")
    done = export_run(run_dir, tmp_path / "full", merge=True)
    assert done.kind == "full" and "nothing to merge" in done.notes[0]
    saved = {f.name for f in (run_dir / "adapter").iterdir()} | {"README.md"}
    assert {f.name for f in (tmp_path / "full").iterdir()} == saved
    torch.testing.assert_close(plain_logits(tmp_path / "full", "AutoModelForSequenceClassification", False),
                               plain_logits(run_dir / "adapter", "AutoModelForSequenceClassification", False))


def test_export_refuses_what_it_cannot_do(trained, tmp_path):
    _, run_dir, _ = trained("rct-lora")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_run(run_dir, tmp_path / "taken")
    assert (tmp_path / "taken" / "file").read_text() == "mine"
    (tmp_path / "made").mkdir()  # an empty folder the user made beforehand is filled, not refused
    export_run(run_dir, tmp_path / "made")
    assert (tmp_path / "made" / "README.md").is_file() and (tmp_path / "made" / "adapter_config.json").is_file()
    _, t5_untrained, _ = trained("t5-untrained")
    with pytest.raises(ModelError, match="nothing to export"):
        export_run(t5_untrained, tmp_path / "base")


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/exported"])
def test_export_out_an_existing_file_or_under_one_exits_2(trained, tmp_path, capsys, out):
    _, run_dir, _ = trained("rct-lora")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="is a file"):
        export_run(run_dir, tmp_path / out)
    capsys.readouterr()  # drop what training the fixture's run printed
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medpeft: error: --out {tmp_path / out}") and err.count("\n") == 1
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_failed_export_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    _, run_dir, _ = trained("rct-lora")

    def broken_card(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_card", broken_card)
    with pytest.raises(OSError):
        export_run(run_dir, tmp_path / "out", merge=True)
    assert list(tmp_path.iterdir()) == []
