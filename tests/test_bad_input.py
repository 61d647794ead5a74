"""The bad-input matrix: every key at 0, negative, huge and of the wrong type, every path as missing, a file,
a folder of other things, a checkpoint that would run code, every console script. Each case must give one
`error:` line naming the problem and the fix, exit status 2, no traceback, and lose nothing: a run folder it
made says `failed` with the reason, a folder it did not make is left byte for byte as it was.

The console scripts run in this process (their real `main()`, argv and all), so 80 cases cost seconds, not
the minutes 80 interpreter start-ups would; test_cli.py runs a few of them as real subprocesses too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_main

HERE = Path(__file__).parent


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


class Evil:
    """A pickle that runs a command when loaded: what a malicious shared checkpoint would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Paths the cases point at: a finished run, a file, a user's folder, bad datasets, booby-trapped runs."""
    from conftest import cli

    root = tmp_path_factory.mktemp("world")
    r = cli("metalearn-train", "debug=smoke", "run_dir=run", "test.episodes=5", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "user").mkdir()
    (root / "user" / "train.log").write_text("my own notes\n")
    (root / "empty").mkdir()
    from PIL import Image

    def image_folder(name: str, classes: int, per_class: int) -> Path:
        for c in range(classes):
            d = root / name / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("L", (20, 20), color=(c * 37 + i * 11) % 255).save(d / f"{i}.png")
        return root / name

    image_folder("one_class", 1, 5)
    image_folder("thin", 12, 1)
    image_folder("few", 4, 6)
    for name, file in (("evil_run", "last.pt"), ("evil_best", "best.pt")):
        import shutil

        shutil.copytree(root / "run", root / name)
        ckpt = torch.load(root / name / "checkpoints" / file, weights_only=True)
        ckpt["state"]["payload"] = Evil(root / "PWNED")
        torch.save(ckpt, root / name / "checkpoints" / file)
    return {"root": root}


def _f(world, text: str) -> str:
    return text.replace("{root}", str(world["root"]))


# (tool, args, phrases the one error line must contain)
TRAIN = "metalearn-train"
CASES: list[tuple[str, list[str], list[str]]] = [
    # the task
    (TRAIN, ["ways=0"], ["ways must be a positive whole number"]),
    (TRAIN, ["ways=1"], ["ways must be at least 2"]),
    (TRAIN, ["shots=-2"], ["shots must be a positive whole number"]),
    (TRAIN, ["queries=0"], ["queries must be a positive whole number"]),
    (TRAIN, ["ways=500"], ["ways=500 but the val split of synthetic has only 120 classes", "use ways<=120"]),
    (TRAIN, ["shots=15", "queries=15"], ["shots+queries=15+15=30", "only 20 images"]),
    (TRAIN, ["shots=one"], ["shots=one", "could not be converted to Integer"]),
    (TRAIN, ["shots=2.5"], ["shots=2.5", "Integer"]),
    (TRAIN, ["ways=[1,2]"], ["ways=[1,2]", "Integer"]),
    (TRAIN, ["sampler.train_ways=1"], ["ways must be at least 2"]),
    (TRAIN, ["sampler.train_shots=0"], ["shots must be a positive whole number"]),
    (TRAIN, ["sampler.meta_batch=0"], ["sampler.meta_batch=0 is out of range", "between 1 and 100000"]),
    (TRAIN, ["sampler.meta_batch=100000000"], ["sampler.meta_batch=100000000 is out of range"]),
    # the schedule of the run
    (TRAIN, ["steps=0"], ["steps=0 is out of range", ">= 1"]),
    (TRAIN, ["steps=-5"], ["steps=-5 is out of range"]),
    (TRAIN, ["steps=1e3"], ["steps=1e3", "Integer"]),
    (TRAIN, ["log_every=0"], ["log_every=0 is out of range", ">= 1"]),
    (TRAIN, ["checkpoint_every=0"], ["checkpoint_every=0 is out of range", ">= 1"]),
    (TRAIN, ["checkpoint_every=-3"], ["checkpoint_every=-3 is out of range"]),
    (TRAIN, ["seed=-1"], ["seed=-1 is out of range", ">= 0"]),
    (TRAIN, ["max_minutes=-1"], ["max_minutes=-1.0 is out of range"]),
    (TRAIN, ["max_minutes=soon"], ["max_minutes=soon", "Float"]),
    # optimisation
    (TRAIN, ["optimizer.lr=0"], ["optimizer.lr=0.0 is out of range"]),
    (TRAIN, ["optimizer.lr=-1"], ["optimizer.lr=-1.0 is out of range"]),
    (TRAIN, ["optimizer.weight_decay=-0.1"], ["optimizer.weight_decay=-0.1 is out of range"]),
    (TRAIN, ["optimizer.momentum=2"], ["optimizer.momentum=2.0 is out of range", "between 0 and 1"]),
    (TRAIN, ["optimizer.name=rmsprop"], ["optimizer.name='rmsprop' is not one of: adam, adamw, sgd"]),
    (TRAIN, ["schedule.name=exp"], ["schedule.name='exp' is not one of"]),
    (TRAIN, ["schedule.step_size=0"], ["schedule.step_size=0 is out of range"]),
    (TRAIN, ["schedule.gamma=0"], ["schedule.gamma=0.0 is out of range"]),
    (TRAIN, ["augment.rotate=-5"], ["augment.rotate=-5.0 is out of range"]),
    (TRAIN, ["augment.scale=1.5"], ["augment.scale=1.5 is out of range"]),
    (TRAIN, ["augment.shift=nan"], ["augment.shift=nan is out of range"]),
    (TRAIN, ["augment.elastic_alpha=-1"], ["augment.elastic_alpha=-1.0 is out of range"]),
    (TRAIN, ["augment.elastic_sigma=0"], ["augment.elastic_sigma=0.0 is out of range"]),
    (TRAIN, ["method=metaoptnet", "method.scale=0"], ["method.scale=0.0 is out of range", "MetaOptNet's start"]),
    (TRAIN, ["method=meta_baseline", "method.temperature_lr_multiplier=-1"],
     ["method.temperature_lr_multiplier=-1.0 is out of range", "temperature learning-rate multiplier", ">= 0"]),
    (TRAIN, ["method=metaoptnet", "method.scale_lr_multiplier=-1"],
     ["method.scale_lr_multiplier=-1.0 is out of range", "logit-scale learning-rate multiplier", ">= 0"]),
    # validation and test
    (TRAIN, ["val.every=-1"], ["val.every=-1 is out of range", ">= 0"]),
    (TRAIN, ["val.episodes=0"], ["val.episodes=0 is out of range"]),
    (TRAIN, ["val.episodes=1000000000"], ["val.episodes=1000000000 is out of range"]),
    (TRAIN, ["test.episodes=1000000000"], ["test.episodes=1000000000 is out of range"]),
    (TRAIN, ["val.seed=-4"], ["val.seed=-4 is out of range"]),
    (TRAIN, ["test.episodes=-1"], ["test.episodes=-1 is out of range", "metalearn-eval"]),
    (TRAIN, ["test.batch=0"], ["test.batch=0 is out of range"]),
    (TRAIN, ["test.ways=[1]"], ["test.ways=[1] is out of range"]),
    (TRAIN, ["test.shots=[0]"], ["test.shots=[0] is out of range"]),
    (TRAIN, ["test.seed=-2"], ["test.seed=-2 is out of range"]),
    # the dataset
    (TRAIN, ["dataset.image_size=0"], ["dataset.image_size=0 is out of range", "between 16 and 1024"]),
    (TRAIN, ["dataset.image_size=8"], ["dataset.image_size=8 is out of range"]),
    (TRAIN, ["dataset.image_size=100000"], ["dataset.image_size=100000 is out of range"]),
    (TRAIN, ["dataset.num_classes=2"], ["dataset.num_classes=2 is out of range", ">= 3"]),
    (TRAIN, ["dataset.images_per_class=1"], ["dataset.images_per_class=1 is out of range"]),
    (TRAIN, ["dataset.split_fractions=[-1,1,1]"], ["dataset.split_fractions=[-1.0, 1.0, 1.0] is out of range"]),
    (TRAIN, ["dataset.split_fractions=[1,0,0]"], ["the test split of synthetic has only 0 classes",
                                                  "skip the test with test.episodes=0"]),
    (TRAIN, ["dataset.num_clases=3"], ["dataset.num_clases is not a key of dataset", "did you mean dataset.num_classes"]),
    (TRAIN, ["dataset=imagenet9"], ["dataset=imagenet9 is not a dataset", "synthetic", "omniglot"]),
    (TRAIN, ["dataset=omniglot"], ["metalearn-data get omniglot", "images_background.zip", "dataset.root"]),
    (TRAIN, ["dataset=omniglot", "dataset.root=/nonexistent"], ["not found in /nonexistent", "brendenlake/omniglot"]),
    (TRAIN, ["dataset=omniglot", "dataset.root={root}/a_file.txt"], ["is a file, not a folder"]),
    (TRAIN, ["dataset=image_folder"], ["needs dataset.root=PATH"]),
    (TRAIN, ["dataset=image_folder", "dataset.root={root}/a_file.txt"], ["is a file, not a folder"]),
    (TRAIN, ["dataset=image_folder", "dataset.root={root}/nowhere"], ["does not exist"]),
    (TRAIN, ["dataset=image_folder", "dataset.root={root}/one_class"], ["has 1 class folders", "at least two"]),
    (TRAIN, ["dataset=image_folder", "dataset.root={root}/thin", "dataset.image_size=20", "ways=2", "val.every=0"],
     ["only 1 image", "class", "add images to"]),
    (TRAIN, ["dataset=image_folder", "dataset.root={root}/few", "dataset.image_size=20", "ways=2"],
     ["split of image_folder has only", "give the", "more classes", "split_fractions"]),
    (TRAIN, ["dataset=image_folder", "dataset.root={root}/few", "dataset.channels=2"], ["dataset.channels must be 1"]),
    (TRAIN, ["dataset=cifar_fs", "dataset.root=/nonexistent"], ["CIFAR-100 not found in /nonexistent"]),
    # the method
    (TRAIN, ["method=mam"], ["method=mam is not a method", "did you mean maml", "protonet"]),
    (TRAIN, ["method=protonet_schema"], ["method=protonet_schema is not a method", "did you mean protonet"]),
    (TRAIN, ["method.inner_lr=3"], ["method.inner_lr is not a key of method", "distance"]),
    (TRAIN, ["method.backbone.width=0"], ["method.backbone.width=0 is out of range"]),
    (TRAIN, ["method.backbone.pool=avg"], ["method.backbone.pool='avg' is not one of: max, stride"]),
    (TRAIN, ["method.distance=manhattan"], ["method.distance='manhattan' is not one of"]),
    (TRAIN, ["method=maml", "method.inner_steps=0"], ["inner_steps", ">= 1"]),
    (TRAIN, ["method=maml", "method.inner_lr=-1"], ["method.inner_lr=-1.0 is out of range"]),
    (TRAIN, ["method=maml", "method.task_batching=magic"], ["method.task_batching='magic' is not one of"]),
    (TRAIN, ["method=maml", "method.task_chunk=0"], ["method.task_chunk=0 is out of range", ">= 1"]),
    (TRAIN, ["method=matching", "method.fce_steps=0"], ["method.fce_steps=0 is out of range"]),
    (TRAIN, ["method=relation", "method.hidden=1000000000"], ["out of memory", "lower the sizes"]),
    (TRAIN, ["method=siamese", "method.pairs=3"], ["method.pairs must be an even number"]),
    (TRAIN, ["method=baseline", "method.batch_size=0"], ["method.batch_size=0 is out of range"]),
    (TRAIN, ["method=mann", "method.slots=0"], ["method.slots=0 is out of range"]),
    (TRAIN, ["method=reptile", "method.inner_batch=0"], ["method.inner_batch=0 is out of range"]),
    # unknown keys and groups
    (TRAIN, ["stepz=10"], ["stepz is not a key", "did you mean steps"]),
    (TRAIN, ["+stepz=10"], ["+stepz: no such key", "did you mean steps"]),
    (TRAIN, ["+logger=tensorboard"], ["logger is already a config group", "without the plus: logger=tensorboard"]),
    (TRAIN, ["+logger=neptune"], ["logger is already a config group"]),
    (TRAIN, ["logger=neptune"], ["logger=neptune is not a logger; choose one of: csv, many, mlflow, tensorboard, wandb"]),
    (TRAIN, ["hardware=gpu9"], ["hardware=gpu9 is not a hardware", "cpu"]),
    (TRAIN, ["experiment=nope"], ["experiment=nope is not a experiment"]),
    # hardware
    (TRAIN, ["hardware=cuda"], ["no CUDA device", "hardware=cpu"]),
    (TRAIN, ["hardware.cuda_graph=true"], ["hardware.cuda_graph=true needs a CUDA device"]),
    (TRAIN, ["hardware.threads=0"], ["hardware.threads=0 is out of range"]),
    (TRAIN, ["hardware.amp=fp8"], ["hardware.amp='fp8' is not one of: none, bf16"]),
    # paths: run folders and checkpoints
    (TRAIN, ["run_dir={root}/a_file.txt"], ["is a file, not a folder"]),
    (TRAIN, ["run_dir={root}/a_file.txt/sub"], ["is a file, so no folder can be made under it"]),
    (TRAIN, ["run_dir={root}/user"], ["already holds files that no metalearn run wrote (train.log)"]),
    (TRAIN, ["run_dir={root}/run"], ["already holds a completed run", "resume=true"]),
    (TRAIN, ["run_dir={root}/evil_run"], ["already holds a completed run", "resume=true"]),
    (TRAIN, ["resume=true", "run_dir={root}/user"], ["no checkpoint to resume"]),
    (TRAIN, ["resume=true", "run_dir={root}/empty"], ["no checkpoint to resume"]),
    (TRAIN, ["resume=true", "run_dir={root}/run", "shots=5"], ["shots=5 would not apply"]),
    (TRAIN, ["resume=true", "run_dir={root}/evil_run"], ["could run code, so it is refused", "posix.system"]),
    (TRAIN, ["init.run={root}/nowhere"], ["does not exist"]),
    (TRAIN, ["init.run={root}/evil_run", "init.checkpoint=last"], ["could run code, so it is refused"]),
    (TRAIN, ["init.run={root}/run", "init.checkpoint=middle"], ["init.checkpoint"]),
    # metalearn-eval
    ("metalearn-eval", [], ["needs run=PATH"]),
    ("metalearn-eval", ["run={root}/nowhere"], ["does not exist"]),
    ("metalearn-eval", ["run={root}/a_file.txt"], ["is a file, not a run folder"]),
    ("metalearn-eval", ["run={root}/user"], ["is not a metalearn run folder"]),
    ("metalearn-eval", ["run={root}/run", "ways=0"], ["ways=0 is out of range", ">= 1"]),
    ("metalearn-eval", ["run={root}/run", "shots=-1"], ["shots=-1 is out of range"]),
    ("metalearn-eval", ["run={root}/run", "queries=0"], ["queries=0"]),
    ("metalearn-eval", ["run={root}/run", "episodes=0"], ["episodes=0"]),
    ("metalearn-eval", ["run={root}/run", "batch=0"], ["batch=0"]),
    ("metalearn-eval", ["run={root}/run", "batch=-1", "episodes=20"], ["batch=-1"]),
    ("metalearn-eval", ["run={root}/run", "seed=-1"], ["seed=-1"]),
    ("metalearn-eval", ["run={root}/run", "ways=500"], ["ways=500 but the test split"]),
    ("metalearn-eval", ["run={root}/run", "checkpoint=middle"], ["checkpoint='middle' is not one of: best, last"]),
    ("metalearn-eval", ["run={root}/run", "split=train2"], ["split 'train2' does not exist"]),
    ("metalearn-eval", ["run={root}/run", "test_batch_norm=foo"], ["test_batch_norm='foo' is not one of"]),
    ("metalearn-eval", ["run={root}/run", "inner_steps=5"], ["does not adapt by inner steps"]),
    ("metalearn-eval", ["run={root}/run", "tta.copies=0"], ["tta.copies=0 is out of range", "the copies of each image"]),
    ("metalearn-eval", ["run={root}/run", "tta.copies=4", "tta.elastic_alpha=-1"],
     ["tta.elastic_alpha=-1.0 is out of range", "the copies' elastic distortion"]),
    ("metalearn-eval", ["run={root}/run", "tta.copies=4", "tta.shear=2"],
     ["tta.shear=2.0 is out of range", "the copies' largest slant (x += shear * y)", "between 0 and 1"]),
    ("metalearn-eval", ["run={root}/run", "tta.copies=4", "readout=max"], ["readout='max' is not a known readout; "
                                                                           "choose one of: chamfer"]),
    ("metalearn-eval", ["run={root}/run", "readout=chamfer"], ["readout=chamfer matches each image's test-time "
                                                               "copies, and tta.copies=1 makes none"]),
    ("metalearn-eval", ["run={root}/run", "head=tim"], ["head is not a key since 2026-12-04: it is now readout"]),
    ("metalearn-eval", ["run={root}/run", "tta.match=chamfer"], ["tta.match is not a key", "readout=chamfer"]),
    ("metalearn-eval", ["run={root}/run", "episds=3"], ["episds is not a key", "did you mean episodes"]),
    ("metalearn-eval", ["run={root}/evil_best"], ["could run code, so it is refused"]),
    # metalearn-report
    ("metalearn-report", ["{root}/no/such/path"], ["no such path"]),
    ("metalearn-report", ["{root}/empty"], ["no run folders"]),
]


def test_the_matrix_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("tool,args,phrases", CASES, ids=[" ".join([t.split("-")[1], *a]) for t, a, _ in CASES])
def test_bad_input(world, tmp_path, tool, args, phrases):
    if args == ["hardware=cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    args = [_f(world, a) for a in args]
    root = world["root"]
    before = {name: snapshot(root / name) for name in ("run", "user", "empty", "evil_run", "evil_best")}
    extra = ["debug=smoke"] if tool == TRAIN and not any(a.startswith("resume=") for a in args) else []
    code, text = run_main(tool, *extra, *args, cwd=tmp_path)
    errors = [line for line in text.splitlines() if "error:" in line]
    assert code == 2, text
    assert "Traceback" not in text, text
    assert len(errors) == 1, text
    for p in phrases:
        assert _f(world, p) in errors[0], f"{p!r} not in: {errors[0]}"
    assert not (root / "PWNED").exists()  # no checkpoint ran its code
    for name, files in before.items():  # folders the command did not make are as they were
        assert snapshot(root / name) == files, name
    if tool == TRAIN and " is out of range" in errors[0]:  # ranges are checked before a run folder is claimed
        assert not [p for p in tmp_path.rglob("*") if p.name in ("summary.json", "config.yaml")], errors[0]
    for summary in (tmp_path / "outputs").rglob("summary.json"):  # a folder it made says why it failed
        s = json.loads(summary.read_text())
        assert s["status"] == "failed" and s["error"] in errors[0], s
    if any(a.startswith("resume=true") for a in args) and "user" in " ".join(args):
        assert (root / "user" / "train.log").read_text() == "my own notes\n"


def test_an_unexpected_failure_is_recorded_with_its_reason(tmp_path, monkeypatch):
    """A bug nobody anticipated (here: the method's train_step raising) still ends with summary.json saying
    failed, the reason in one line, a non-zero exit and the traceback in train.log."""
    from metalearn.methods.protonet import ProtoNet

    def broken(self, batch, optimizer):
        raise RuntimeError("something nobody anticipated")

    monkeypatch.setattr(ProtoNet, "train_step", broken)
    code, text = run_main(TRAIN, "debug=smoke", "run_dir=run", cwd=tmp_path)
    assert code == 1
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and s["error"] == "RuntimeError: something nobody anticipated"
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("errno_name", ["EACCES", "ENOSPC", "EROFS"])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, errno_name):
    """Read-only folders and full disks, simulated at the checkpoint write (root ignores file modes, and a
    full disk cannot be made here): one line naming the file, exit 2, summary.json failed."""
    import errno

    from metalearn.engine import trainer

    def full(path, state):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(path))

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    code, text = run_main(TRAIN, "debug=smoke", "run_dir=run", cwd=tmp_path)
    errors = [line for line in text.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in text, text
    assert ".pt" in errors[0] and os.strerror(getattr(errno, errno_name)) in errors[0]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and os.strerror(getattr(errno, errno_name)) in s["error"]


def test_orphaned_temporary_files_are_removed_on_the_next_start(world, tmp_path):
    """A kill during an atomic write leaves `.<name>.<random>.tmp`; resuming removes exactly those."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["root"] / "run", run)
    orphans = [run / "checkpoints" / ".last.pt.abc123.tmp", run / ".summary.json.tmp", run / ".metrics.jsonl.tmp"]
    for p in orphans:
        p.write_bytes(b"half")
    mine = run / "notes.tmp"
    mine.write_text("a user's file")
    code, text = run_main(TRAIN, "resume=true", f"run_dir={run}", cwd=tmp_path)
    assert code == 0, text
    assert not any(p.exists() for p in orphans) and mine.read_text() == "a user's file"


def test_the_python_api_refuses_a_checkpoint_that_would_run_code(world):
    import metalearn
    from metalearn.errors import MetalearnError

    with pytest.raises(MetalearnError, match="could run code, so it is refused"):
        metalearn.load_run(world["root"] / "evil_run", checkpoint="last")
    assert not (world["root"] / "PWNED").exists()
    assert metalearn.load_run(world["root"] / "run").method is not None  # a real run still loads


@pytest.mark.parametrize("method", ["protonet", "maml", "reptile", "meta_lstm", "baselinepp", "mann", "matching",
                                    "relation", "siamese", "metasgd"])
def test_every_methods_checkpoint_loads_as_data_only(tmp_path, method):
    """weights_only=True holds for what every method saves: a trained checkpoint round-trips."""
    code, text = run_main(TRAIN, "debug=smoke", f"method={method}", "steps=2", "checkpoint_every=1", "val.every=0",
                          "test.episodes=0", "run_dir=run", cwd=tmp_path)
    assert code == 0, text
    from metalearn.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["method"]["name"] == method
