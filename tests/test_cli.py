"""The console scripts as a user meets them: bad input gets one clear message and no traceback;
evaluation of a finished run; sweeps; the notebook API."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    r = cli("metalearn-train", "debug=smoke", "run_dir=run", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "run"


def assert_clean_error(r, *phrases: str) -> None:
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "Traceback" not in text, text
    for p in phrases:
        assert p in text, f"{p!r} not in:\n{text}"


@pytest.mark.parametrize("args,phrases", [
    (["method=mam"], ["method=mam is not a method", "protonet"]),
    (["ways=0"], ["ways must be a positive whole number"]),
    (["stepz=10"], ["stepz is not a key", "did you mean steps"]),
])
def test_bad_input_gets_a_clear_message(tmp_path, args, phrases):
    """A few cases of tests/test_bad_input.py's matrix as real processes: one line, exit 2, no traceback."""
    r = cli("metalearn-train", "debug=smoke", *args, cwd=tmp_path)
    assert_clean_error(r, *phrases)
    assert r.returncode == 2 and len([line for line in r.stderr.splitlines() if "error:" in line]) == 1


def test_test_episodes_zero_skips_the_test_and_eval_refuses_zero_episodes(tmp_path):
    r = cli("metalearn-train", "debug=smoke", "test.episodes=0", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and not summary.get("test")
    assert "test skipped (test.episodes=0)" in r.stderr + r.stdout
    assert_clean_error(cli("metalearn-eval", "run=run", "episodes=0", cwd=tmp_path), "episodes=0 is out of range")


def test_eval_scores_a_finished_run_on_fixed_episodes(trained):
    r = cli("metalearn-eval", f"run={trained}", "episodes=30", cwd=trained.parent)
    assert r.returncode == 0, r.stderr
    assert "protonet on synthetic test 5-way 1-shot" in r.stdout and "95% CI, 30 episodes" in r.stdout
    path = trained / "eval" / "test_5w1s_q15_e30_seed2_best.json"
    out = json.loads(path.read_text())
    assert len(out["per_episode"]) == 30
    first = path.read_bytes()
    again = cli("metalearn-eval", f"run={trained}", "episodes=30", cwd=trained.parent)
    assert again.stdout.split("->")[0] == r.stdout.split("->")[0]  # same episodes, same numbers
    assert path.read_bytes() == first  # the same protocol gives the identical file
    fewer = cli("metalearn-eval", f"run={trained}", "episodes=20", cwd=trained.parent)
    assert fewer.returncode == 0 and path.read_bytes() == first  # another protocol never replaces it
    assert len(json.loads((trained / "eval" / "test_5w1s_q15_e20_seed2_best.json").read_text())["per_episode"]) == 20
    r20 = cli("metalearn-eval", f"run={trained}", "ways=20", "episodes=10", "checkpoint=last", cwd=trained.parent)
    assert r20.returncode == 0 and "20-way 1-shot" in r20.stdout


def test_eval_scores_an_ensemble_of_runs_beside_each_member_on_the_same_episodes(trained):
    """ensemble=[...]: the members' own results equal their single evaluations; the ensemble's goes to the first
    run's eval/ with the members listed; a member listed twice, missing, or on other images is refused."""
    cwd = trained.parent
    assert cli("metalearn-train", "debug=smoke", "seed=1", "run_dir=seed1", cwd=cwd).returncode == 0
    r = cli("metalearn-eval", "run=run", "ensemble=[seed1]", "episodes=30", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "ensemble of 2 runs on synthetic test 5-way 1-shot" in r.stdout and "over its best member" in r.stdout
    [path] = (trained / "eval").glob("test_5w1s_q15_e30_seed2_best_ensemble-2-*.json")
    out = json.loads(path.read_text())
    assert [m["run"] for m in out["ensemble"]] == ["run", "seed1"]
    for member in out["ensemble"]:
        assert cli("metalearn-eval", f"run={member['run']}", "episodes=30", cwd=cwd).returncode == 0
        alone = json.loads((cwd / member["run"] / "eval" / "test_5w1s_q15_e30_seed2_best.json").read_text())
        assert member["per_episode"] == alone["per_episode"] and member["accuracy"] == alone["accuracy"]
        assert alone["episodes_digest"] == out["episodes_digest"]
    assert out["per_episode"] != out["ensemble"][0]["per_episode"]
    assert_clean_error(cli("metalearn-eval", "run=run", "ensemble=[./run]", cwd=cwd),
                       f"the run folder {trained.resolve()} is given twice")
    assert_clean_error(cli("metalearn-eval", "run=run", "ensemble=[nowhere]", cwd=cwd),
                       "ensemble=nowhere: run folder nowhere does not exist")
    other = cli("metalearn-train", "debug=smoke", "dataset.generator_seed=1", "run_dir=other", cwd=cwd)
    assert other.returncode == 0, other.stderr
    assert_clean_error(cli("metalearn-eval", "run=run", "ensemble=[other]", cwd=cwd),
                       "ensemble member other reads other images than run=run")


def test_eval_bad_input(tmp_path):
    assert_clean_error(cli("metalearn-eval", cwd=tmp_path), "needs run=PATH")
    assert_clean_error(cli("metalearn-eval", "run=nowhere", cwd=tmp_path), "nowhere does not exist")


def test_sweep_gives_one_folder_per_job_and_a_summary_csv(tmp_path):
    r = cli("metalearn-train", "-m", "debug=smoke", "steps=6", "val.every=3", "test.episodes=5", "shots=1,2",
            "seed=0,1", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1
    jobs = [p for p in sweeps[0].iterdir() if p.is_dir()]
    assert len(jobs) == 4 and all((j / "summary.json").is_file() for j in jobs)
    with open(sweeps[0] / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {r["overrides"] for r in rows} >= {"debug=smoke steps=6 val.every=3 test.episodes=5 shots=1 seed=0"}
    assert all(float(r.get("test_5w1s") or r.get("test_5w2s")) > 0 for r in rows)


def test_python_api_classifies_pil_images(trained):
    from PIL import Image

    import metalearn
    from metalearn.config import SyntheticConfig
    from metalearn.data.synthetic import build_synthetic
    from metalearn.tasks.episodes import EpisodeSampler, TaskSpec

    learner = metalearn.load_run(trained)
    store = build_synthetic(SyntheticConfig())
    plans = EpisodeSampler(store, "test", TaskSpec(5, 1, 4), seed=0).plans(0, 1)
    # PIL images at another size, as a user would have them: resized by the run's own preprocessing
    to_pil = lambda i: Image.fromarray(store.images[int(i), 0].numpy()).resize((56, 56))  # noqa: E731
    support = [to_pil(i) for i in plans.support[0].ravel()]
    query = [to_pil(i) for i in plans.query[0].ravel()]
    logits = learner.predict(learner.preprocess(support), list(range(5)), learner.preprocess(query))
    assert logits.shape == (20, 5)
    truth = [j for j in range(5) for _ in range(4)]
    assert (logits.argmax(-1).numpy() == truth).mean() >= 0.6
    # uint8 tensors at the native size go through exactly the normalisation training used
    import torch

    raw = store.images[torch.from_numpy(plans.support[0].ravel())]
    assert torch.allclose(learner.preprocess(raw), store.normalize(raw), atol=1e-6)


def test_a_run_written_before_an_option_existed_still_evaluates(trained, tmp_path, caplog):
    """Checkpoints keep the config they were trained with; options added to metalearn later are filled in with
    their defaults (and named in a warning) instead of failing deep inside the method's constructor."""
    import shutil

    import metalearn
    from metalearn.engine.checkpoint import load_checkpoint, save_checkpoint

    old = tmp_path / "old_run"
    shutil.copytree(trained, old)
    for path in (old / "checkpoints").glob("*.pt"):
        ckpt = load_checkpoint(path)
        del ckpt["config"]["method"]["distance"], ckpt["config"]["test"]["batch"]
        save_checkpoint(path, ckpt)
    with caplog.at_level("WARNING", logger="metalearn"):
        learner = metalearn.load_run(old)
    assert learner.method.distance == "sqeuclidean"
    assert "method.distance" in caplog.text and "test.batch" in caplog.text
    r = cli("metalearn-eval", f"run={old}", "episodes=10", cwd=tmp_path)
    assert r.returncode == 0 and "protonet on synthetic test 5-way 1-shot" in r.stdout, r.stderr


def test_help_lists_config_groups(tmp_path):
    r = cli("metalearn-train", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for group in ("dataset:", "method:", "sampler:", "hardware:", "experiment:", "debug:", "launcher:"):
        assert group in r.stdout
    assert "maml, mamlpp" in r.stdout and "  method.name=protonet  " in r.stdout  # options, and the composed keys
    assert "cards:" not in r.stdout  # configs/cards holds reproduction cards, not a config group
    assert not (tmp_path / "outputs").exists()  # help starts no run


def test_help_shows_the_config_the_overrides_compose(tmp_path):
    r = cli("metalearn-train", "method=maml", "shots=5", "-h", cwd=tmp_path)
    assert r.returncode == 0 and "  method.name=maml  " in r.stdout and "  shots=5  " in r.stdout
    assert "  method.inner_lr=0.4  [>= 0]  the inner-loop learning rate" in r.stdout
    r = cli("metalearn-train", "method=nope", "--help", cwd=tmp_path)
    assert r.returncode == 2 and "method/nope" in r.stderr and "Traceback" not in r.stderr
    r = cli("metalearn-eval", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "metalearn-eval run=PATH" in r.stdout and "  checkpoint=best" in r.stdout


def test_results_rows_script_copies_numbers_from_a_run(trained):
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, str(REPO / "scripts" / "results_rows.py"), str(trained)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    import yaml

    s = json.loads((trained / "summary.json").read_text())
    t = s["test"]["5w1s"]
    (row,) = yaml.safe_load(r.stdout)
    assert row["what"] == "protonet" and row["command"] == "`metalearn-train debug=smoke`"
    assert row["scores"]["5w1s"] == {"acc": round(100 * t["accuracy"], 2), "ci95": round(100 * t["ci95"], 2)}
    assert row["date"] == s["started"][:10]


def test_joblib_launcher_runs_the_jobs_of_a_sweep_in_parallel_processes(tmp_path):
    r = cli("metalearn-train", "-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke", "test.episodes=10",
            "hardware.threads=1", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    shown = cli("metalearn-train", "launcher=joblib", "--cfg", "hydra", cwd=tmp_path)
    assert "JoblibLauncher" in shown.stdout  # the sweep above ran through joblib's worker processes
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2 and all((j / "summary.json").is_file() for j in jobs)
    rows = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all("completed" in row for row in rows[1:])


def test_optuna_search_maximises_validation_accuracy_and_survives_a_failed_trial(tmp_path):
    """search=metric: Optuna's TPE proposes optimizer settings; each trial is a run reporting its best
    validation accuracy. queries=500 cannot be sampled (20 images a class), so those trials fail: the
    sweeper records them as failed trials (no made-up score), and the search goes on to name the best
    completed trial."""
    from omegaconf import OmegaConf

    r = cli("metalearn-train", "-m", "search=metric", "debug=smoke", "test.episodes=10", "hydra.sweeper.n_trials=4",
            "queries=choice(3,500)", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "sweep" / "summary.csv").read_text().splitlines()))
    assert len(rows) == 4
    done = [row for row in rows if row["status"] == "completed"]
    failed = [row for row in rows if row["status"] == "failed"]
    assert done and failed and all("queries=500" in row["job"] for row in failed)
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    top = max(done, key=lambda row: float(row["best_val"]))
    assert best.best_value == pytest.approx(float(top["best_val"]))
    assert f"optimizer.lr={best.best_params['optimizer.lr']}" in top["job"]
    # the table shows what the search maximised and the parameters; test accuracy for the chosen trial alone
    out = " ".join(r.stdout.split())
    assert "trials by validation accuracy (the objective)" in out and "optimizer.lr=" in out
    assert "test accuracy of the chosen trial only" in out and out.count("test accuracy") == 1


def test_a_search_in_a_database_persists_and_two_processes_share_it(tmp_path):
    """hydra.sweeper.storage=sqlite:///...: a study survives its process (2 trials, then 2 more with the same
    storage and study name: 4 in the study), and two processes at once add their trials to the same study."""
    import subprocess

    import optuna

    db = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["-m", "search=metric", "debug=smoke", "steps=4", "val.every=2", "val.episodes=5", "test.episodes=5",
            "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=shared"]
    for sweep in ("first", "second"):
        r = cli("metalearn-train", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    assert len(optuna.load_study(study_name="shared", storage=db).trials) == 4
    exe = shutil.which("metalearn-train") or "metalearn-train"
    both = [subprocess.Popen([exe, *args, f"hydra.sweep.dir=p{i}", "hardware.threads=1"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in both:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=db)
    assert len(study.trials) == 8 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_a_search_in_optunas_journal_file_resumes_by_name(tmp_path):
    """hydra.sweeper.storage=journal:///path: Optuna's journal file (no database server: what a shared cluster
    filesystem allows); a second search with the same study name adds its trials to the first's."""
    import optuna

    journal = tmp_path / "studies" / "search.log"
    args = ["-m", "search=metric", "debug=smoke", "steps=4", "val.every=2", "val.episodes=5", "test.episodes=5",
            "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=journal://{journal}", "hydra.sweeper.study_name=j"]
    for sweep in ("first", "second"):
        r = cli("metalearn-train", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="j", storage=storage)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_a_pruned_search_stops_trials_below_the_median_at_a_validation_step(tmp_path):
    """hydra.sweeper.pruner.name=median: each trial reports its validation accuracy at every validation; one below
    the earlier trials' median at that step stops there (status pruned, checkpointed, not tested) and the study
    records it PRUNED, across processes through the storage."""
    import optuna

    db = f"sqlite:///{tmp_path / 'study.db'}"
    r = cli("metalearn-train", "-m", "search=metric", "debug=smoke", "steps=60", "val.every=10", "val.episodes=20",
            "test.episodes=5", "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner.name=median",
            "hydra.sweeper.pruner.n_startup_trials=2", f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=p",
            "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="p", storage=db)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "PRUNED" in states and states[:2] == ["COMPLETE", "COMPLETE"], states
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    pruned = [s for s in summaries if s["status"] == "pruned"]
    assert len(pruned) == states.count("PRUNED") and all(s["steps_done"] < 60 and not s.get("test") for s in pruned)
    assert all(s["steps_done"] == 60 for s in summaries if s["status"] == "completed")


def test_a_search_needs_validation_accuracy(tmp_path):
    r = cli("metalearn-train", "-m", "search=metric", "debug=smoke", "val.every=0", "hydra.sweeper.n_trials=2",
            cwd=tmp_path)
    assert r.returncode == 2 and "has no validation split or val.every=0" in r.stderr


def test_a_run_can_start_from_another_runs_weights(trained, tmp_path):
    """Meta-Baseline style: matching meta-trained from the protonet run's backbone; init is recorded."""
    r = cli("metalearn-train", "debug=smoke", "method=matching", f"init.run={trained}", "run_dir=m", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert s["status"] == "completed" and s["init"]["from"] == str(trained / "checkpoints" / "best.pt")
    assert s["init"]["tensors"] == 28 and s["init"]["fresh"] == [] == s["init"]["unused"]
    bad = cli("metalearn-train", "debug=smoke", "method=matching", "method.backbone.width=8", f"init.run={trained}",
              cwd=tmp_path)
    assert_clean_error(bad, "differ in shape", "(16, 1, 3, 3) vs (8, 1, 3, 3)")


def test_cpu_bf16_profile_trains_maml_under_autocast(tmp_path):
    """hardware=cpu_bf16: MAML's second-order step runs under CPU bf16 autocast, losses stay finite
    and the run records the profile it ran with."""
    r = cli("metalearn-train", "method=maml", "debug=smoke", "hardware=cpu_bf16", "run_dir=run", "test.episodes=10",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "amp: bf16" in (tmp_path / "run" / "config.yaml").read_text()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if x["kind"] == "train"]
    assert losses and all(0 < v < 10 for v in losses)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_every_file_of_a_run_folder_has_one_mode(trained):
    import stat

    from metalearn.files import _umask

    want = 0o666 & ~_umask()
    modes = {p.relative_to(trained).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in trained.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert "summary.json" in modes and "config.yaml" in modes and "metrics.jsonl" in modes
    assert {name: m for name, m in modes.items() if m != want} == {}


def test_debug_smoke_overridden_by_an_explicit_steps_says_so(tmp_path):
    """Trap (issue 60): `debug=smoke steps=5000` silently ran a 10-minute "smoke" run."""
    r = cli("metalearn-train", "debug=smoke", "steps=21", "test.episodes=5", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "debug=smoke sets steps=20, but steps=21 on the command line wins: this run is not smoke-sized" in r.stderr
    r = cli("metalearn-train", "debug=smoke", "test.episodes=5", "run_dir=run2", cwd=tmp_path)
    assert r.returncode == 0 and "not smoke-sized" not in r.stderr


def test_eval_with_a_missing_dataset_root_names_the_runs_archives_and_evals_key(tmp_path, omniglot):
    """Trap (issue 60): the message named the full archives and dataset.download=true, not the small ones the
    run used, nor metalearn-eval's own key."""
    r = cli("metalearn-train", "debug=smoke", "dataset=omniglot_small", f"dataset.root={omniglot}", "steps=2",
            "val.every=0", "test.episodes=2", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("metalearn-eval", "run=run", "dataset_root=/nonexistent", "episodes=2", cwd=tmp_path)
    assert_clean_error(r, "images_background_small1.zip, images_background_small2.zip", "dataset_root=",
                       f"by default where it was trained: {omniglot}")
    assert "images_evaluation" not in r.stderr and "download" not in r.stderr and "dataset.root" not in r.stderr


def test_the_multirun_flag_may_follow_the_overrides(tmp_path):
    """Hydra's parser refused `metalearn-train debug=smoke -m seed=0,1` ("unrecognized arguments")."""
    r = cli("metalearn-train", "debug=smoke", "test.episodes=5", "-m", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 2
