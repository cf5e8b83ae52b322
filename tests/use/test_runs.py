"""A finished run opened for use refuses, with one line naming the file and the fix (exit 2), what would
otherwise fail with a traceback or predict wrongly in silence: a changed local base, a base folder that
holds no model, a damaged, pickled or missing adapter."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from medpeft import cli
from medpeft.config import config_from_dict
from medpeft.errors import ModelError
from medpeft.use.export import export_run
from medpeft.use.predict import predict_runs

from use_fixtures import read_jsonl, refuse_models, trained, write_inputs  # noqa: F401  (trained is a fixture)


def cli_error(capsys, argv: list[str]) -> str:
    """The one line `medpeft` prints for a refused command (exit 2, no traceback)."""
    capsys.readouterr()  # drop what training a fixture's run printed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("medpeft: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def copied_run(trained, tmp_path, name: str):
    """A copy of a finished run in a grid folder of its own, safe to damage: runs/toy/<the id `medpeft run` gives it>
    (the fixtures name their folders by the config before plan.py resolved it)."""
    _, run_dir, result = trained(name)
    copy = tmp_path / "runs" / "toy" / config_from_dict(result.config).run_id
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture
def changed_base(trained):
    """The local-lora run, with the weights of its base folder changed in place (restored afterwards)."""
    from safetensors.torch import load_file, save_file

    _, run_dir, result = trained("local-lora")
    weights = run_dir.parents[1] / "local-bert" / "model.safetensors"
    assert result.model_path == str(weights.parent) and result.config["fingerprint"]["model"]
    kept = weights.read_bytes()
    tensors = {k: v + 0.5 if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})  # same size, other weights: a re-trained base
    yield run_dir, weights.parent
    weights.write_bytes(kept)


def test_a_changed_local_base_is_refused_before_any_model_loads(changed_base, tmp_path, monkeypatch, capsys):
    run_dir, base = changed_base
    inputs = write_inputs(tmp_path / "in.csv", read_jsonl(run_dir / "predictions.jsonl"))
    refuse_models(monkeypatch)
    with pytest.raises(ModelError) as err:
        predict_runs([run_dir], inputs, tmp_path / "out.jsonl", progress=False)
    message = str(err.value)
    for needle in (str(base), "changed after run", str(run_dir / "result.json"), "Restore", "medpeft run "):
        assert needle in message, (needle, message)
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ModelError, match="changed after run"):  # base_model.json would pin the wrong base
        export_run(run_dir, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
    assert str(base) in cli_error(capsys, ["export", str(run_dir), "--out", str(tmp_path / "exported")])


def test_the_unchanged_local_base_predicts_and_is_pinned(trained, tmp_path):
    _, run_dir, result = trained("local-lora")
    saved = read_jsonl(run_dir / "predictions.jsonl")
    predict_runs([run_dir], write_inputs(tmp_path / "in.csv", saved), tmp_path / "out.jsonl", progress=False)
    assert [g["prediction"] for g in read_jsonl(tmp_path / "out.jsonl")] == [s["prediction"] for s in saved]
    export_run(run_dir, tmp_path / "exported")
    pinned = json.loads((tmp_path / "exported" / "base_model.json").read_text())
    assert pinned["fingerprint"] == result.config["fingerprint"]["model"]


def test_a_model_path_that_holds_no_model_is_named(trained, tmp_path, capsys):
    run_dir = copied_run(trained, tmp_path, "rct-lora")
    (tmp_path / "notes").mkdir()
    result = json.loads((run_dir / "result.json").read_text())
    result["model_path"] = str(tmp_path / "notes")
    (run_dir / "result.json").write_text(json.dumps(result))
    (tmp_path / "in.csv").write_text("text\nPatients were randomised.\n")
    for argv in (["predict", str(run_dir), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.jsonl")],
                 ["export", str(run_dir), "--out", str(tmp_path / "exported")]):
        err = cli_error(capsys, argv)
        assert str(tmp_path / "notes") in err and "model_path" in err and "not a model folder" in err


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickle_adapter(adapter, keep_safetensors: bool = False):
    from safetensors.torch import load_file

    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    if not keep_safetensors:
        (adapter / "adapter_model.safetensors").unlink()


DAMAGE = {  # case -> (run, how the run's adapter/ is damaged, the file the message names, what else it says)
    "truncated adapter": ("rct-lora", lambda a: truncate(a / "adapter_model.safetensors"), "adapter_model.safetensors",
                          ["cut short", "result.json"]),
    "truncated full model": ("rct-full", lambda a: truncate(a / "model.safetensors"), "model.safetensors", ["cut short"]),
    "pickled adapter": ("rct-lora", pickle_adapter, "adapter_model.bin",
                        ["pickle", "safetensors only", "save_file(torch.load("]),
    "pickle beside safetensors": ("rct-lora", lambda a: pickle_adapter(a, keep_safetensors=True), "adapter_model.bin",
                                  ["pickle", "remove it"]),
    "no adapter config": ("rct-lora", lambda a: (a / "adapter_config.json").unlink(), "adapter_config.json",
                          ["lacks"]),  # else it predicted with the bare base
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_adapter_is_named_through_the_cli(trained, tmp_path, capsys, case):
    name, damage, file, needles = DAMAGE[case]
    run_dir = copied_run(trained, tmp_path, name)
    damage(run_dir / "adapter")
    (tmp_path / "in.csv").write_text("text\nPatients were randomised.\n")
    for argv in (["predict", str(run_dir), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.jsonl")],
                 ["export", str(run_dir), "--out", str(tmp_path / "exported")]):
        err = cli_error(capsys, argv)
        for needle in [str(run_dir / "adapter"), file, *needles]:
            assert needle in err, (needle, err)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "exported").exists()


def test_a_removed_adapter_gives_the_command_that_trains_the_run_again(trained, tmp_path, capsys):
    """The advice is followed to the letter: a finished run is skipped until its result.json is removed."""
    _, original, _ = trained("rct-lora")
    run_dir = copied_run(trained, tmp_path, "rct-lora")
    shutil.rmtree(run_dir / "adapter")
    (tmp_path / "in.csv").write_text("text\nPatients were randomised.\n")
    err = cli_error(capsys, ["predict", str(run_dir), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.jsonl")])
    runs = tmp_path / "runs"
    for needle in ("no adapter/ folder", f"remove {run_dir / 'result.json'}", f"medpeft run GRID.yaml --runs-dir {runs}",
                   "name: toy"):
        assert needle in err, (needle, err)
    config = json.loads((run_dir / "result.json").read_text())["config"]
    grid = tmp_path / "toy.yaml"  # the run's own settings (JSON is YAML)
    grid.write_text(json.dumps({"name": "toy", "base": {k: v for k, v in config.items() if v is not None}}))
    (run_dir / "result.json").unlink()
    assert cli.main(["run", str(grid), "--runs-dir", str(runs)]) == 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()  # trained again, in the same folder
    inputs = write_inputs(tmp_path / "again.csv", read_jsonl(original / "predictions.jsonl"))
    assert cli.main(["predict", str(run_dir), "--input", str(inputs), "--output", str(tmp_path / "o.jsonl")]) == 0
    shutil.rmtree(run_dir / "adapter")  # now the grid folder records its grid file (grid.json): the advice names it
    err = cli_error(capsys, ["export", str(run_dir), "--out", str(tmp_path / "exported")])
    assert f"medpeft run {grid} --runs-dir {runs}" in err and "GRID.yaml" not in err
