"""Every bad input, at every entry point, is one `error:` line naming what is wrong, exit 2, and harms nothing:
the store and the data are byte-identical afterwards. Run in this process (no Ray starts: every one of these
fails at the door)."""

import importlib
import json
import shutil

import pytest
import yaml
from helpers import private_world, tree_digest

pytestmark = pytest.mark.ffcv

# (entry point, arguments, what the one error line must name). {C} is a good config; {S}, {D}, {T} the store,
# the data folder and a scratch folder.
BAD = [
    ("fanout", ["--config", "{T}/nope.yaml"], "does not exist"),
    ("fanout", ["--config", "{T}/broken.yaml"], "is not valid YAML"),
    ("fanout", ["--config", "{T}/latin1.yaml"], "is not UTF-8"),
    ("fanout", ["--config", "{T}/list.yaml"], "must hold a mapping"),
    ("fanout", ["--config", "{T}/twice.yaml"], "the key 'store' is given twice"),
    ("fanout", ["--config", "{C}", "--set", "fanout.indices={mode: first, n: 3, n: 4}"], "the key 'n' is given twice"),
    ("fanout", ["--config", "{T}/int_key.yaml"], "the key 1 is not a name"),
    ("fanout", ["--config", "{C}", "--set", "fanout.indices={1: 2}"], "fanout.indices: the key 1 is not a name"),
    ("fanout", ["--config", "{C}", "--set", "fanout={~: x}"], "the key None is not a name"),
    ("fanout", ["--config", "{C}", "--set", "learning_rate=3"], "'learning_rate'"),
    ("fanout", ["--config", "{C}", "--set", "fanout.stepz=3"], "'fanout.stepz'"),
    ("fanout", ["--config", "{C}", "--set", "fanout.batch_size"], "expected KEY=VALUE"),
    ("fanout", ["--config", "{C}", "--set", "fanout.batch_size=[1"], "fanout.batch_size"),
    ("fanout", ["--config", "{C}", "--set", "fanout.rng_seed=!!python/object/apply:os.system ['true']"], "rng_seed"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs.0.eps=.nan"], "finite number"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs.0.step_size=-1"], "step_size=-1.0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs.0.steps=3000000000"], "steps=3000000000"),
    ("fanout", ["--config", "{C}", "--set", "fanout.rng_seed=10000000000000"], "fanout.rng_seed"),
    ("fanout", ["--config", "{C}", "--set", "fanout.batch_size=0"], "fanout.batch_size=0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.batch_size=ten"], "fanout.batch_size"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invent}]"], "unknown job kind 'invent'"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{steps: 3}]"], "needs a kind"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: visualize, coordinates: {mode: random, n: -1}}]"],
     "coordinates.n=-1"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: top_activating, coordinates: {mode: top}}]"],
     "top_activating"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: top_activating, coordinates: {mode: list}}]"],
     "needs values"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: interpolate, lam_steps: 0}]"], "lam_steps=0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert_sweep, radii: []}]"], "radii"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert_sweep, radii: [.inf]}]"], "finite"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert, inits: [sketch]}]"], "inits"),
    ("fanout", ["--config", "{C}", "--set", "fanout.models=[]"], "fanout.models is empty"),
    ("fanout", ["--config", "{C}", "--set", "fanout.models=[digits_robust]"], "not in fanout.models"),
    ("fanout", ["--config", "{C}", "--set", "fanout.indices={mode: list, values: [5000]}"], "out of range"),
    ("fanout", ["--config", "{C}", "--set", "fanout.indices={mode: first, n: 5000}"], "n=5000"),
    ("fanout", ["--config", "{C}", "--set",
                "fanout.jobs=[{kind: visualize, coordinates: {mode: list, values: [999]}}]"], "out of range"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: visualize, coordinates: {mode: top, n: 1000}}]"],
     "n=1000"),
    ("fanout", ["--config", "{C}", "--set", "fanout.models=[ghost]", "--set", "fanout.jobs=[{kind: invert}]"],
     "'ghost' is not in the store's models table"),
    ("fanout", ["--config", "{C}", "--from-tune", "{T}/nope.yaml"], "does not exist"),
    ("fanout", ["--config", "{C}", "--from-tune", "{T}/tuned_abc.yaml"], "steps='abc'"),
    ("fanout", ["--config", "{C}", "--from-tune", "{T}/broken.yaml"], "not a jobs.tune result"),
    ("fanout", ["--config", "{C}", "--from-tune", "{T}/tuned_attack.yaml"], "not an inversion result"),
    ("fanout", ["--config", "{C}", "--nonsense"], "unrecognized arguments"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert, targets_from: letters}]"], "letters.beton"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert, targets_from: ../x}]"], "is not a valid name"),
    ("fanout", ["--config", "{C}", "--set", "fanout.judge=ghost"], "'ghost' is not in the store's models table"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: regularized_visualize, jitter: -1}]"], "jitter=-1"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.model_id=../../x"], "is not a valid name"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.model_id=007/x"], "is not a valid name"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.arch=resnet9000"], "unknown arch"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.attack.eps=-1"], "eps=-1.0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.attack.steps=0"], "steps=0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.epochs=0"], "epochs=0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.lr=.nan"], "finite"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.model_id=digits_standard"], "duplicate model_id"),
    ("train", ["--config", "{C}", "--set", "train.digits_huge.epochs=3"], "no entry 'digits_huge'"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.precision=fp16"], "train[1].precision='fp16'"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.bf16=true"], "'train[1].bf16'; known keys here"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.optimizer=lion"], "train[1].optimizer='lion'"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.schedule=linear"], "train[1].schedule='linear'"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.attack_warmup=1.5"], "attack_warmup=1.5"),
    ("train", ["--config", "{C}", "--set", "train.digits_standard.attack_warmup=0.3"], "needs an attack"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.depth=-1"], "depth=-1"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.pool=0"], "pool=0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.weight_decay=-1"], "weight_decay"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.checkpoint_every=0"], "checkpoint_every=0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.attack.at_resolution=0"], "at_resolution=0"),
    ("train", ["--config", "{C}", "--set", "data.source=files"], "at_resolution and depth 0 follow data.resolution"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.arch=resnet18"],
     "width, depth and pool are small_cnn settings"),
    ("fanout", ["--config", "{C}", "--set", "fanout.precision=half"], "fanout.precision"),
    ("fanout", ["--config", "{C}", "--set", "fanout.compile=maybe"], "fanout.compile"),
    ("tune", ["--config", "{C}", "--set", "tune.precision=bfloat16"], "tune.precision"),
    ("train", ["--config", "{C}", "--set", "data.dir={T}/no_data"], "does not exist"),
    ("main", ["--config", "{C}", "--set", "data.resolution=2"], "data.resolution=2"),
    ("main", ["--config", "{C}", "--set", "data.dir=s3://bucket/data"], "data.dir"),
    ("main", ["--config", "{C}", "--set", "storage_path=s3:/bucket/ckpt"], "storage_path='s3:/bucket/ckpt' looks like"),
    ("main", ["--config", "{C}", "--set", "store=ftp://host/store"], "unknown scheme 'ftp'"),
    ("main", ["--config", "{C}", "--set", "store=s3://"], "names no bucket"),
    ("main", ["--config", "{C}", "--set", "report_dir=gs:/b/report"], "report_dir="),
    ("main", ["--config", "{C}", "--set", "data.stage_from=s3:/b/data"], "data.stage_from="),
    ("train", ["--config", "{C}", "--set", "data.stage_from={T}/no_stage"], "data.stage_from has no train.json"),
    ("fanout", ["--config", "{C}", "--set", "data.stage_from={T}/empty_stage"], "data.stage_from has no test.json"),
    ("tune", ["--config", "{C}", "--set", "tune.output=s3:/b/best.yaml"], "tune.output="),
    ("tune", ["--config", "{C}", "--set", "tune.gpus_per_trial=-1"], "tune.gpus_per_trial"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--data", "s3://b/test.beton"], "evaluate.data="),
    ("main", ["--config", "{C}", "--set", "data.test_fraction=1.5"], "data.test_fraction"),
    ("main", ["--config", "{C}", "--set", "name=../x"], "name='../x'"),
    ("tune", ["--config", "{C}", "--set", "tune.step_size={low: 1.0, high: 0.1}"], "0 < low < high"),
    ("tune", ["--config", "{C}", "--set", "tune.model=ghost"], "tune.model 'ghost'"),
    ("tune", ["--config", "{C}", "--set", "tune.model=../x"], "tune.model='../x'"),
    ("evaluate", ["--store", "{S}"], "jobs.evaluate needs a model"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--apgd-steps", "-1"], "apgd_steps=-1"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--checkpoint", "{T}"], "exactly one of"),
    ("evaluate", ["--store", "{S}", "--robustness-checkpoint", "{T}/r.pt"], "needs evaluate.arch"),
    ("evaluate", ["--store", "{S}", "--checkpoint", "{T}/nowhere", "--data", "{D}/test.beton"], "meta.json is missing"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--data", "{T}/text.beton"], "has no sidecar"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--data", "{T}/badside.beton"], "is not JSON"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--data", "{T}/fake.beton"], "does not describe"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--eps", "nan"], "finite"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--eps", "abc"], "--eps"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--model-id", "../x"], "is not a valid name"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--restarts", "3"], "restarts=3"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--precision", "fp64"], "evaluate.precision"),
    ("evaluate", ["--store", "{S}", "--model", "ghost", "--data", "{D}/test.beton"], "evaluate.model 'ghost'"),
    ("build_dataset", ["--source", "imagefolder", "--out", "{T}/x.beton"], "needs build.root"),
    ("build_dataset", ["--source", "digits", "--out", "{T}"], "must be the path of a .beton"),
    ("build_dataset", ["--source", "digits", "--out", "s3://bucket/x.beton"], "not a URI"),
    ("build_dataset", ["--source", "synthetic", "--out", "{T}/x.beton", "--resolution", "0"], "build.resolution=0"),
    ("build_dataset", ["--source", "nope", "--out", "{T}/x.beton"], "build.source"),
    ("build_dataset", ["--source", "imagefolder", "--root", "{T}/none", "--out", "{T}/x.beton"], "none"),
    ("build_dataset", ["--source", "cifar10", "--root", "{T}/cifar", "--out", "{T}/x.beton"], "not a CIFAR-10 batch"),
    # numbers out of their declared range (robrep/core/config.py Bounds), read at the door
    ("fanout", ["--config", "{C}", "--set", "fanout.cpus_per_worker=-1"], "fanout.cpus_per_worker=-1.0 must be > 0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.gpus_per_worker=-0.5"], "fanout.gpus_per_worker=-0.5"),
    ("fanout", ["--config", "{C}", "--set", "fanout.max_retries=-1"], "fanout.max_retries=-1 must be >= 0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.workers=0"], "fanout.workers=0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.compact_parts=-3"], "fanout.compact_parts=-3"),
    ("fanout", ["--config", "{C}", "--set", "ray.num_cpus=0"], "ray.num_cpus=0 must be >= 1"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: interpolate, lam_steps: 1.5}]"], "lam_steps"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: top_activating, images_per_end: 0}]"],
     "images_per_end=0"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: regularized_visualize, max_degrees: 720}]"],
     "max_degrees=720.0 must be within [0, 180]"),
    ("fanout", ["--config", "{C}", "--set", "fanout.indices={mode: list, values: [-2]}"], "values[0]=-2"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert, kind: pairs}]"], "'kind' is given twice"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: [invert]}]"], "unknown job kind ['invert']"),
    ("tune", ["--config", "{C}", "--set", "tune.max_concurrent=0"], "tune.max_concurrent=0 must be >= 1"),
    ("tune", ["--config", "{C}", "--set", "tune.default_step_size=-0.1"], "tune.default_step_size=-0.1"),
    ("tune", ["--config", "{C}", "--set", "tune.cpus_per_trial=0"], "tune.cpus_per_trial=0.0 must be > 0"),
    ("tune", ["--config", "{C}", "--set", "tune.max_failures=-2"], "tune.max_failures=-2"),
    ("tune", ["--config", "{C}", "--set", "tune.step_size={low: -1.0, high: 0.1}"], "tune.step_size.low=-1.0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.momentum=-5"], "momentum=-5.0 must be within [0, 1)"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.lr_gamma=0"], "lr_gamma=0.0 must be > 0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.label_smoothing=1"], "label_smoothing=1.0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.num_workers=0"], "num_workers=0 must be >= 1"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.cpus_per_worker=-1"], "cpus_per_worker=-1.0"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.max_failures=-1"], "max_failures=-1"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.warmup_epochs=8"], "warmup_epochs=8 must be fewer"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.attack.restarts=0"], "restarts=0 must be >= 1"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--gpus", "-1"], "evaluate.gpus_per_shard=-1.0"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--shards", "0"], "evaluate.shards=0"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--max-images", "0"], "evaluate.max_images=0"),
    ("build_dataset", ["--source", "synthetic", "--out", "{T}/x.beton", "--set", "build.jpeg_quality=0"],
     "build.jpeg_quality=0"),
    ("main", ["--config", "{C}", "--set", "data.per_class=0"], "data.per_class=0"),
    # the same thing twice: it would run the same jobs twice
    ("fanout", ["--config", "{C}", "--set", "fanout.indices={mode: list, values: [3, 1, 3]}"], "lists 3 twice"),
    ("fanout", ["--config", "{C}", "--set", "fanout.models=[digits_standard, digits_robust, digits_standard]"],
     "fanout.models lists 'digits_standard' twice"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert_sweep, radii: [1.0, 2, 1]}]"],
     "radii lists 1.0 twice"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs=[{kind: invert, inits: [noise, noise]}]"],
     "inits lists 'noise' twice"),
    ("fanout", ["--config", "{C}", "--set",
                "fanout.jobs=[{kind: visualize, coordinates: {mode: list, values: [2, 2]}}]"], "lists 2 twice"),
    ("tune", ["--config", "{C}", "--set", "tune.steps=[20, 20]"], "tune.steps lists 20 twice"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.lr_milestones=[5, 2]"], "must be increasing"),
    # files checked before work starts
    ("fanout", ["--config", "{C}", "--set", "fanout.models=[{T}/garbage_ckpt]", "--set", "fanout.judge=none",
                "--set", "fanout.jobs=[{kind: invert}]"],
     "digest mismatch"),
    ("fanout", ["--config", "{C}", "--set", "fanout.models=[{T}/garbage_nodigest]", "--set", "fanout.judge=none",
                "--set", "fanout.jobs=[{kind: invert}]"],
     "cannot read"),
    ("evaluate", ["--store", "{S}", "--checkpoint", "{T}/garbage_ckpt", "--data", "{D}/test.beton"],
     "digest mismatch"),
    ("evaluate", ["--store", "{S}", "--checkpoint", "{T}/garbage_nodigest", "--data", "{D}/test.beton"],
     "cannot read"),
    ("store", ["check", "--store", "{T}/no_store"], "there is no store there"),
    ("store", ["compact", "--store", "{T}/no_store"], "there is no store there"),
    ("report", ["--store", "{T}/no_store"], "there is no store there"),
    ("fanout", ["--config", "{C}", "--set", "store={T}/good.yaml"], "cannot be written"),
    ("fanout", ["--config", "{C}", "--set", "fanout.jobs.0.steps=1e3"], "fanout.jobs[0].steps: expected an integer"),
    ("tune", ["--config", "{C}", "--set", "tune.steps=[5]"], "tune.steps must be budgets >= tune.report_every"),
    ("tune", ["--config", "{C}", "--set", "tune.tune_indices={mode: list, values: [100]}"], "overlap"),
    ("train", ["--config", "{C}", "--set", "train.digits_robust.batch_size=1"], "batch_size 1 < num_workers 2"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--batch-size", "0"], "evaluate.batch_size=0"),
    ("evaluate", ["--store", "{S}", "--model", "digits_robust", "--data", "{T}/missing.beton"], "missing.beton"),
    ("report", [], "needs a store"),
    ("store", ["check"], "needs --store"),
    ("store", ["mend", "--store", "{S}"], "must be one of"),
]


@pytest.fixture(scope="module")
def world(untrained_pair, tmp_path_factory):
    """A good config over the fan-out fixture's data and store, and the bad files the cases name."""
    trained = untrained_pair
    import pickle

    import numpy as np

    tmp = private_world(trained, tmp_path_factory.mktemp("bad"))
    (tmp / "broken.yaml").write_text("fanout: [unclosed\n")
    (tmp / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "twice.yaml").write_text((tmp / "good.yaml").read_text() + f"store: {tmp / 'other'}\n")
    (tmp / "int_key.yaml").write_text((tmp / "good.yaml").read_text() + "1: x\n")
    (tmp / "tuned_abc.yaml").write_text(yaml.safe_dump({"objective": "inversion", "step_size": 0.1, "steps": "abc"}))
    (tmp / "tuned_attack.yaml").write_text(yaml.safe_dump({"objective": "attack", "step_size": 0.1, "steps": 5}))
    (tmp / "text.beton").write_text("not a beton")
    (tmp / "badside.beton").write_text("not a beton")
    (tmp / "badside.json").write_text("{not json")
    (tmp / "fake.beton").write_text("not a beton, but its sidecar is a real one" * 10)
    shutil.copy(trained / "data" / "test.json", tmp / "fake.json")
    for name, keep_digest in (("garbage_ckpt", True), ("garbage_nodigest", False)):
        shutil.copytree(trained / "ckpt" / "digits_robust", tmp / name)
        (tmp / name / "model.pt").write_bytes(b"not a torch file" * 8)
        if not keep_digest:
            meta = json.loads((tmp / name / "meta.json").read_text())
            (tmp / name / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "digest"}))
    (tmp / "cifar").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]:
        batch = {b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0, 1, 2, 3], b"label_names": [b"a"] * 10}
        (tmp / "cifar" / name).write_bytes(pickle.dumps(batch))
    return tmp, trained


@pytest.mark.parametrize("module, args, names", BAD, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD)])
def test_a_bad_input_is_one_error_line_and_harms_nothing(world, capsys, module, args, names):
    tmp, data = world
    fill = {"{C}": str(tmp / "good.yaml"), "{S}": str(tmp / "store"), "{D}": str(data / "data"), "{T}": str(tmp)}
    argv = [a for a in args]
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
    before = tree_digest(tmp / "store", data / "data")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"jobs.{module}").cli(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert stopped.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0], lines[0]
    assert tree_digest(tmp / "store", data / "data") == before
    assert not list(tmp.glob("*.beton.tmp")) and not (tmp / "x.beton").exists()


def test_the_table_covers_at_least_50_inputs_and_every_entry_point():
    assert len(BAD) >= 50 and len({tuple(args) for _, args, _ in BAD}) == len(BAD)
    assert {m for m, _, _ in BAD} == {"fanout", "train", "main", "tune", "evaluate", "build_dataset", "report", "store"}
