"""Issue 30: the grid file's resources:, ray: and slurm: blocks, their command-line overrides, what each engine
is asked for, the retry loop every engine shares, and the refusals that come before anything runs."""
from __future__ import annotations

import sys
import types

import pytest

from medpeft.config import expand_grid
from medpeft.config.engine import EngineOptions, parse_engine_options
from medpeft.engines import open_engine
from medpeft.engines.base import RAY_HINT, SLURM_HINT, Engine, Outcome, map_jobs
from medpeft.errors import ConfigError

BASE = {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}


def test_a_grid_file_sets_resources_ray_and_slurm():
    grid = expand_grid({"base": BASE, "resources": {"gpus_per_run": 0.5, "cpus_per_run": 4},
                        "ray": {"address": "auto"},
                        "slurm": {"partition": "gpu", "time": 90, "setup": ["module load cuda"], "additional": {"exclude": "n1"}}},
                       name="g")
    options = grid.engine
    assert (options.resources.gpus_per_run, options.resources.cpus_per_run, options.resources.retries) == (0.5, 4.0, 1)
    assert options.ray.address == "auto"
    assert (options.slurm.partition, options.slurm.time, options.slurm.setup) == ("gpu", 90, ["module load cuda"])
    assert expand_grid({"base": BASE}, name="g").engine == EngineOptions()  # all optional


@pytest.mark.parametrize("spec, named", [
    ({"slurm": {"partiton": "gpu"}}, "slurm.partiton"),
    ({"resources": {"gpus_per_run": -1}}, "resources.gpus_per_run"),
    ({"resources": {"gpus_per_run": 0, "cpus_per_run": 0}}, "cpus_per_run"),
    ({"slurm": {"time": 0}}, "slurm.time"),
    ({"slurm": {"cluster": "kubernetes"}}, "slurm.cluster"),
    ({"slurm": {"setup": [1, 2]}}, "slurm.setup"),
    ({"ray": "auto"}, "ray must be a mapping"),
    ({"ray": {"num_cpus": "many"}}, "ray.num_cpus"),
])
def test_a_bad_engine_setting_is_refused_naming_its_key(spec, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_engine_options(spec, "g.yaml")


def test_command_line_pairs_override_the_grid_files_block():
    options = parse_engine_options({"slurm": {"partition": "cpu", "time": 30}}, "g.yaml")
    options = options.updated("slurm", ["partition=gpu", "additional={exclude: node12}"]).updated("resources", ["gpus_per_run=1"])
    assert (options.slurm.partition, options.slurm.time, options.slurm.additional) == ("gpu", 30, {"exclude": "node12"})
    assert options.resources.gpus_per_run == 1.0
    with pytest.raises(ConfigError, match="--ray takes KEY=VALUE"):
        options.updated("ray", ["auto"])
    with pytest.raises(ConfigError, match="ray.adress"):
        options.updated("ray", ["adress=auto"])


def test_map_jobs_retries_a_lost_worker_and_never_a_job_that_raised():
    ran, ended, retried = [], [], []

    class Engine_(Engine):
        name, lives = "fake", {"b": 2, "c": 5}  # b's worker dies twice, c's every time

        def start(self, fn, jobs):
            handles = []
            for job in jobs:
                ran.append(job)
                handles.append((job, len(ran)))
            return handles

        def finished(self, handles):
            job, _ = handle = handles[0]
            if self.lives.get(job, 0) > 0:
                self.lives[job] -= 1
                return [(handle, Outcome(error="WorkerCrashedError: killed", lost=True))]
            if job == "d":
                return [(handle, Outcome(error="ModelError: no such model"))]
            return [(handle, Outcome(value=job.upper()))]

    outcomes = map_jobs(Engine_(), str, ["a", "b", "c", "d"], 2, lambda i, o: ended.append(i),
                        lambda i, o, attempt: retried.append((i, attempt)))
    assert [o.value for o in outcomes] == ["A", "B", None, None]
    assert outcomes[2].lost and "killed" in outcomes[2].error  # lost three times: given up after 2 retries
    assert outcomes[3].error == "ModelError: no such model" and not outcomes[3].lost
    assert ran.count("b") == 3 and ran.count("c") == 3 and ran.count("d") == 1 and ran.count("a") == 1
    assert sorted(ended) == [0, 1, 2, 3] and retried == [(1, 1), (2, 1), (1, 2), (2, 2)]


@pytest.mark.parametrize("backend, module, hint", [("ray", "ray", RAY_HINT), ("slurm", "submitit", SLURM_HINT)])
def test_a_missing_engine_package_names_the_extra_to_install(monkeypatch, tmp_path, backend, module, hint):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(ConfigError) as err:
        open_engine(backend, EngineOptions(), tmp_path, print)
    assert str(err.value) == hint and f"medpeft[{backend}]" in hint


class FakeExecutor:
    """submitit's AutoExecutor on a Slurm cluster, recording what it is asked to submit."""

    cluster = "slurm"
    submitted: list = []

    def __init__(self, folder, cluster=None):
        self.folder, self.parameters = folder, {}

    def update_parameters(self, **kwargs):
        self.parameters.update(kwargs)

    def map_array(self, fn, jobs):
        self.submitted.append(("array", fn, list(jobs), dict(self.parameters)))
        return [types.SimpleNamespace(job_id=f"4242_{i}") for i in range(len(jobs))]

    def submit(self, fn, job):
        self.submitted.append(("job", fn, job, dict(self.parameters)))
        return types.SimpleNamespace(job_id="4243")


@pytest.fixture
def fake_slurm(monkeypatch):
    FakeExecutor.submitted = []
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor, core=None))
    return FakeExecutor.submitted


def test_slurm_options_become_submitits_parameters_and_no_wait_submits_the_report_after_the_array(fake_slurm, tmp_path):
    from medpeft.engines import slurm_engine

    options = parse_engine_options({"resources": {"gpus_per_run": 1, "cpus_per_run": 6},
                                    "slurm": {"partition": "gpu", "time": 120, "mem_gb": 40, "array_parallelism": 4,
                                              "additional": {"exclude": "n1"}, "setup": ["module load cuda"]}}, "g")
    engine = slurm_engine.SlurmEngine(options.slurm, options.resources, tmp_path, lambda *_: None)
    params = engine.executor.parameters
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 120 and params["mem_gb"] == 40
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 6 and params["slurm_array_parallelism"] == 4
    assert params["slurm_setup"] == ["module load cuda"] and params["slurm_additional_parameters"] == {"exclude": "n1"}
    assert engine.executor.folder == str(tmp_path / "%j")
    assert engine.submit_detached(len, ["r1", "r2"], print, "runs/g") == ("4242", "4243")
    (kind, _, jobs, _), (kind2, _, job, after) = fake_slurm
    assert (kind, jobs, kind2, job) == ("array", ["r1", "r2"], "job", "runs/g")
    assert after["slurm_additional_parameters"] == {"exclude": "n1", "dependency": "afterany:4242"}
    assert after["gpus_per_node"] == 0  # the report job holds no GPU


def test_no_wait_checks_the_grid_then_submits_its_unfinished_runs_and_the_report_job(fake_slurm, tmp_path, capsys, assets_ready):
    from medpeft import cli, grid as grid_module

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml_text({"name": "g", "base": {**BASE, "train": {"max_steps": 2}}, "grid": {"seed": [0, 1]}}))
    runs = tmp_path / "runs"
    assert cli.main(["run", str(grid), "--runs-dir", str(runs), "--backend", "slurm", "--no-wait", "--resources", "cpus_per_run=3"]) == 0
    (kind, fn, jobs, _), (kind2, report_fn, report_dir, after) = fake_slurm
    assert (kind, kind2, fn, report_fn) == ("array", "job", grid_module.run_job, grid_module.write_outputs_job)
    assert sorted(job.config.seed for job in jobs if job.config.method == "lora") == [0, 1] and len(jobs) == 3  # and the baseline
    assert all(job.grid_dir == str((runs / "g").resolve()) and job.threads == 3 for job in jobs)
    assert report_dir == str((runs / "g").resolve()) and after["slurm_additional_parameters"] == {"dependency": "afterany:4242"}
    out = capsys.readouterr().out
    assert "job array 4242 holds the other 3" in out and "squeue -j 4242" in out and "report: job 4243" in out
    assert (runs / "g" / "grid.json").exists() and not list((runs / "g").glob("*/result.json"))  # submitted, nothing run here


def test_ray_refuses_a_run_the_cluster_cannot_hold():
    from medpeft.config.engine import Resources
    from medpeft.engines.ray_engine import fitting_runs

    assert fitting_runs({"CPU": 16.0, "GPU": 2.0}, Resources(gpus_per_run=0.5, cpus_per_run=2)) == 4
    assert fitting_runs({"CPU": 2.0}, Resources(cpus_per_run=1)) == 2
    with pytest.raises(ConfigError, match="asks for 1 GPU, but the Ray cluster has 0"):
        fitting_runs({"CPU": 2.0}, Resources(gpus_per_run=1))


@pytest.mark.parametrize("extra, message", [
    (["--backend", "ray", "--shard", "0/2"], "--shard splits a grid over workers you start yourself"),
    (["--no-wait"], "--no-wait submits jobs and returns: it needs --backend slurm"),
    (["--backend", "ray", "--no-wait"], "--no-wait submits a Slurm job array"),
    (["--backend", "ray", "--resources", "gpus_per_run"], "--resources takes KEY=VALUE"),
    (["--backend", "slurm", "--slurm", "partion=gpu"], "slurm.partion"),
])
def test_the_cli_refuses_a_backend_misuse_before_anything_starts(tmp_path, capsys, extra, message):
    from medpeft import cli

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml_text({"base": BASE}))
    assert cli.main(["run", str(grid), "--runs-dir", str(tmp_path / "runs"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written, no engine started


def test_no_wait_refuses_a_tuned_grid_and_says_how_to_run_it(tmp_path, capsys):
    from medpeft import cli

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml_text({"base": BASE, "tune": "auto"}))
    assert cli.main(["run", str(grid), "--runs-dir", str(tmp_path / "runs"), "--backend", "slurm", "--no-wait"]) == 2
    assert "sbatch --wrap 'medpeft run GRID --backend slurm'" in capsys.readouterr().err


def yaml_text(spec: dict) -> str:
    import yaml

    return yaml.safe_dump(spec)


def test_a_local_ray_cluster_sends_no_usage_statistics_and_gives_back_the_signal_handlers(tmp_path, monkeypatch):
    """Ray reports usage statistics over the network unless told not to: nothing leaves the machine unless the
    user asked. ray.init sets its own SIGTERM handler and ray.shutdown leaves it; medpeft's stop handling
    (run/preempt.py) and whatever ran before need theirs back."""
    pytest.importorskip("ray")
    import signal

    from ray._common.usage import usage_lib

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    engine = open_engine("ray", parse_engine_options({"ray": {"num_cpus": 1}}, "test"), tmp_path, lambda *_: None)
    try:
        assert not usage_lib.usage_stats_enabled()
    finally:
        engine.close()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_job_submitted_again_is_the_retry_form_of_itself():
    """A lost worker's run lock outlives it (on another node until it is stale): the job submitted again must
    wait for that lock instead of leaving its run to a dead worker, so map_jobs submits again(job)."""
    submitted = []

    class Once(Engine):
        def start(self, fn, jobs):
            submitted.extend(jobs)
            return list(jobs)

        def finished(self, handles):
            job = handles[0]
            return [(job, Outcome(error="lost", lost=True) if job == "run" else Outcome(value=job))]

    outcomes = map_jobs(Once(), str, ["run"], 1, lambda *a: None, lambda *a: None, again=lambda job: job + " (waiting)")
    assert submitted == ["run", "run (waiting)"] and outcomes[0].value == "run (waiting)"


def test_a_refused_submission_names_the_slurm_settings_and_a_stopped_engine_stops_waiting(fake_slurm, tmp_path):
    from medpeft.engines import slurm_engine

    def refuse(*args):
        raise RuntimeError("sbatch: error: invalid partition specified: gpu-typo")

    with pytest.raises(ConfigError, match=r"invalid partition specified: gpu-typo\); check slurm.partition"):
        slurm_engine.refused_as_config_error(refuse, "fn", [])
    options = parse_engine_options({"slurm": {"poll_s": 0.01}}, "g")
    engine = slurm_engine.SlurmEngine(options.slurm, options.resources, tmp_path, lambda *_: None)
    never = types.SimpleNamespace(done=lambda: False, job_id="1")
    handle = slurm_engine.Submission(len, "job")
    handle.submitted = never
    engine.close()  # a stop signal in the driver: tuning threads waiting on jobs must not hold it up
    with pytest.raises(RuntimeError, match="stopped"):
        engine.finished([handle])


def test_the_debug_executors_exception_in_done_is_the_jobs_error_not_the_grids():
    from medpeft.engines import slurm_engine

    def done():
        raise ValueError("the job's own error")

    handle = slurm_engine.Submission(len, "job")
    handle.submitted = types.SimpleNamespace(done=done)
    assert slurm_engine.poll(handle) == "ValueError: the job's own error"


def test_a_ray_cluster_that_cannot_hold_a_run_is_shut_down_again(tmp_path):
    ray = pytest.importorskip("ray")
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    options = parse_engine_options({"ray": {"num_cpus": 1}, "resources": {"gpus_per_run": 1}}, "test")
    with pytest.raises(ConfigError, match="asks for 1 GPU"):
        open_engine("ray", options, tmp_path, lambda *_: None)
    assert not ray.is_initialized()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_slurm_job_out_of_time_is_a_lost_worker_and_a_jobs_own_error_is_not(tmp_path):
    submitit = pytest.importorskip("submitit")
    from medpeft.engines import slurm_engine

    options = parse_engine_options({"slurm": {"cluster": "debug", "time": 90}}, "g")
    engine = slurm_engine.SlurmEngine(options.slurm, options.resources, tmp_path, lambda *_: None)

    def job(err):
        def result():
            raise err
        return types.SimpleNamespace(result=result, job_id="77_3", paths=types.SimpleNamespace(stderr=tmp_path / "77_3.err"))

    timed_out = engine.outcome(job(submitit.core.utils.FailedJobError(
        "Job (task=0) failed during processing with trace:\n----\nsubmitit.core.utils.UncompletedJobError: Job not requeued "
        "because: timed-out and not checkpointable.\n----")))
    assert timed_out.lost and "ran out of time (slurm.time 90 min)" in timed_out.error
    raised = engine.outcome(job(submitit.core.utils.FailedJobError("trace:\n----\nFileNotFoundError: notes.csv\n----")))
    assert not raised.lost and raised.error.startswith("FileNotFoundError: notes.csv")
    killed = engine.outcome(job(submitit.core.utils.UncompletedJobError("Job 77_3 has not produced any output\n(state: NODE_FAIL)")))
    assert killed.lost and "NODE_FAIL" in killed.error
