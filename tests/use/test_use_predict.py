"""`medpeft predict`: a finished run on new texts reproduces its own predictions.jsonl, for every task
type and method family; several runs share one base; bad input fails before any model loads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medpeft import cli
from medpeft.errors import ConfigError, DataError, ModelError, OutputError
from medpeft.use import predict as predict_module
from medpeft.use.card import prompt_section
from medpeft.use.predict import predict_runs
from medpeft.use.runs import open_run

from use_fixtures import read_jsonl, refuse_models, trained, write_inputs  # noqa: F401  (trained is a fixture)

# name -> input file suffix: one run of every task type, model kind and method family
REPRODUCED = {"rct-lora": ".csv", "rct-full": ".tsv", "rct-prompt": ".jsonl", "t5-lora": ".tsv",
              "llama-prompt": ".jsonl", "chat-lora": ".jsonl", "t5-untrained": ".jsonl", "mesh-lora": ".csv",
              "ner-lora": ".jsonl", "ner-prompt": ".jsonl", "t5-lora-bf16": ".jsonl", "chat-lora-bf16": ".csv", "mesh-lora-bf16": ".jsonl"}


def assert_same(got: list[dict], saved: list[dict], field=None):
    """Predictions equal the run's; probabilities to the 6 decimals predictions.jsonl keeps."""
    assert [g["id"] for g in got] == [s["id"] for s in saved]
    for g, s in zip(got, saved):
        out = g if field is None else g[field]
        assert out["prediction"] == s["prediction"]
        if "probs" in s:
            np.testing.assert_allclose(list(out["probs"].values()), s["probs"], rtol=0, atol=2e-6)


@pytest.mark.parametrize("name", sorted(REPRODUCED))
def test_predict_reproduces_the_runs_test_predictions(trained, tmp_path, name):
    cfg, run_dir, result = trained(name)
    saved = read_jsonl(run_dir / "predictions.jsonl")
    field = "tokens" if result.task_type == "ner" else "text"  # the run's own text field is the default
    inputs = write_inputs(tmp_path / f"inputs{REPRODUCED[name]}", saved, field)
    done = predict_runs([run_dir], inputs, tmp_path / "out.jsonl", progress=False)
    got = read_jsonl(tmp_path / "out.jsonl")
    assert_same(got, saved)
    if result.labels and result.task_type != "ner":  # every class's probability, by name, in the model's order
        assert all(list(g["probs"]) == result.labels for g in got)
    assert done.inputs == len(saved) and done.fields == {result.run_id: None}
    assert done.truncated[result.run_id] == result.data["test"]["truncated_sources"]  # counted as in training


def test_a_text_pair_run_reproduces_its_predictions_from_text_and_pair_columns(trained, tmp_path, capsys):
    _, run_dir, _ = trained("context-lora")
    saved = read_jsonl(run_dir / "predictions.jsonl")
    assert all(s["pair"].startswith("Sentence ") for s in saved)
    rows = [{"id": s["id"], "sentence": s["input"], "where": s["pair"]} for s in saved]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["predict", str(run_dir), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                     "--text-field", "sentence", "--pair-field", "where"]) == 0
    assert_same(read_jsonl(tmp_path / "out.jsonl"), saved)
    section = prompt_section(open_run(run_dir))  # the model card tells a reader the same
    assert "Each input is a text pair" in section and "position and neighbours" in section
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]) + json.dumps({"sentence": "x"}) + "\n")
    with pytest.raises(DataError, match=rf"in.jsonl:{len(rows)}: no field 'where'.*Fix: add 'where' to every record"):
        predict_runs([run_dir], tmp_path / "in.jsonl", tmp_path / "o.jsonl", text_field="sentence", pair_field="where",
                     progress=False)


def test_a_single_text_run_ignores_a_pair_column_and_refuses_pair_field(trained, tmp_path):
    _, run_dir, _ = trained("rct-lora")
    saved = read_jsonl(run_dir / "predictions.jsonl")
    rows = [{"id": s["id"], "text": s["input"], "pair": "Sentence 1 of 2. Before: x After: y"} for s in saved]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    predict_runs([run_dir], tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    assert_same(read_jsonl(tmp_path / "out.jsonl"), saved)  # trained on the sentence alone: the pair is not read
    with pytest.raises(ConfigError, match="no run was trained on text pairs"):
        predict_runs([run_dir], tmp_path / "in.jsonl", tmp_path / "o.jsonl", pair_field="pair", progress=False)


def test_several_runs_share_one_base_and_each_gets_a_field(trained, tmp_path, monkeypatch):
    names = ["rct-lora", "rct-lora-seed1", "rct-dora", "rct-prompt", "rct-full"]
    runs = {name: trained(name) for name in names}
    loads = []
    real = predict_module.load_adapters
    monkeypatch.setattr(predict_module, "load_adapters", lambda group, *a, **k: loads.append(len(group)) or real(group, *a, **k))
    saved = read_jsonl(runs["rct-lora"][1] / "predictions.jsonl")
    inputs = write_inputs(tmp_path / "inputs.csv", saved)
    done = predict_runs([runs[n][1] for n in names], inputs, tmp_path / "out.jsonl", progress=False)
    assert sorted(loads) == [1, 3]  # LoRA and DoRA (one peft type) on one base; prompt tuning on its own; full alone
    got = read_jsonl(tmp_path / "out.jsonl")
    assert set(got[0]) == {"id"} | {runs[n][2].run_id for n in names}
    assert set(done.fields.values()) == {runs[n][2].run_id for n in names}
    for name in names:
        assert_same(got, read_jsonl(runs[name][1] / "predictions.jsonl"), field=runs[name][2].run_id)


def test_a_base_held_in_bf16_is_loaded_apart_from_the_same_base_in_fp32(trained, tmp_path, monkeypatch):
    """A run that evaluated with its frozen base in bf16 predicts on a bf16 base, one in fp32 on an fp32 base:
    each reproduces its own summaries, so the two never share one loaded base."""
    names = ["t5-lora-fp32", "t5-lora-bf16"]
    runs = {name: trained(name) for name in names}
    assert [runs[n][2].fit.levers["bf16_base"] for n in names] == [False, True]
    loaded = []  # per base loaded: (its runs, the dtypes of its own weights, of the adapter's)
    real = predict_module.load_adapters

    def spy(group, *args, **kwargs):
        model, tokenizer = real(group, *args, **kwargs)
        weights = dict(model.named_parameters())
        loaded.append(([run.name for run in group], {w.dtype for n, w in weights.items() if "lora_" not in n},
                       {w.dtype for n, w in weights.items() if "lora_" in n}))
        return model, tokenizer

    monkeypatch.setattr(predict_module, "load_adapters", spy)
    inputs = write_inputs(tmp_path / "inputs.jsonl", read_jsonl(runs["t5-lora-fp32"][1] / "predictions.jsonl"))
    predict_runs([runs[n][1] for n in names], inputs, tmp_path / "out.jsonl", progress=False)
    assert sorted(loaded) == sorted([([runs["t5-lora-fp32"][2].run_id], {torch.float32}, {torch.float32}),
                                     ([runs["t5-lora-bf16"][2].run_id], {torch.bfloat16}, {torch.float32})])
    for name in names:
        assert_same(read_jsonl(tmp_path / "out.jsonl"), read_jsonl(runs[name][1] / "predictions.jsonl"), field=runs[name][2].run_id)


def test_predict_decodes_the_texts_together_that_the_runs_evaluation_did(tmp_path, monkeypatch, assets_ready):
    """Under bf16 a summary can change with the texts decoded beside it, so `medpeft predict` on the run's
    test inputs forms the run's own generate() batches: here one call of 12 at evaluation (rows per call chosen
    by memory, not eval_batch_size 2), never chunks of 8 and 4."""
    from helpers import run_config as run_planned

    from medpeft.config import config_from_dict
    from medpeft.run import kinds
    from medpeft.run.predict import length_batches

    calls = {"evaluation": [], "predict": []}
    stage = ["evaluation"]
    real = kinds.generate_texts

    def spy(model, tokenizer, rows, decoder_only, decoding, batch_size, device):
        calls[stage[0]] += [sorted(tuple(rows[i]["input_ids"]) for i in batch) for batch in length_batches(rows, batch_size)]
        return real(model, tokenizer, rows, decoder_only, decoding, batch_size, device)

    monkeypatch.setattr(kinds, "generate_texts", spy)
    cfg = config_from_dict({"task": "pubmed-conclusion", "model": "tiny-llama", "method": "lora", "seed": 0,
                            "data": {"train_size": 4, "val_size": 0, "test_size": 12, "max_source_tokens": 32, "max_target_tokens": 8},
                            "train": {"max_steps": 1, "batch_size": 4, "eval_batch_size": 2, "lr": 1e-2}})
    run_dir = tmp_path / "run"
    assert run_planned(cfg, run_dir).ok
    stage[0] = "predict"
    saved = read_jsonl(run_dir / "predictions.jsonl")
    predict_runs([run_dir], write_inputs(tmp_path / "in.jsonl", saved), tmp_path / "out.jsonl", progress=False)
    assert [len(batch) for batch in calls["evaluation"]] == [12]
    assert sorted(calls["predict"]) == sorted(calls["evaluation"])
    assert_same(read_jsonl(tmp_path / "out.jsonl"), saved)


def test_predict_through_the_cli(trained, tmp_path, capsys):
    _, run_dir, result = trained("rct-lora")
    saved = read_jsonl(run_dir / "predictions.jsonl")
    inputs = tmp_path / "notes.jsonl"
    inputs.write_text("".join(json.dumps({"note": s["input"]}) + "\n" for s in saved))  # no id column
    out = tmp_path / "out" / "pred.jsonl"
    assert cli.main(["predict", str(run_dir), "--input", str(inputs), "--output", str(out), "--text-field", "note"]) == 0
    assert f"wrote {len(saved)} predictions" in capsys.readouterr().out
    got = read_jsonl(out)
    assert [g["line"] for g in got] == list(range(1, len(saved) + 1))  # without an id, the input's line
    assert [g["prediction"] for g in got] == [s["prediction"] for s in saved]


BAD_INPUTS = {  # case -> (file name, content bytes, what the message must name)
    "missing field": ("in.jsonl", b'{"text": "fine"}\n{"note": "the text is elsewhere"}\n', [":2:", "'text'", "--text-field"]),
    "empty text": ("in.csv", b"id,text\n1,fine\n2,   \n", [":3:", "empty text", "Fix:"]),
    "not utf-8": ("in.csv", "id,text\n1,caf\u00e9 au lait\n".encode("latin-1"), [":2:", "not UTF-8", "iconv"]),
    "not json": ("in.jsonl", b'{"text": "fine"}\n{"text": oops}\n', [":2:", "not valid JSON (Expecting value: column 10)"]),
    "cut json": ("in.jsonl", b'{"text": "fine"}\n{"text": "cut off\n', [":2:", "Unterminated string starting at: column 10"]),
    "not text": ("in.jsonl", b'{"text": 42}\n', [":1:", "not text"]),
    "no records": ("in.csv", b"id,text\n", ["no records"]),
    "wrong suffix": ("in.txt", b"some text\n", [".csv, .tsv or .jsonl"]),
    "missing file": ("absent.csv", None, ["no such file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_line_and_fix_before_any_model_loads(trained, tmp_path, monkeypatch, case):
    _, run_dir, _ = trained("rct-lora")
    name, content, needles = BAD_INPUTS[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out.jsonl"
    out.write_text('{"earlier": "output"}\n')
    refuse_models(monkeypatch)
    with pytest.raises(DataError) as err:
        predict_runs([run_dir], path, out, progress=False)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert out.read_text() == '{"earlier": "output"}\n'  # nothing already written is lost


def test_bad_input_through_the_cli_exits_2(trained, tmp_path, capsys):
    _, run_dir, _ = trained("rct-lora")
    (tmp_path / "in.csv").write_text("id,text\n1,\n")
    assert cli.main(["predict", str(run_dir), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medpeft: error: ") and "in.csv:2:" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_failure_while_predicting_keeps_the_old_output(trained, tmp_path, monkeypatch):
    _, run_dir, _ = trained("rct-lora")
    inputs = write_inputs(tmp_path / "in.csv", read_jsonl(run_dir / "predictions.jsonl"))
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    monkeypatch.setattr(predict_module, "length_batches", lambda *a: (_ for _ in ()).throw(RuntimeError("power cut")))
    with pytest.raises(RuntimeError):
        predict_runs([run_dir], inputs, out, progress=False)
    assert out.read_text() == "kept\n"


def test_output_may_not_replace_the_input(trained, tmp_path):
    _, run_dir, _ = trained("rct-lora")
    inputs = write_inputs(tmp_path / "in.jsonl", read_jsonl(run_dir / "predictions.jsonl"))
    with pytest.raises(DataError, match="replace the input"):
        predict_runs([run_dir], inputs, inputs, progress=False)


UNWRITABLE = {  # case -> (make the place, the --output path, what the message must say)
    "a folder": (lambda tmp: (tmp / "preds").mkdir(), "preds", "is a folder"),
    "under a file": (lambda tmp: (tmp / "notes.txt").write_text("mine"), "notes.txt/out.jsonl", "is a file, not a folder"),
}


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_an_output_that_cannot_be_written_fails_before_any_model_loads(trained, tmp_path, monkeypatch, capsys, case):
    _, run_dir, _ = trained("rct-lora")
    make, name, needle = UNWRITABLE[case]
    make(tmp_path)
    inputs = write_inputs(tmp_path / "in.csv", read_jsonl(run_dir / "predictions.jsonl"))
    refuse_models(monkeypatch)
    with pytest.raises(OutputError, match=needle) as err:
        predict_runs([run_dir], inputs, tmp_path / name, progress=False)
    assert str(tmp_path / name) in str(err.value)
    capsys.readouterr()  # drop what training the fixture's run printed
    assert cli.main(["predict", str(run_dir), "--input", str(inputs), "--output", str(tmp_path / name)]) == 2
    out = capsys.readouterr().err
    assert out.startswith("medpeft: error: --output ") and out.count("\n") == 1 and needle in out


def test_a_missing_output_folder_is_made(trained, tmp_path):
    _, run_dir, _ = trained("rct-lora")
    inputs = write_inputs(tmp_path / "in.csv", read_jsonl(run_dir / "predictions.jsonl"))
    predict_runs([run_dir], inputs, tmp_path / "new" / "deeper" / "out.jsonl", progress=False)
    assert (tmp_path / "new" / "deeper" / "out.jsonl").is_file()


def test_runs_that_cannot_predict_say_why(trained, tmp_path):
    (tmp_path / "in.csv").write_text("text\nfine\n")
    with pytest.raises(ModelError, match="no result.json"):
        predict_runs([tmp_path], tmp_path / "in.csv", tmp_path / "o.jsonl")
    _, untrained_dir, _ = trained("rct-untrained")
    with pytest.raises(ModelError, match="untrained baseline"):
        predict_runs([untrained_dir], tmp_path / "in.csv", tmp_path / "o.jsonl")
    _, run_dir, _ = trained("rct-lora")
    with pytest.raises(ConfigError, match="given twice"):
        predict_runs([run_dir, run_dir], tmp_path / "in.csv", tmp_path / "o.jsonl")


def test_long_inputs_are_counted_and_reported(trained, tmp_path):
    _, run_dir, result = trained("rct-lora")
    long_text = " ".join(["word"] * 200)
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "short note"}) + "\n" + json.dumps({"text": long_text}) + "\n")
    done = predict_runs([run_dir], tmp_path / "in.jsonl", tmp_path / "o.jsonl", progress=False)
    assert done.truncated == {result.run_id: 1}
    assert any("1 of 2 inputs are longer than data.max_source_tokens=32" in line for line in done.lines())


def test_ner_says_which_words_were_past_the_cut(trained, tmp_path):
    """Words past data.max_source_tokens come back tagged "O" (one tag per word), and the row says how many of
    the last words the model never read; a sentence that fits has no such field."""
    _, run_dir, _ = trained("ner-lora")
    long_words = ["patient", "with", "asthma", "was", "given", "aspirin"] * 12  # 72 words against 32 tokens
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": long_words}) + "\n" + json.dumps({"tokens": ["patient", "with", "asthma"]}) + "\n")
    predict_runs([run_dir], tmp_path / "in.jsonl", tmp_path / "o.jsonl", progress=False)
    long, short = read_jsonl(tmp_path / "o.jsonl")
    assert len(long["prediction"]) == 72 and "unseen_words" not in short and len(short["prediction"]) == 3
    seen = 72 - long["unseen_words"]
    assert 0 < seen < 32 and long["prediction"][seen:] == ["O"] * long["unseen_words"]


def test_the_id_column_defaults_to_the_runs_own_id_field():
    from types import SimpleNamespace

    from medpeft.use.predict import default_id_field

    def run(user_data):
        return SimpleNamespace(config=SimpleNamespace(user_data=user_data))

    assert default_id_field([run({"path": "notes.csv", "id_field": "note_id"})]) == "note_id"
    assert default_id_field([run({"path": "notes.csv"})]) == "id"
    assert default_id_field([run(None)]) == "id"
