import errno
import json
import math
import shutil

import numpy as np
import pytest
import torch

from ndm.cli import main
from ndm.runs.checkpoint import load_checkpoint, save_checkpoint

TINY = (
    "--steps 20 --hidden 32 --depth 1 --n-train 512 --n-test 256 --n-eval 64 --n-samples 256 "
    "--batch-size 64 --checkpoint-every 10 --log-every 5 --warmup-steps 5 --rtol 1e-3 "
    "--atol 1e-3 --nelbo-time-samples 4"
).split()
FAST_ODE = ["--rtol", "1e-3", "--atol", "1e-3"]
RUN_FILES = {"checkpoint.pt", "config.json", "metrics.jsonl", "metrics.json"}
FIGURES = {"samples.png", "transform.png", "trajectories.png"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "copy")


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line_error(capsys, *fragments):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    err = lines[0]
    assert err.startswith("ndm ")
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_train_writes_run_files_and_metrics(trained):
    written = {p.name for p in trained.iterdir() if not p.name.startswith("events.out.tfevents")}
    assert written == RUN_FILES | FIGURES
    assert all((trained / name).read_bytes().startswith(b"\x89PNG") for name in FIGURES)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n_eval"] == 64 and metrics["entropy"] == pytest.approx(math.log(32))
    assert metrics["entropy_bpd"] == pytest.approx(2.5)
    for key in ("nll", "nll_bpd", "nll_nfe", "nelbo", "nelbo_prior", "nelbo_diffusion"):
        assert math.isfinite(metrics[key])
    assert metrics["nelbo_bpd"] == pytest.approx(metrics["nelbo"] / (2 * math.log(2)))
    assert load_checkpoint(trained / "checkpoint.pt")["step"] == 20


def test_resume_continues_to_more_steps(run_copy, capsys):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert main(["train", "--run-dir", str(run_copy), "--resume", "--steps", "30"]) == 0
    grown = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert grown[: len(lines)] == lines and json.loads(grown[-1])["step"] == 30
    assert len(grown) == len(lines) + 2
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 30
    assert "trained 30 steps" in capsys.readouterr().out
    # a finished run cannot be resumed without more steps
    before = snapshot(run_copy)
    assert main(["train", "--run-dir", str(run_copy), "--resume"]) == 1
    one_line_error(capsys, "already reached step 30")
    assert snapshot(run_copy) == before


def test_resume_of_an_absent_run_fails(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "nowhere"), "--resume"]) == 1
    one_line_error(capsys, "nowhere", "does not exist")
    assert main(["train", "--resume"]) == 1
    one_line_error(capsys, "--run-dir")


def test_train_refuses_an_existing_run(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["train", "--run-dir", str(run_copy), *TINY]) == 1
    one_line_error(capsys, "already holds a checkpoint")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("sampler", ["ode", "sde", "ddpm", "ddim"])
def test_sample_with_each_sampler(trained, tmp_path, capsys, sampler):
    out = tmp_path / f"{sampler}.png"
    argv = ["sample", str(trained), "--sampler", sampler, "--steps", "8", "--n", "50"]
    assert main([*argv, "--out", str(out), "--eta", "0.5", *FAST_ODE]) == 0
    samples = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert samples.shape == (50, 2) and torch.isfinite(samples).all()
    assert out.read_bytes().startswith(b"\x89PNG")
    nfe = 8 if sampler != "ode" else None
    printed = capsys.readouterr().out
    assert "NFE" in printed and (nfe is None or f"NFE {nfe}" in printed)


def test_sample_default_output_goes_into_the_run(run_copy):
    assert main(["sample", str(run_copy), "--sampler", "ddim", "--steps", "4", "--n", "20"]) == 0
    assert (run_copy / "samples-ddim-4.png").exists()
    assert torch.load(run_copy / "samples-ddim-4.pt", weights_only=True).shape == (20, 2)


def test_sample_replaces_a_link_instead_of_writing_through_it(run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    (run_copy / "samples-ddim-4.png").symlink_to(victim)
    assert main(["sample", str(run_copy), "--sampler", "ddim", "--steps", "4", "--n", "20"]) == 0
    assert victim.read_text() == "the user's file"
    figure = run_copy / "samples-ddim-4.png"
    assert not figure.is_symlink() and figure.read_bytes().startswith(b"\x89PNG")


def test_train_refuses_a_folder_that_is_not_a_run_and_touches_nothing(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"experiment": "mine"}')
    (folder / "samples.png").write_bytes(b"my figure")
    (folder / ".report.tmp").write_text("my notes")
    before = snapshot(folder)
    assert main(["train", "--run-dir", str(folder), *TINY]) == 1
    one_line_error(capsys, "not an ndm run folder", "config.json", "samples.png")
    assert snapshot(folder) == before


def test_a_run_sweeps_its_own_temporaries_and_no_other(run_copy):
    (run_copy / ".report.tmp").write_text("the user's")
    (run_copy / ".checkpoint.pt.k3j2.ndm-tmp").write_bytes(b"cut short")
    argv = ["train", "--run-dir", str(run_copy), *TINY, "--steps", "21", "--eval", "none"]
    assert main([*argv, "--resume"]) == 0
    assert (run_copy / ".report.tmp").read_text() == "the user's"
    assert not (run_copy / ".checkpoint.pt.k3j2.ndm-tmp").exists()


def test_eval_and_sample_on_a_read_only_folder_fail_before_computing(run_copy, capsys, monkeypatch):
    import ndm.cli
    import ndm.data.atomic

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def computed(*args, **kwargs):
        raise AssertionError("computed before checking where its output goes")

    monkeypatch.setattr(ndm.data.atomic.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(ndm.cli, "run_metrics", computed)
    monkeypatch.setattr(ndm.cli, "draw_samples", computed)
    assert main(["eval", str(run_copy)]) == 1
    one_line_error(capsys, "cannot write the evaluation record", "Read-only", "nothing computed")
    assert main(["sample", str(run_copy), "--sampler", "ddim", "--steps", "4"]) == 1
    one_line_error(capsys, "cannot write the samples", "nothing computed")


def test_unknown_sampler_is_a_usage_error(trained, capsys):
    before = snapshot(trained)
    assert main(["sample", str(trained), "--sampler", "euler-ish"]) == 2
    one_line_error(capsys, "invalid choice: 'euler-ish'", "'ddim'", "'ddpm'", "'ode'", "'sde'")
    assert snapshot(trained) == before


def test_eval_adds_a_record_and_keeps_every_earlier_one(run_copy, capsys):
    before = snapshot(run_copy)
    for n_eval in (32, 16):
        assert main(["eval", str(run_copy), "--n-eval", str(n_eval)]) == 0
    printed = capsys.readouterr().out
    assert "NLL" in printed and "NELBO" in printed and "bits/dim" in printed
    assert "entropy 3.4657" in printed
    assert snapshot(run_copy) == before  # metrics.json and the rest kept
    records = [json.loads(p.read_text()) for p in sorted((run_copy / "evals").iterdir())]
    assert sorted(r["n_eval"] for r in records) == [16, 32]
    for record in records:
        assert record["step"] == 20 and record["eval_settings"]["n_eval"] == record["n_eval"]
        assert record["evaluated_at"] and "data_path" in record
    assert json.loads((run_copy / "metrics.json").read_text())["step"] == 20


def test_a_run_evaluates_and_samples_from_elsewhere_and_from_moved_data(tmp_path, monkeypatch,
                                                                         capsys):  # fmt: skip
    from ndm.data.points import save_points

    data = tmp_path / "data"
    data.mkdir()
    with (data / "pts.npz").open("wb") as file:
        save_points(file, torch.randn(300, 2), torch.randn(40, 2))
    monkeypatch.chdir(data)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--dataset", "points", "--path",
                 "pts.npz"]) == 0  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(run), "--n-eval", "8"]) == 0
    shutil.move(data, tmp_path / "moved")
    capsys.readouterr()
    assert main(["eval", str(run), "--n-eval", "8"]) == 1
    one_line_error(capsys, "pts.npz: points file not found", "give its new place with --data-path")
    moved = str(tmp_path / "moved" / "pts.npz")
    assert main(["eval", str(run), "--n-eval", "8", "--data-path", moved]) == 0
    args = ["sample", str(run), "--sampler", "ddim", "--steps", "2", "--n", "4"]
    assert main([*args, "--data-path", moved]) == 0
    other = tmp_path / "other.npz"
    with other.open("wb") as file:
        save_points(file, torch.randn(300, 3), torch.randn(40, 3))
    capsys.readouterr()
    assert main([*args, "--data-path", str(other)]) == 1
    one_line_error(capsys, "examples of shape [3]", "not its dataset")


def test_sample_on_nan_output_fails_and_writes_nothing(run_copy, capsys, monkeypatch):
    import ndm.models.ndm

    def nan_sample(self, shape, *args, **kwargs):
        from ndm.sampling.samplers import SampleResult

        return SampleResult(torch.full(shape, math.nan), 1)

    monkeypatch.setattr(ndm.models.ndm.NDM, "sample", nan_sample)
    before = snapshot(run_copy)
    assert main(["sample", str(run_copy), "--sampler", "ddim", "--steps", "2", "--n", "4"]) == 1
    one_line_error(capsys, "4 of 4 samples are not finite; nothing written")
    assert snapshot(run_copy) == before


def test_unusable_inputs_before_training_and_in_eval(run_copy, tmp_path, capsys):
    absent = str(tmp_path / "absent-weights.pt")
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--fid-weights", absent]) == 1
    one_line_error(capsys, "FID weights file", "absent-weights.pt not found")
    assert not run.exists()
    assert main(["train", "--run-dir", str(run), *TINY, "--device", "mps"]) == 1
    one_line_error(capsys, "device 'mps' is not usable here")
    assert not run.exists()
    before = snapshot(run_copy)
    assert main(["eval", str(run_copy), "--fid-weights", absent]) == 1
    one_line_error(capsys, "absent-weights.pt not found")
    assert snapshot(run_copy) == before


def test_resume_of_a_checkpoint_whose_weights_do_not_fit_its_config(run_copy, capsys):
    state = load_checkpoint(run_copy / "checkpoint.pt")
    state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
    save_checkpoint(run_copy / "checkpoint.pt", state)
    assert main(["train", "--run-dir", str(run_copy), "--resume", "--steps", "40"]) == 1
    one_line_error(capsys, "cannot resume", "its state does not fit its config")


def test_nan_weights_in_eval_and_sample_are_one_line(run_copy, capsys):
    state = load_checkpoint(run_copy / "checkpoint.pt")
    name = next(iter(state["ema"]))
    state["ema"][name] = state["ema"][name] * math.nan
    torch.save(state, run_copy / "checkpoint.pt")
    for command in ("eval", "sample"):
        assert main([command, str(run_copy)]) == 1
        one_line_error(capsys, "does not hold a usable ndm run", "non-finite weights")


def test_missing_run_and_missing_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "absent")]) == 1
    one_line_error(capsys, "absent", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["sample", str(empty)]) == 1
    one_line_error(capsys, "no checkpoint at", "checkpoint.pt")
    assert list(empty.iterdir()) == []


def test_corrupt_checkpoint(run_copy, capsys):
    (run_copy / "checkpoint.pt").write_bytes(b"\x80garbage" * 100)
    before = snapshot(run_copy)
    for command in (["sample"], ["eval"]):
        assert main([*command, str(run_copy)]) == 1
        error = one_line_error(capsys, "checkpoint.pt is corrupt or not an ndm checkpoint")
        assert "weights_only" not in error  # no advice to unpickle an unknown file
    assert main(["train", "--run-dir", str(run_copy), "--resume", "--steps", "40"]) == 1
    one_line_error(capsys, "corrupt or not an ndm checkpoint")
    assert snapshot(run_copy) == before


def test_unknown_config_key_in_checkpoint(run_copy, capsys):
    state = load_checkpoint(run_copy / "checkpoint.pt")
    state["config"]["model"]["colour"] = "red"
    save_checkpoint(run_copy / "checkpoint.pt", state)
    before = snapshot(run_copy)
    assert main(["eval", str(run_copy)]) == 1
    one_line_error(capsys, "unknown config keys ['colour']")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "batch_size must be positive and finite, got 0"),
        (["--lr", "1e400"], "lr must be positive and finite, got inf"),
        (
            ["--objective", "discrete", "--num-steps", "10", "--nelbo-terms", "5000"],
            "nelbo_terms 5000 must divide num_steps 10",
        ),
        (["--fid-samples", "1"], "fid_samples must be 0 (no FID) or at least 2"),
        (["--objective", "simple"], "objective 'simple' collapses a learned transform"),
        (["--lr", "fast"], "invalid float value: 'fast'"),
        (["--schedule", "bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_train_values_write_nothing(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *flags]) in (1, 2)
    one_line_error(capsys, message)
    assert not run.exists()


def test_sample_never_overwrites_the_checkpoint(run_copy, capsys):
    """``--out RUN/checkpoint.png`` would write its tensor to ``RUN/checkpoint.pt``."""
    before = snapshot(run_copy)
    args = ["sample", str(run_copy), "--sampler", "ddim", "--steps", "2", "--n", "4"]
    assert main([*args, "--out", str(run_copy / "checkpoint.png")]) == 1
    one_line_error(capsys, "would overwrite", "checkpoint.pt", "which the run needs")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("eta", ["5", "inf", "-0.1"])
def test_ddim_eta_out_of_range_is_refused(trained, capsys, eta):
    before = snapshot(trained)
    assert main(["sample", str(trained), "--sampler", "ddim", "--eta", eta]) == 2
    one_line_error(capsys, "must be in [0, 1]")
    assert snapshot(trained) == before


def test_sigterm_stops_train_with_a_checkpoint_and_the_conventional_exit_code(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    flags = [a if a != "20" else "100000" for a in TINY]  # --steps 100000
    proc = subprocess.Popen(
        [sys.executable, "-m", "ndm.cli", "train", "--run-dir", str(run), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    while not (run / "config.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    last = err.strip().splitlines()[-1]
    assert f"stopped by SIGTERM after step {step}; checkpoint written at step {step}" in last
    assert last.endswith("continue it with --resume")


def test_bare_ndm_prints_help_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert "{train,sample,eval,export}" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_config_file_reproduces_the_run_it_was_written_by(trained, tmp_path):
    """``RUN/config.json`` fed back with ``--config`` trains the same weights."""
    again = tmp_path / "again"
    assert main(["train", "--config", str(trained / "config.json"), "--run-dir", str(again),
                 "--eval", "none"]) == 0  # fmt: skip
    a, b = load_checkpoint(trained / "checkpoint.pt"), load_checkpoint(again / "checkpoint.pt")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert (again / "config.json").read_text() == (trained / "config.json").read_text()
    assert not (again / "metrics.json").exists()


def test_flags_beside_a_config_file_override_it(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": {"dataset": "moons"}, "train": {"steps": 99}}))
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--run-dir", str(run), *TINY, "--eval", "none"]
    assert main(args) == 0
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["data"]["dataset"] == "moons" and recorded["train"]["steps"] == 20
    config.write_text(json.dumps({"train": {"stepz": 3}}))
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "b")]) == 1
    one_line_error(capsys, "c.json", "unknown config keys ['stepz']")
    config.write_text("{oops")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "b")]) == 1
    one_line_error(capsys, "c.json is not JSON")
    assert not (tmp_path / "b").exists()


def test_a_yaml_config_file_is_read_like_json(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: moons\ntrain:\n  steps: 99\n  lr: 2.0e-3\n")
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--run-dir", str(run), *TINY, "--eval", "none"]
    assert main(args) == 0
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["data"]["dataset"] == "moons" and recorded["train"]["lr"] == 2e-3
    capsys.readouterr()
    config.write_text("data: [unclosed\n")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "b")]) == 1
    one_line_error(capsys, "c.yaml is not YAML")
    config.write_text("train:\n  lr: 2e-3\n")  # YAML 1.1 reads this as a string
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "b")]) == 1
    one_line_error(capsys, "c.yaml", "lr must be of type float")
    assert not (tmp_path / "b").exists()


def test_the_example_config_files_train(tmp_path):
    from pathlib import Path

    yaml = pytest.importorskip("yaml")

    folder = Path(__file__).resolve().parents[1] / "configs"
    configs = sorted([*folder.glob("*.json"), *folder.glob("*.yaml")])
    assert {config.suffix for config in configs} == {".json", ".yaml"}
    for config in configs:
        run = tmp_path / config.stem
        args = ["train", "--config", str(config), "--run-dir", str(run), "--steps", "2"]
        assert main([*args, "--eval", "none"]) == 0, config
        written = json.loads((run / "config.json").read_text())
        text = config.read_text()
        given = yaml.safe_load(text) if config.suffix == ".yaml" else json.loads(text)
        for section, fields in given.items():
            for name, value in fields.items():
                expected = 2 if (section, name) == ("train", "steps") else value
                assert written[section][name] == expected, (config, section, name)


def test_fast_evaluation_caps_the_configured_one():
    from ndm.evaluation.report import FAST_EVAL, evaluation_level
    from ndm.runs.config import EvalConfig, RunConfig

    cfg = RunConfig(eval=EvalConfig(n_eval=200, n_samples=500, rtol=1e-5, atol=1e-6,
                                    nelbo_time_samples=32, fid_samples=500))  # fmt: skip
    assert evaluation_level(cfg, "full") == cfg
    fast = evaluation_level(cfg, "fast").eval
    assert (fast.n_eval, fast.n_samples, fast.fid_samples) == (FAST_EVAL, FAST_EVAL, 0)
    assert (fast.rtol, fast.atol, fast.nelbo_time_samples) == (1e-3, 1e-3, 8)
    small = RunConfig(eval=EvalConfig(n_eval=8, n_samples=16, rtol=1e-2, atol=1e-2,
                                      nelbo_time_samples=4, fid_samples=0))  # fmt: skip
    assert evaluation_level(small, "fast") == small  # within the caps: as configured


def test_eval_takes_every_evaluation_setting_and_a_device(run_copy, capsys):
    args = ["eval", str(run_copy), "--device", "cpu", "--n-eval", "8", "--rtol", "1e-2",
            "--atol", "1e-2", "--nelbo-time-samples", "2", "--divergence", "hutchinson"]  # fmt: skip
    assert main(args) == 0
    (record,) = [json.loads(p.read_text()) for p in (run_copy / "evals").iterdir()]
    assert record["eval_settings"]["rtol"] == 1e-2 and record["nll_divergence"] == "hutchinson"
    capsys.readouterr()
    assert main(["eval", str(run_copy), "--probes", "0"]) == 1
    one_line_error(capsys, "probes must be positive")


def test_eval_of_a_run_without_test_points_is_one_line(tmp_path, capsys):
    from ndm.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from ndm.runs.training import train

    run = tmp_path / "run"
    cfg = RunConfig(DataConfig(), ModelConfig(hidden=8, depth=1),
                    TrainConfig(steps=2, batch_size=8, warmup_steps=1))  # fmt: skip
    train(cfg, run, train_data=torch.randn(64, 2))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    one_line_error(capsys, "the test split holds no examples")


def test_warmup_longer_than_the_run_is_warned_of(tmp_path):
    from ndm.runs.config import RunConfig, TrainConfig
    from ndm.runs.training import train

    cfg = RunConfig(train=TrainConfig(steps=2, batch_size=8, warmup_steps=8))
    with pytest.warns(UserWarning, match="warmup_steps 8 > steps 2: the run ends at 25.0%"):
        train(cfg, tmp_path / "run", train_data=torch.randn(64, 2))


def test_eval_with_a_step_limit_reports_the_nll_left_out(run_copy, capsys):
    assert main(["eval", str(run_copy), "--n-eval", "8", "--nll-max-steps", "1"]) == 0
    assert "test NLL   left out: not solved within 1 dopri5 steps" in capsys.readouterr().out


def test_messages_a_user_can_act_on(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a run")
    assert main(["eval", str(afile)]) == 1
    one_line_error(capsys, "afile is a file, not a run folder")

    run = tmp_path / "my runs" / "one"
    flags = "--steps 2 --hidden 16 --depth 1 --n-train 64 --batch-size 16 --eval none"
    assert main(["train", "--run-dir", str(run), *flags.split()]) == 0
    captured = capsys.readouterr()
    assert f"run: ndm eval '{run}'" in captured.out  # pastes into a shell as it is
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [
        "ndm: warning: warmup_steps 500 > steps 2: the run ends at 0.4% of the learning rate"
    ]

    assert main(["sample", "--help"]) == 0
    assert "(default: ode)" in capsys.readouterr().out


def _points_file(path, train, test=None):
    arrays = {"train": train.numpy()} | ({} if test is None else {"test": test.numpy()})
    np.savez(path, **arrays)
    return path


def test_runs_on_points_without_test_points_train_sample_and_resume(tmp_path, capsys):
    from ndm.runs.config import RunConfig, TrainConfig
    from ndm.runs.training import train

    points = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    cfg = RunConfig(train=TrainConfig(steps=2, batch_size=16, warmup_steps=1))
    given = tmp_path / "given"
    train(cfg, given, train_data=points)
    assert main(["sample", str(given), "--sampler", "ddim", "--steps", "2", "--n", "8"]) == 0
    more = RunConfig(train=TrainConfig(steps=3, batch_size=16, warmup_steps=1))
    train(more, given, resume=True, train_data=points)

    file = _points_file(tmp_path / "train-only.npz", points)
    flags = ["--dataset", "points", "--path", str(file), "--steps", "2", "--batch-size", "16"]
    capsys.readouterr()
    assert main(["train", "--run-dir", str(tmp_path / "full"), *flags]) == 1
    one_line_error(capsys, "holds no test points", "--eval none")
    assert not (tmp_path / "full").exists()
    assert main(["train", "--run-dir", str(tmp_path / "none"), *flags, "--eval", "none"]) == 0


def test_points_files_are_checked_whole_and_keyed_to_their_content(tmp_path, capsys):
    points = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    test = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    test[3, 1] = float("inf")
    file = _points_file(tmp_path / "pts.npz", points, test)
    flags = ["--dataset", "points", "--path", str(file), "--steps", "2", "--batch-size", "16",
             "--eval", "none"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *flags]) == 1
    one_line_error(capsys, "test data holds NaN or inf values in 1 of 16 rows")
    assert not run.exists()

    test[3, 1] = 0.0
    _points_file(file, points, test)
    assert main(["train", "--run-dir", str(run), *flags]) == 0
    _points_file(file, points + 1.0, test)  # same shape, other values
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run), *flags, "--steps", "3", "--resume"]) == 1
    one_line_error(capsys, "is not the data it was trained on")


def test_points_files_of_the_wrong_form_and_options_that_do_nothing_are_named(
    trained, tmp_path, capsys
):
    npy = tmp_path / "pts.npy"
    np.save(npy, np.zeros((10, 2), np.float32))
    one_d = _points_file(tmp_path / "flat.npz", torch.zeros(100))
    for path, message in ((npy, "a single array (.npy), not an .npz archive"),
                          (one_d, "'train' must be a 2-D array of points [N, D], got shape [100]")):  # fmt: skip
        argv = ["train", "--dataset", "points", "--path", str(path), "--eval", "none"]
        assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 1
        one_line_error(capsys, message)
    assert main(["eval", str(trained), "--n-samples", "5"]) == 2  # eval draws no figures
    assert "unrecognized arguments: --n-samples" in capsys.readouterr().err


def test_a_sample_count_the_host_cannot_hold_is_one_line(trained, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(trained), "--n", "4000000000", "--out", str(out)]) == 1
    one_line_error(capsys, "4000000000 samples needs", "GiB")
    assert not out.exists()


def test_a_data_path_to_another_dataset_of_the_same_shape_is_refused(tmp_path, capsys):
    from PIL import Image

    for name, seed in (("mine", 0), ("other", 1)):
        rng = np.random.default_rng(seed)
        for k in range(12):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / name / f"{k:02d}.png")
    run = tmp_path / "run"
    flags = ["--dataset", "folder", "--path", str(tmp_path / "mine"), "--resolution", "8",
             "--architecture", "cpu8", "--steps", "1", "--batch-size", "4", "--eval", "none"]  # fmt: skip
    assert main(["train", "--run-dir", str(run), *flags]) == 0
    args = ["sample", str(run), "--sampler", "ddim", "--steps", "2", "--n", "4"]
    assert main([*args, "--data-path", str(tmp_path / "mine")]) == 0
    capsys.readouterr()
    assert main([*args, "--data-path", str(tmp_path / "other")]) == 1
    one_line_error(capsys, "is not the data the run was trained on")
