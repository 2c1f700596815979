"""Clean and PGD adversarial accuracy of any model, written to the store's `evaluations` table and printed as
the paper's Table 4/5. The attack defaults are the paper's (A.4): L2, eps 3.0, 20 steps, step 0.375.

    python -m jobs.evaluate --config jobs/configs/digits.yaml --model digits_robust --eps 2.0 --step-size 0.25
    python -m jobs.evaluate --checkpoint runs/digits/checkpoints/models/digits_robust \
        --data runs/digits/data/test.beton --store runs/digits/store --eps 2.0 --step-size 0.25
    # A MadryLab robustness-library checkpoint: imported into robrep's format (under storage_path/imported,
    # or beside a local store) and the models table.
    python -m jobs.evaluate --robustness-checkpoint cifar_l2_0_5.pt --arch cifar_resnet50 --model-id cifar_l2_0.5 \
        --data /data/c10_test.beton --store /mnt/shared/robrep/store --storage-path /mnt/shared/robrep/ckpt \
        --eps 0.5 --step-size 0.0625 --gpus 1
    # A plain torchvision or timm state dict, with the normalisation it was trained with.
    python -m jobs.evaluate --state-dict densenet161_l2_3.pth --arch torchvision.densenet161 --model-id dn161_l2_3 \
        --set evaluate.mean=[0.485,0.456,0.406] --set evaluate.std=[0.229,0.224,0.225] --data imagenet_val.beton ...
    # A RobustBench model by name, from the file RobustBench keeps at <dir>/cifar10/Linf/Carmon2019Unlabeled.pt
    python -m jobs.evaluate --robustbench Carmon2019Unlabeled --dataset cifar10 --threat-model Linf \
        --robustbench-dir /mnt/shared/robustbench --data /data/c10_test.beton --constraint linf --eps 0.0314 ...

Every flag is an alias of a key of the config's `evaluate:` section (or of store, storage_path, ray.address).
"""

from __future__ import annotations

import time
from pathlib import Path

from jobs.common import Alias, git_sha, run_entry_point
from jobs.config import EvaluateSpec, ExperimentConfig
from robrep.core.errors import ConfigError
from robrep.core.location import absolute, join, parent, redact
from robrep.core.names import check_name

ALIASES = (
    Alias("--model", "evaluate.model", help="a model_id in the store"),
    Alias("--checkpoint", "evaluate.checkpoint", help="a robrep checkpoint folder (model.pt + meta.json)"),
    Alias("--robustness-checkpoint", "evaluate.robustness_checkpoint", help="a robustness-library .pt to import"),
    Alias("--state-dict", "evaluate.state_dict", help="a plain torchvision/timm state dict to import"),
    Alias("--robustbench", "evaluate.robustbench", help="a RobustBench model name to import"),
    Alias("--dataset", "evaluate.robustbench_dataset", help="--robustbench's dataset: cifar10, cifar100, imagenet"),
    Alias("--threat-model", "evaluate.threat_model", help="--robustbench's leaderboard: Linf, L2, corruptions"),
    Alias("--robustbench-dir", "evaluate.robustbench_dir", help="RobustBench's model_dir (default: models)"),
    Alias("--arch", "evaluate.arch", help="arch of an imported checkpoint, e.g. cifar_resnet50, timm.resnet50"),
    Alias("--model-id", "evaluate.model_id", help="name in the store (default: the checkpoint's)"),
    Alias("--data", "evaluate.data", help="the test .beton (default: <data.dir>/test.beton)"),
    Alias("--store", "store", help="the store root"),
    Alias("--storage-path", "storage_path", help="where imported checkpoints are saved"),
    Alias("--constraint", "evaluate.attack.constraint", help="l2 or linf"),
    Alias("--eps", "evaluate.attack.eps", float, "[0,1]-pixel units (paper: 3.0)"),
    Alias("--steps", "evaluate.attack.steps", int),
    Alias("--step-size", "evaluate.attack.step_size", float),
    Alias("--restarts", "evaluate.attack.restarts", int, "random restarts (> 1 needs --random-start)"),
    Alias("--random-start", "evaluate.attack.random_start", bool),
    Alias("--max-images", "evaluate.max_images", int),
    Alias("--batch-size", "evaluate.batch_size", int),
    Alias("--shards", "evaluate.shards", int, "Ray tasks the test set is split over"),
    Alias("--gpus", "evaluate.gpus_per_shard", float, "GPUs per shard"),
    Alias("--precision", "evaluate.precision", help="of the attack: fp32 or bf16"),
    Alias("--compile", "evaluate.compile", bool, "torch.compile the attacked model"),
    Alias("--apgd-steps", "evaluate.apgd_steps", int, "APGD-CE/-DLR (torchattacks) steps; 0: no cross-check"),
    Alias("--address", "ray.address", help="Ray address; default: local Ray, or the job's cluster"),
)


def table_4(rows: list[dict]) -> str:
    """The paper's Table 4/5 layout: model, standard accuracy, adversarial accuracy at eps (the lowest: right under
    every attack), and each attack's own: our PGD, APGD-CE, APGD-DLR (where run)."""
    def pct(value) -> str:
        return "—" if value is None or value != value else f"{value:.2%}"

    lines = [f"{'Model':<32}{'Standard':>10}{'Adversarial':>13}{'PGD':>9}{'APGD-CE':>9}{'APGD-DLR':>10}  (attack)"]
    for r in rows:
        lines.append(f"{r['model_id']:<32}{pct(r['clean_acc']):>10}{pct(r['adv_acc']):>13}{pct(r.get('pgd_acc')):>9}"
                     f"{pct(r.get('apgd_ce_acc')):>9}{pct(r.get('apgd_dlr_acc')):>10}  "
                     f"{r['constraint']} eps={r['eps']:g}, PGD-{r['steps']} step {r['step_size']:g}, "
                     f"{r['restarts']} restart(s), APGD-{r.get('apgd_steps') or 0}, n={r['n']}")
    return "\n".join(lines)


def import_source(spec: EvaluateSpec) -> str:
    """What an import reads (recorded as the imported checkpoint's meta.json `imported_from`): a file, or a
    RobustBench name with its folder."""
    if spec.robustbench:
        return (f"robustbench:{spec.robustbench_dataset}/{spec.threat_model}/{spec.robustbench}"
                f"@{absolute(spec.robustbench_dir)}")
    return absolute(spec.robustness_checkpoint or spec.state_dict)


def import_model(config: ExperimentConfig, spec: EvaluateSpec, num_classes: int, dataset: str,
                 resume: bool = False) -> tuple[str, dict]:
    """Import a robustness-library checkpoint, a plain state dict or a RobustBench model into robrep's format and
    the models table."""
    from robrep.checkpoint import (
        import_robustbench,
        import_robustness_checkpoint,
        import_state_dict,
        model_digest,
        read_meta,
        save_checkpoint,
    )
    from robrep.store import find_model
    from robrep.store.commit import append_rows
    from robrep.store.schema import MODELS_SCHEMA, now_utc, to_table

    model_id = spec.model_id or spec.robustbench
    if resume and (row := find_model(config.store_root, model_id)) is not None:
        meta = read_meta(row["checkpoint"])
        if meta.get("imported_from") != import_source(spec):
            raise ConfigError(f"model_id {model_id!r} is in the store already, imported from "
                              f"{redact(str(meta.get('imported_from') or row['checkpoint']))}; give this one "
                              "another model_id")
        print(f"[import] {model_id}: in the store already ({redact(row['checkpoint'])})", flush=True)
        return str(row["checkpoint"]), meta
    if spec.state_dict:
        model, meta = import_state_dict(spec.state_dict, spec.arch, num_classes, list(spec.mean), list(spec.std))
    elif spec.robustbench:
        model, meta = import_robustbench(spec.robustbench_dir, spec.robustbench, spec.robustbench_dataset,
                                         spec.threat_model)
        if meta["num_classes"] != num_classes:
            raise ConfigError(f"RobustBench's {spec.robustbench} has {meta['num_classes']} classes; the test set has "
                              f"{num_classes}")
    else:
        model, meta = import_robustness_checkpoint(spec.robustness_checkpoint, spec.arch, num_classes)
    # In storage_path, else beside the store (a folder or a URI either way).
    base = config.storage_root if config.storage_path else parent(config.store_root)
    checkpoint = join(base, "imported", model_id)
    meta = {**meta, "model_id": model_id, "dataset": dataset, "robust": None, "git_sha": git_sha(),
            "imported_from": import_source(spec)}
    save_checkpoint(checkpoint, model, meta)
    digest = model_digest(checkpoint)
    append_rows(config.store_root, "models", to_table([{
        "model_id": model_id, "arch": meta["arch"], "dataset": dataset, "robust": None,
        "checkpoint": checkpoint, "git_sha": git_sha(), "created_at": now_utc(), "digest": digest}],
        MODELS_SCHEMA), key=f"{model_id}/{digest}")
    return checkpoint, meta


def resolve_checkpoint(config: ExperimentConfig, spec: EvaluateSpec, num_classes: int, dataset: str,
                       resume: bool = False) -> tuple[str, dict]:
    """(the checkpoint folder, its meta.json): the weights loaded once here, their digest checked, so that a damaged
    checkpoint is one error line before Ray starts."""
    from robrep.checkpoint import load_checkpoint
    from robrep.store import find_model

    if spec.robustness_checkpoint or spec.state_dict or spec.robustbench:
        return import_model(config, spec, num_classes, dataset, resume)
    if spec.model:
        row = find_model(config.store_root, spec.model)
        if row is None:
            raise ConfigError(f"evaluate.model {spec.model!r} is not in the store's models table at "
                              f"{redact(config.store_root)}; give --checkpoint or train it")
        return str(row["checkpoint"]), load_checkpoint(row["checkpoint"])[1]
    return absolute(spec.checkpoint), load_checkpoint(spec.checkpoint)[1]


def main(config: ExperimentConfig) -> None:
    if config.evaluate is None:
        raise ConfigError("jobs.evaluate needs a model: --model, --checkpoint, --robustness-checkpoint, --state-dict "
                          "or --robustbench (the config's evaluate: section)")
    evaluate(config, config.evaluate)


def evaluate(config: ExperimentConfig, spec: EvaluateSpec, resume: bool = False) -> dict:
    """Import the model where the spec names a file or a RobustBench model, evaluate it through Ray, commit its
    `evaluations` row and print Table 4. resume (the zoo of jobs.main): a model already imported from the same
    source is reused and an evaluation already in the store at the same settings is not run again."""
    from cluster.connect import check_fits, connect
    from cluster.evaluate import evaluate_checkpoint
    from datasets.beton import read_info
    from robrep.store import read_table
    from robrep.store.commit import append_rows
    from robrep.store.schema import EVALUATIONS_SCHEMA, now_utc, to_table

    data = str(Path(spec.data).resolve() if spec.data else config.data.local("test"))
    source = None if spec.data else config.data.stage_source("test")  # shards on other nodes stage it too
    info = read_info(data)
    num_images = min(info["num_images"], spec.max_images or info["num_images"])
    config.writable("store", *(["storage_path"] if config.storage_path else []))  # before any work
    checkpoint, meta = resolve_checkpoint(config, spec, info["num_classes"], info["source"], resume)
    if meta["num_classes"] != info["num_classes"]:
        raise ConfigError(f"the model has {meta['num_classes']} classes but {data} has {info['num_classes']}")
    model_id = check_name(spec.model_id or meta.get("model_id") or checkpoint.rsplit("/", 1)[-1],
                          f"the model_id of {redact(checkpoint)}")
    attack = spec.attack
    settings = {"model_id": model_id, "constraint": attack.constraint, "eps": attack.eps, "steps": attack.steps,
                "step_size": attack.step_size, "restarts": attack.restarts, "n": num_images}
    if resume:
        done = read_table(config.store_root, "evaluations", filters=[("model_id", "=", model_id)])
        for key, value in {**settings, "apgd_steps": spec.apgd_steps}.items():
            done = done[done[key] == value] if key in done.columns else done.iloc[0:0]
        if not done.empty:
            row = done.sort_values("created_at").iloc[-1].to_dict()
            print(f"[evaluate] {model_id}: evaluated already at these settings\n{table_4([row])}", flush=True)
            return row
    connect(config.ray.address, config.ray.num_cpus, verbose=config.ray.verbose)
    check_fits({"CPU": spec.cpus_per_shard, "GPU": spec.gpus_per_shard}, "evaluate shards")
    start = time.time()
    scores = evaluate_checkpoint(checkpoint, data, source, num_images, attack, shards=spec.shards,
                                 gpus_per_shard=spec.gpus_per_shard, cpus_per_shard=spec.cpus_per_shard,
                                 batch_size=spec.batch_size, precision=spec.precision, compile=spec.compile,
                                 apgd_steps=spec.apgd_steps, compile_cache=config.store_root)
    if "pgd_acc" not in scores:  # no APGD: our PGD is the only attack
        scores["pgd_acc"] = scores["adv_acc"]
    row = {**settings, "checkpoint": checkpoint, "dataset": info["source"], **scores,
           "apgd_steps": spec.apgd_steps if "apgd_ce_acc" in scores else 0,
           "seconds": time.time() - start, "git_sha": git_sha(), "created_at": now_utc()}
    append_rows(config.store_root, "evaluations", to_table([row], EVALUATIONS_SCHEMA),
                key=f"{model_id}/{attack}/{num_images}/{spec.apgd_steps}")
    print(table_4([row]), flush=True)
    return row


def cli(argv: list[str] | None = None) -> None:
    run_entry_point(main, __doc__, argv, aliases=ALIASES, config_required=False)


if __name__ == "__main__":
    cli()
