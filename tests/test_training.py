import argparse
import json
import math
from dataclasses import replace

import pytest
import torch

from ndm.data.atomic import atomic_write
from ndm.runs.builders import build_model
from ndm.runs.checkpoint import load_checkpoint, save_checkpoint
from ndm.runs.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_from_record,
    config_to_dict,
    with_resolved_time_scales,
)
from ndm.runs.folder import load_run
from ndm.runs.optim import clip_gradients, parameter_groups
from ndm.runs.training import train
from tests.payload import CodeRunningPayload

pytestmark = pytest.mark.usefixtures("single_thread")
TENSORBOARD_EVENTS = "events.out.tfevents"  # written beside the run files when installed


def tiny(steps: int = 6, **train: object) -> RunConfig:
    return RunConfig(
        DataConfig(n_train=256, n_test=64),
        ModelConfig(hidden=16, depth=1),
        TrainConfig(
            **{
                "steps": steps,
                "batch_size": 32,
                "warmup_steps": 3,
                "checkpoint_every": 3,
                "log_every": 2,
            }
            | train  # fmt: skip
        ),
        EvalConfig(n_eval=16, rtol=1e-3, atol=1e-3, nelbo_time_samples=2, n_samples=64),
    )


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def logged_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- config ---------------------------------------------------------------------------


def custom_config() -> RunConfig:
    return RunConfig(
        DataConfig(dataset="moons", n_train=300, n_test=40, seed=3),
        ModelConfig(
            transform="identity",
            schedule="cosine",
            parameterisation="x",
            hidden=8,
            kinetic_weight=0.5,
        ),
        TrainConfig(steps=7, lr=1e-3, ema_decay=0.9, seed=5, device="cpu"),
        EvalConfig(n_eval=9, rtol=1e-4),
    )


def test_config_round_trip_through_dict_and_json():
    cfg = custom_config()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    assert config_from_dict({}) == RunConfig()
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0  # int accepted for a float


@pytest.mark.parametrize(
    ("model", "predictor_scale", "transform_scale"),
    [({"objective": "discrete", "num_steps": 10}, 10.0, 10.0),
     ({"objective": "discrete", "num_steps": 1000}, 1000.0, 1000.0),
     ({}, 1000.0, 1000.0),
     ({"objective": "discrete", "num_steps": 10, "time_scale": 50.0}, 50.0, 50.0),
     ({"time_scale": 50.0, "transform_time_scale": 5.0}, 50.0, 5.0)],
)  # fmt: skip
def test_the_networks_embed_the_step_index_in_discrete_time(
    model: dict, predictor_scale: float, transform_scale: float
) -> None:
    cfg = ModelConfig(hidden=8, depth=1, **model)
    built = build_model(cfg, (2,))
    assert built.predictor.net.time_scale == predictor_scale
    assert built.process.transform.net.time_scale == transform_scale
    resolved = with_resolved_time_scales(RunConfig(model=cfg)).model
    assert (resolved.time_scale, resolved.transform_time_scale) == (
        predictor_scale,
        transform_scale,
    )
    separable = build_model(replace(cfg, transform="separable", transform_time_scale=None), (2,))
    assert separable.process.transform.net.time_scale == predictor_scale


def test_config_round_trip_through_argparse():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RunConfig)
    assert config_from_args(parser.parse_args([])) == RunConfig()
    argv = "--dataset moons --n-train 300 --n-test 40 --data-seed 3 --transform identity "
    argv += "--schedule cosine --parameterisation x --hidden 8 --kinetic-weight 0.5 --steps 7 "
    argv += "--lr 1e-3 "
    argv += "--ema-decay 0.9 --train-seed 5 --device cpu --n-eval 9 --rtol 1e-4"
    assert config_from_args(parser.parse_args(argv.split())) == custom_config()
    # flags not given keep the values of the base config
    base = custom_config()
    assert config_from_args(parser.parse_args(["--steps", "11"]), base) == replace(
        base, train=replace(base.train, steps=11)
    )


def test_config_flags_validate_choices(capsys):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RunConfig)
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "bogus"])
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'cosine'" in err


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown config keys \['colour'\]"):
        config_from_dict({"model": {"colour": "red"}})
    with pytest.raises(ValueError, match=r"unknown config sections \['extra'\]"):
        config_from_dict({"extra": {}})
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown schedule 'bogus'.*linear"):
        ModelConfig(schedule="bogus")
    with pytest.raises(ValueError, match="lr must be of type float"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ValueError, match="ema_decay must be in"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="toaster")


def test_simple_objective_with_learned_transform_is_refused():
    with pytest.raises(ValueError, match="simple.*learned"):
        ModelConfig(objective="simple", transform="learned")
    assert ModelConfig(objective="simple", transform="identity").objective == "simple"


# --- model builder --------------------------------------------------------------------


def test_learned_transform_starts_at_identity():
    model = build_model(ModelConfig(hidden=16, depth=2), shape=(3,))
    x, t = torch.randn(5, 3), torch.rand(5)
    assert torch.equal(model.process.transform.value(x, t), x)
    assert model.process.transform.is_learned
    baseline = build_model(ModelConfig(hidden=16, depth=2, transform="identity"), shape=(3,))
    assert not baseline.process.transform.is_learned
    assert baseline.objective == model.objective and baseline.time_sampling == model.time_sampling


# --- checkpoints ----------------------------------------------------------------------


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    model = build_model(ModelConfig(hidden=16, depth=1), shape=(2,))
    state = {"config": config_to_dict(tiny()), "step": 4, "model": model.state_dict()}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    save_checkpoint(path, state)  # replacing an existing file
    loaded = load_checkpoint(path)
    assert loaded["step"] == 4 and loaded["config"] == state["config"]
    assert loaded["model"].keys() == state["model"].keys()
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def failing(file):
        file.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_load_checkpoint_errors_name_the_path(tmp_path):
    missing = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint\xff" * 10)
    with pytest.raises(ValueError, match="garbage.pt is corrupt or not an ndm checkpoint"):
        load_checkpoint(garbage)
    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {"config": {}, "step": 1})
    with pytest.raises(ValueError, match=r"partial.pt .*missing keys \['model'\]"):
        load_checkpoint(partial)


# --- training -------------------------------------------------------------------------


def test_train_writes_run_folder(tmp_path):
    run = tmp_path / "run"
    model = train(tiny(), run)
    written = sorted(p.name for p in run.iterdir() if not p.name.startswith(TENSORBOARD_EVENTS))
    assert written == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    stored = with_resolved_time_scales(tiny())  # the time scales stored explicitly
    assert config_from_dict(json.loads((run / "config.json").read_text())) == stored
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged_steps(run) == [2, 4, 6]
    keys = {"step", "loss", "nelbo", "prior", "diffusion", "reconstruction", "lr", "grad_norm"}
    # tiny() learns its transform: the gradient norm is also split between phi and theta
    assert keys | {"seconds_per_step", "grad_norm_phi", "grad_norm_theta"} == set(lines[0])
    assert all(math.isfinite(v) for line in lines for v in line.values())
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 6 and state["config"] == config_to_dict(stored)
    # the returned model carries the EMA weights, as load_run does
    cfg, loaded = load_run(run)
    assert cfg == stored
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters(), strict=True)
    )
    assert no_temp_files(run)


def test_logged_nelbo_is_the_sum_of_its_terms_and_leaves_out_the_kinetic_penalty(tmp_path):
    """With a kinetic weight the optimised loss is ``nelbo + weight * kinetic``; the logged
    ``nelbo`` is the bound alone, the sum of its terms."""
    weight = 0.5
    cfg = tiny(steps=2)
    cfg = replace(cfg, model=replace(cfg.model, kinetic_weight=weight))
    run = tmp_path / "run"
    train(cfg, run)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    for line in lines:
        terms = line["prior"] + line["diffusion"] + line["reconstruction"]
        assert line["nelbo"] == pytest.approx(terms, rel=1e-5)
        assert line["kinetic"] > 0
        assert line["loss"] - line["nelbo"] == pytest.approx(weight * line["kinetic"], rel=1e-4)
        assert line["loss"] != pytest.approx(line["nelbo"], rel=1e-3)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    split, whole = tmp_path / "split", tmp_path / "whole"
    train(tiny(steps=4), split)
    train(tiny(steps=8), split, resume=True)
    train(tiny(steps=8), whole)
    a, b = load_checkpoint(split / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in b[key])
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_b)
    assert torch.equal(a["generator"], b["generator"])
    assert logged_steps(split) == logged_steps(whole) == [2, 4, 6, 8]


def test_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run)
    before = snapshot(run)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train(tiny(steps=9), run)
    with pytest.raises(ValueError, match="already reached step 6"):
        train(tiny(), run, resume=True)
    changed = replace(tiny(steps=9), model=replace(tiny().model, hidden=8))
    with pytest.raises(ValueError, match=r"model.hidden"):
        train(changed, run, resume=True)
    assert snapshot(run) == before


def test_resuming_an_absent_run_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny(), tmp_path / "absent", resume=True)
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, float("inf")]]),
            "NaN or inf.*2 of 3",
        ),
        (torch.zeros(10), r"shape \[N, D\].*\(10,\)"),
        (torch.zeros(10, 2, 1), r"shape \[N, D\].*\(10, 2, 1\)"),
        (torch.zeros(10, 2, dtype=torch.long), "floating point"),
    ],
)
def test_bad_training_data_is_refused_before_writing(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(), tmp_path / "new", train_data=data)
    assert not (tmp_path / "new").exists()
    run = tmp_path / "run"
    train(tiny(), run)
    before = snapshot(run)
    with pytest.raises(ValueError, match=message):
        train(tiny(steps=9), run, resume=True, train_data=data)
    assert snapshot(run) == before


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run)
    state = load_checkpoint(run / "checkpoint.pt")
    # finite weights whose activations overflow float32
    state["model"] = {
        k: v * 1e30 if v.is_floating_point() else v for k, v in state["model"].items()
    }
    save_checkpoint(run / "checkpoint.pt", state)
    checkpoint = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(FloatingPointError, match="non-finite.*step 7.*step 6"):
        train(tiny(steps=9), run, resume=True)
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    assert no_temp_files(run)


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run)
    with (run / "metrics.jsonl").open("a") as file:  # as left by a run stopped at step 7
        file.write(json.dumps({"step": 7, "loss": 0.0}) + "\n")
    train(tiny(steps=8), run, resume=True)
    assert logged_steps(run) == [2, 4, 6, 8]


# --- stops, writers, temporary files --------------------------------------------------

_SLOW_RUN = """
import sys, torch
from ndm.runs.config import *
from ndm.runs.training import train
torch.set_num_threads(1)
cfg = RunConfig(DataConfig(n_train=256, n_test=64), ModelConfig(hidden=16, depth=1),
                TrainConfig(steps={steps}, batch_size=32, warmup_steps=3, checkpoint_every=1000,
                            log_every=1000),
                EvalConfig(n_eval=16))
print("started", flush=True)
train(cfg, sys.argv[1], resume=len(sys.argv) > 2)
"""


def _start(run, steps: int, *extra: str):
    import subprocess
    import sys

    code = _SLOW_RUN.format(steps=steps)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(run), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_writes_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    import signal
    import time

    run, whole = tmp_path / "stopped", tmp_path / "whole"
    proc = _start(run, 100_000)
    assert proc.stdout.readline().strip() == "started"
    while not (run / "config.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # some steps, far from the first checkpoint at step 1000
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped by SIGTERM after step" in err, err
    stopped_at = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 0 < stopped_at < 1000
    # continue to stopped_at + 5 steps; compare with a run that never stopped
    cfg = replace(tiny(steps=stopped_at + 5), data=DataConfig(n_train=256, n_test=64))
    cfg = replace(cfg, train=replace(cfg.train, checkpoint_every=1000, log_every=1000))
    train(cfg, run, resume=True)
    train(cfg, whole)
    a, b = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in b[key])


def test_a_second_writer_is_refused_and_stale_temporaries_removed(tmp_path):
    import time

    run = tmp_path / "run"
    train(tiny(), run)
    stale = run / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    proc = _start(run, 100_000, "--resume")
    assert proc.stdout.readline().strip() == "started"
    while stale.exists():  # the first writer holds the folder and has cleaned it
        time.sleep(0.05)
    with pytest.raises(ValueError, match="in use by another ndm process"):
        train(tiny(steps=9), run, resume=True)
    proc.terminate()
    proc.communicate(timeout=120)
    assert no_temp_files(run)


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {}, "step": 1, "model": CodeRunningPayload(marker)}, path)
    with pytest.raises(ValueError, match="corrupt or not an ndm checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_run_saved_before_the_reverse_variance_option_loads_with_the_posterior_one(tmp_path):
    run = tmp_path / "old"
    cfg = replace(tiny(), model=replace(tiny().model, objective="discrete", num_steps=10,
                                        reverse_variance="posterior"))  # fmt: skip
    train(cfg, run)
    state = load_checkpoint(run / "checkpoint.pt")
    del state["config"]["version"], state["config"]["model"]["reverse_variance"]
    save_checkpoint(run / "checkpoint.pt", state)
    loaded, model = load_run(run)
    assert loaded.model.reverse_variance == "posterior" and not model.predictor.variance


def test_a_run_saved_before_the_time_scale_options_loads_and_resumes_as_it_ran(tmp_path):
    run = tmp_path / "old"
    discrete = {"objective": "discrete", "num_steps": 10}
    cfg = replace(tiny(), model=replace(tiny().model, **discrete, time_scale=1000.0,
                                        transform_time_scale=1000.0))  # fmt: skip
    train(cfg, run)
    state = load_checkpoint(run / "checkpoint.pt")
    del state["config"]["version"]
    for name in ("time_scale", "transform_time_scale"):
        del state["config"]["model"][name]
    save_checkpoint(run / "checkpoint.pt", state)
    loaded, model = load_run(run)
    assert model.predictor.net.time_scale == model.process.transform.net.time_scale == 1000.0
    # the new default (the step index, 10 t) is not what the run was trained with
    default = replace(tiny(steps=8), model=replace(tiny().model, **discrete))
    with pytest.raises(ValueError, match=r"\['model.transform_time_scale', 'model.time_scale'\]"):
        train(default, run, resume=True)
    train(replace(default, model=loaded.model), run, resume=True)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 8
    # an identity transform stored the old default 1000 for F's (unused) time scale
    identity = config_to_dict(RunConfig(model=ModelConfig(transform="identity")))
    del identity["version"]
    identity["model"]["transform_time_scale"] = 1000.0
    assert config_from_record(identity).model.transform_time_scale is None


# --- resumed settings, records and inputs -----------------------------------------------


@pytest.mark.parametrize(
    ("train_change", "name"),
    [({"lr": 10.0}, "train.lr"), ({"weight_decay": 0.5}, "train.weight_decay"),
     ({"seed": 7}, "train.seed"), ({"batch_size": 16}, "train.batch_size")],
)  # fmt: skip
def test_resume_refuses_changed_optimisation_settings(tmp_path, train_change, name):
    run = tmp_path / "run"
    train(tiny(), run)
    before = snapshot(run)
    with pytest.raises(ValueError, match=rf"changes \['{name}'\].*may change only"):
        train(tiny(steps=9, **train_change), run, resume=True)
    assert snapshot(run) == before
    train(tiny(steps=9, checkpoint_every=4, log_every=3), run, resume=True)  # cadence may change
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 9


def test_resume_refuses_a_hand_edited_config_record(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run)
    record = json.loads((run / "config.json").read_text())
    record["train"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"config.json differs.*\['train.lr'\].*a record"):
        train(tiny(steps=9), run, resume=True)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not the config of this run"):
        train(tiny(steps=9), run, resume=True)


def test_resume_drops_a_truncated_last_metrics_line_and_names_a_bad_one(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run)
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 7, "lo')  # cut short by a kill
    train(tiny(steps=8), run, resume=True)
    assert logged_steps(run) == [2, 4, 6, 8]
    for bad, message in (("{oops\n", "line 2: not a JSON"), ('{"loss": 1}\n', "line 2: .*'step'")):
        lines = metrics.read_text().splitlines(keepends=True)
        metrics.write_text(lines[0] + bad + "".join(lines[1:]))
        with pytest.raises(ValueError, match=rf"metrics.jsonl, {message}"):
            train(tiny(steps=10), run, resume=True)
        metrics.write_text("".join(lines))


def test_a_resumed_metrics_line_averages_the_steps_before_the_stop(tmp_path, monkeypatch):
    """log_every 3 does not divide checkpoint_every 4: after a kill just after the
    checkpoint of step 4, the line of step 6 still averages steps 4..6."""
    import ndm.runs.training

    def save_then_die(path, state):
        save_checkpoint(path, state)
        raise KeyboardInterrupt  # as SIGKILL right after the write

    split, whole = tmp_path / "split", tmp_path / "whole"
    monkeypatch.setattr(ndm.runs.training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(steps=8, checkpoint_every=4, log_every=3), split)
    monkeypatch.undo()
    assert load_checkpoint(split / "checkpoint.pt")["step"] == 4 and logged_steps(split) == [3]
    train(tiny(steps=8, checkpoint_every=4, log_every=3), split, resume=True)
    train(tiny(steps=8, checkpoint_every=4, log_every=3), whole)
    lines = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (split, whole)
    ]
    drop = ("seconds_per_step",)
    assert [{k: v for k, v in x.items() if k not in drop} for x in lines[0]] == [
        {k: v for k, v in x.items() if k not in drop} for x in lines[1]
    ]


def test_a_run_on_given_points_keeps_them_and_resumes_on_them(tmp_path, monkeypatch):
    from ndm.data.loading import load_splits

    data, test = torch.randn(200, 3), torch.randn(20, 3)
    run = tmp_path / "run"
    train(tiny(), run, train_data=data, test_data=test)
    cfg, _ = load_run(run)
    assert cfg.data.dataset == "points" and cfg.data.path == str((run / "data.npz").resolve())
    splits = load_splits("points", 0, 0, 0, cfg.data.path)
    assert torch.equal(splits.train, data) and torch.equal(splits.test, test)
    monkeypatch.chdir(tmp_path)  # the stored path does not depend on the working directory
    train(replace(cfg, train=replace(cfg.train, steps=8)), "run", resume=True)
    with pytest.raises(ValueError, match="trained on other points"):
        train(tiny(steps=9), run, resume=True, train_data=data + 1)


def test_relative_data_paths_are_stored_resolved(tmp_path, monkeypatch):
    from ndm.data.points import save_points

    with (tmp_path / "pts.npz").open("wb") as file:
        save_points(file, torch.randn(100, 2), torch.randn(10, 2))
    monkeypatch.chdir(tmp_path)
    cfg = replace(tiny(), data=DataConfig(dataset="points", path="pts.npz"))
    train(cfg, "run")
    assert load_run(tmp_path / "run")[0].data.path == str(tmp_path / "pts.npz")


def test_evaluation_inputs_are_checked_before_the_first_step(tmp_path):
    cfg = replace(tiny(), eval=replace(tiny().eval, fid_weights=str(tmp_path / "absent.pt")))
    with pytest.raises(FileNotFoundError, match="FID weights file .*absent.pt not found"):
        train(cfg, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_points_file_that_needs_unpickling_is_refused(tmp_path):
    import numpy as np

    from ndm.data.points import read_points

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled Python objects") as error:
        read_points(tmp_path / "objects.npy")
    assert "allow_pickle" not in str(error.value)


def test_non_finite_weights_are_never_written_nor_loaded(tmp_path):
    run = tmp_path / "run"
    train(tiny(), run)
    state = load_checkpoint(run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    name = next(iter(state["ema"]))
    poisoned = {**state, "ema": {**state["ema"], name: state["ema"][name] * math.nan}}
    with pytest.raises(FloatingPointError, match="non-finite values in 1 tensors"):
        save_checkpoint(run / "checkpoint.pt", poisoned)
    assert (run / "checkpoint.pt").read_bytes() == before and no_temp_files(run)
    torch.save(poisoned, run / "checkpoint.pt")  # as a foreign writer could
    with pytest.raises(ValueError, match="non-finite weights"):
        load_run(run)


@pytest.mark.parametrize("step", [1.5, "3", -1, True])
def test_a_checkpoint_step_that_is_not_a_count_is_refused(tmp_path, step):
    torch.save({"config": {}, "step": step, "model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="its step is .* not a count of steps"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_run_files_are_readable_by_others_under_the_umask_and_json_is_strict(tmp_path):
    import os

    from ndm.runs.checkpoint import save_json

    old = os.umask(0o022)
    try:
        train(tiny(), tmp_path / "run")
        save_json(tmp_path / "m.json", {"a": math.nan, "b": [math.inf, 1.0]})
    finally:
        os.umask(old)
    for path in (*(tmp_path / "run").iterdir(), tmp_path / "m.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [None, 1.0]}


def test_learned_schedule_endpoints_train_without_weight_decay(tmp_path):
    model_cfg = replace(tiny().model, objective="discrete", num_steps=10,
                        schedule_endpoints="learned")  # fmt: skip
    cfg = replace(tiny(), model=model_cfg, train=replace(tiny().train, weight_decay=0.5))
    train(cfg, tmp_path / "run")
    _, model = load_run(tmp_path / "run")
    lo, hi = model.process.schedule.endpoints.values()
    assert (lo, hi) != pytest.approx((-13.3, 5.0), abs=1e-4)  # trained on the loss
    assert model.predictor.schedule is model.process.schedule
    groups = parameter_groups(build_model(model_cfg, (2,)), cfg.train)
    assert [g.get("weight_decay") for g in groups] == [None, 0.0]
    assert [p.numel() for p in groups[1]["params"]] == [2]
    with pytest.raises(ValueError, match="schedule 'linear' has fixed end points"):
        ModelConfig(schedule="linear", schedule_endpoints="learned")


@pytest.mark.parametrize("apart", [False, True])
def test_gradients_are_clipped_together_or_apart(apart):
    model = build_model(ModelConfig(hidden=8, depth=1), (2,))
    for name, param in model.named_parameters():  # phi's gradient 100 times theta's
        param.grad = torch.full_like(param, 100.0 if name.startswith("process.transform.") else 1.0)
    phi = [p for n, p in model.named_parameters() if n.startswith("process.transform.")]
    theta = [p for n, p in model.named_parameters() if not n.startswith("process.transform.")]

    def norm(params):
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))

    before = (norm(phi), norm(theta))
    total = clip_gradients(model, 1.0, apart)
    assert float(total) == pytest.approx(math.hypot(*before), rel=1e-5)
    if apart:
        assert (norm(phi), norm(theta)) == pytest.approx((1.0, 1.0), rel=1e-5)
    else:  # one scale for all: theta's share is what phi leaves it
        assert norm(theta) == pytest.approx(before[1] / math.hypot(*before), rel=1e-4)


def test_a_transform_learning_rate_of_zero_freezes_phi_and_auto_is_lr(tmp_path):
    cfg = tiny(steps=4, transform_lr=0.0, weight_decay=0.1)
    cfg = replace(cfg, model=replace(cfg.model, transform_init_scale=1.0))
    torch.manual_seed(cfg.train.seed)
    start = build_model(cfg.model, (2,)).process.transform.state_dict()
    model = train(cfg, tmp_path / "frozen")
    for name, value in model.process.transform.state_dict().items():
        assert torch.equal(value, start[name]), name
    trained = train(replace(cfg, train=replace(cfg.train, transform_lr=None)), tmp_path / "auto")
    moved = [
        not torch.equal(v, start[k]) for k, v in trained.process.transform.state_dict().items()
    ]
    assert any(moved)
    groups = parameter_groups(trained, replace(cfg.train, transform_lr=None))
    assert len(groups) == 1 and "lr" not in groups[0]


@pytest.mark.parametrize(("architecture", "shape"), [("mlp", (2,)), ("cpu16", (1, 16, 16))])
def test_the_transform_network_can_be_narrower_than_the_predictor(architecture, shape):
    def widths(width: float) -> tuple[int, int]:
        cfg = ModelConfig(architecture=architecture, transform_width=width)
        model = build_model(cfg, shape)
        count = [
            sum(p.numel() for p in m.parameters())
            for m in (model.process.transform, model.predictor)
        ]
        return tuple(count)

    full, half, quarter = widths(1.0), widths(0.5), widths(0.25)
    assert full[0] == full[1] and half[1] == quarter[1] == full[1]
    assert quarter[0] < half[0] < full[0] / 2.5  # parameters scale about as the width squared
    with pytest.raises(ValueError, match="transform 'identity' has none"):
        ModelConfig(transform="identity", transform_width=0.5)
