"""Clean and PGD adversarial accuracy of any checkpoint, written to the store and printed as the paper's
Table 4/5. Defaults are the paper's (A.4): L2, eps 3.0, 20 steps, step 0.375.

    python -m jobs.evaluate --checkpoint runs/digits/checkpoints/models/digits_robust \
        --data runs/digits/data/test.beton --store runs/digits/store --eps 2.0 --step-size 0.25
    # A MadryLab robustness-library checkpoint: imported into robrep's format and the models table.
    python -m jobs.evaluate --robustness-checkpoint cifar_l2_0_5.pt --arch resnet50 --model-id cifar_l2_0.5 \
        --data /data/c10_test.beton --store /mnt/shared/robrep/store --eps 0.5 --step-size 0.0625 --gpus 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from robrep.errors import ConfigError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a robrep checkpoint folder (model.pt + meta.json)")
    model.add_argument("--robustness-checkpoint", help="a robustness-library .pt to import (needs --arch)")
    parser.add_argument("--arch", help="architecture of an imported checkpoint, e.g. resnet50")
    parser.add_argument("--model-id", help="name in the store (default: the checkpoint's)")
    parser.add_argument("--data", required=True, help="the test .beton")
    parser.add_argument("--store", required=True, help="the store root")
    parser.add_argument("--constraint", choices=("l2", "linf"), default="l2")
    parser.add_argument("--eps", type=float, default=3.0, help="[0,1]-pixel units (paper: 3.0)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-size", type=float, default=0.375)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--shards", type=int, default=2, help="Ray tasks the test set is split over")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per shard")
    parser.add_argument("--address", default=None, help="Ray address; default: local Ray, or the job's cluster")
    return parser.parse_args(argv)


def table_4(rows: list[dict]) -> str:
    """The paper's Table 4/5 layout: model, standard accuracy, adversarial accuracy at eps."""
    lines = [f"{'Model':<32}{'Standard':>12}{'Adversarial':>14}  (attack)"]
    for r in rows:
        lines.append(f"{r['model_id']:<32}{r['clean_acc']:>11.2%}{r['adv_acc']:>13.2%}   "
                     f"{r['constraint']} eps={r['eps']:g}, PGD-{r['steps']} step {r['step_size']:g}, "
                     f"{r['restarts']} restart(s), n={r['n']}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from cluster.connect import connect
    from cluster.evaluate import evaluate_checkpoint
    from cluster.store import append_rows
    from datasets.beton import read_info
    from jobs.common import git_sha
    from robrep.checkpoint import import_robustness_checkpoint, read_meta, save_checkpoint
    from robrep.config import from_dict
    from robrep.store import EVALUATIONS_SCHEMA, MODELS_SCHEMA, now_utc, to_table
    from robrep.train import AttackSpec

    args = parse(argv)
    attack = from_dict(AttackSpec, {"constraint": args.constraint, "eps": args.eps, "steps": args.steps,
                                    "step_size": args.step_size, "restarts": args.restarts,
                                    "random_start": args.restarts > 1})
    info = read_info(args.data)
    num_images = min(info["num_images"], args.max_images or info["num_images"])
    if args.robustness_checkpoint:
        if not args.arch or not args.model_id:
            raise ConfigError("--robustness-checkpoint needs --arch and --model-id")
        model, meta = import_robustness_checkpoint(args.robustness_checkpoint, args.arch, info["num_classes"])
        checkpoint = Path(args.store).resolve().parent / "imported" / args.model_id
        save_checkpoint(checkpoint, model, {**meta, "model_id": args.model_id, "dataset": info["source"],
                                            "robust": None, "git_sha": git_sha()})
        append_rows(args.store, "models", to_table([{
            "model_id": args.model_id, "arch": args.arch, "dataset": info["source"], "robust": None,
            "checkpoint": str(checkpoint), "git_sha": git_sha(), "created_at": now_utc()}], MODELS_SCHEMA),
            key=args.model_id)
    else:
        checkpoint, meta = Path(args.checkpoint).resolve(), read_meta(args.checkpoint)
    if meta["num_classes"] != info["num_classes"]:
        raise ConfigError(f"the model has {meta['num_classes']} classes but {args.data} has {info['num_classes']}")
    model_id = args.model_id or meta.get("model_id") or Path(checkpoint).name
    connect(args.address)
    start = time.time()
    scores = evaluate_checkpoint(str(checkpoint), str(Path(args.data).resolve()), num_images, attack,
                                 shards=args.shards, gpus_per_shard=args.gpus, cpus_per_shard=1,
                                 batch_size=args.batch_size)
    row = {"model_id": model_id, "checkpoint": str(checkpoint), "dataset": info["source"], **scores,
           "constraint": attack.constraint, "eps": attack.eps, "steps": attack.steps, "step_size": attack.step_size,
           "restarts": attack.restarts, "seconds": time.time() - start, "git_sha": git_sha(), "created_at": now_utc()}
    append_rows(args.store, "evaluations", to_table([row], EVALUATIONS_SCHEMA),
                key=f"{model_id}/{attack}/{num_images}")
    print(table_4([row]), flush=True)


if __name__ == "__main__":
    from jobs.common import exit_on_error

    exit_on_error(main)
