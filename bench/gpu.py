"""Benchmark on one GPU: the paper's inversion workload (ResNet-50, 224 px, Eq. 4) through robrep's fast path,
against a raw autograd loop on the same model and against the robustness library's attacker (the peer).

    python bench/gpu.py [--out gpu.json] [--budget-s 285]

Needs only torch and torchvision (the GPU machines we measure on have no Ray and no FFCV): it imports robrep's
core, and the peer from the wheels in bench/peer/ (`make peer` downloads them; they are put on sys.path as zips,
with stubs for the two things the peer imports and never uses here: `cox`, `torchvision.models.utils`).
Without CUDA it says so and exits 0.

It measures, in this order (the slow compilations last; a section that would end after --budget-s is skipped, and
a section that fails prints why, both with a line, and the rest goes on):
- the peer's AttackerModel with the paper notebooks' inversion loss, fp32, batch 128 and 512, as users run it
  (cuDNN autotuning off, its default) and with autotuning on;
- robrep `pgd(inversion(FastModel(...)))` and the raw loop (the same L2 step and projection written inline, on
  the same FastModel), in image-steps/s, at batch 512/256/128: bf16 eager, then bf16 compiled, where robrep's
  step is also captured as a CUDA graph (capture=fast.capture; the raw loop is not), and its compiled graphs
  published to a compile cache in a scratch store (robrep/compile_cache.py);
- a second worker's first step: a fresh process with an empty Inductor folder that loads that cache, builds the
  model and runs one compiled step (target <= 10 s);
- the fan-out worker's path (the invert kind's `run` on a batch of jobs: images gathered, fp32 targets, PGD, the
  rows' fp32 measurements) against the engine alone on the same batch (target >= 0.9);
- the quality guard on ResNet-50: the same inversions in fp32 and bf16, mean rep_dist_rel measured in fp32;
- ResNet-50 training at batch 256, bf16, compiled (its attack captured), then eager: standard and adversarial
  (L2, eps 3, 7 steps of 0.5) img/s (target: adversarial compiled >= 1,400);
- fp32 inversion, eager then compiled.
Every figure also goes to --out as JSON. One PGD step ~ 2 forward passes ~ 16.4 GFLOP per 224 px image; the share
is of 989 TFLOP/s (dense bf16 of an H100/H200). The last line is `ratio: <robrep's best / the peer's best>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robrep.compile_cache import shared  # noqa: E402
from robrep.fast import FastModel  # noqa: E402
from robrep.models import create_model  # noqa: E402
from robrep.objectives import inversion, inversion_loss  # noqa: E402
from robrep.pgd import pgd  # noqa: E402
from robrep.train import AttackSpec, train_step  # noqa: E402

sys.path.append(str(REPO / "bench"))
from pgd import raw_loop  # noqa: E402  (bench/pgd.py: the same math written inline)

GFLOP_PER_IMAGE_STEP = 16.4  # ResNet-50 at 224 px: forward + input-gradient backward ~ 2 x 8.2 GFLOP
PEAK_TFLOPS = 989.0
WORKLOAD = 1e8  # the paper's inversions: 10,000 images x 10,000 steps
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Bench:
    def __init__(self, args):
        self.args, self.start, self.figures, self.device = args, time.time(), {}, args.device
        self.store = tempfile.mkdtemp(prefix="robrep-bench-store-")  # the compile cache the second worker loads

    def elapsed(self) -> float:
        return time.time() - self.start

    def over_budget(self, what: str, needs_s: float) -> bool:
        if self.elapsed() + needs_s > self.args.budget_s:
            print(f"{what}: skipped, the budget of {self.args.budget_s:.0f} s would be spent "
                  f"({self.elapsed():.0f} s gone, needs ~{needs_s:.0f} s)", flush=True)
            return True
        return False

    def record(self, key: str, value) -> None:
        self.figures[key] = value
        if self.args.out:
            Path(self.args.out).write_text(json.dumps(self.figures, indent=1))

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def rate(self, run, batch: int) -> float:
        """Items per second of run(steps) (batch items per step): a warm-up, a probe, then ~--seconds of steps."""
        run(2)
        self.sync()
        t = time.perf_counter()
        run(3)
        self.sync()
        steps = max(3, int(self.args.seconds * 3 / (time.perf_counter() - t)))
        t = time.perf_counter()
        run(steps)
        self.sync()
        return batch * steps / (time.perf_counter() - t)


def describe(rate: float) -> str:
    share = rate * GFLOP_PER_IMAGE_STEP * 1e9 / (PEAK_TFLOPS * 1e12)
    return f"{rate:,.0f} image-steps/s, {share:.1%} of {PEAK_TFLOPS:.0f} TFLOP/s, 1e8 image-steps in " \
           f"{WORKLOAD / rate / 3600:.1f} h"


def load_peer(device: str):
    """The robustness library's AttackerModel class and ResNet-50 constructor, from bench/peer/*.whl."""
    wheels = sorted((REPO / "bench" / "peer").glob("*.whl"))
    if not any(w.name.startswith("robustness-") for w in wheels):
        raise SystemExit("error: the peer's wheels are missing from bench/peer/: run `make peer` (needs the package "
                         "registry) and carry bench/peer to the GPU machine")
    sys.path.extend(str(w) for w in wheels)  # pure-Python wheels import as zips; installed packages come first
    cox = types.ModuleType("cox")
    cox.store, cox.utils = types.ModuleType("cox.store"), types.ModuleType("cox.utils")
    cox.utils.Parameters = dict
    utils = types.ModuleType("torchvision.models.utils")
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.modules.update({"cox": cox, "cox.store": cox.store, "cox.utils": cox.utils,
                        "torchvision.models.utils": utils})
    if device != "cuda":  # --device cpu (a dry run of this script): the peer moves its center with .cuda()
        torch.Tensor.cuda = lambda self, *a, **k: self
    import warnings

    warnings.filterwarnings("ignore", category=SyntaxWarning)  # the peer's docstrings hold "\e" and "\m"
    from robustness.attacker import AttackerModel
    from robustness.imagenet_models import resnet50

    return AttackerModel, resnet50


def measure_peer(bench: Bench, model, x0s: dict, target_reps: dict) -> float:
    """The paper notebooks' inversion through AttackerModel (fp32, as published); returns its best image-steps/s."""
    AttackerModel, resnet50 = load_peer(bench.device)
    peer = resnet50(num_classes=model.fc.out_features)
    peer.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")})
    dataset = types.SimpleNamespace(mean=torch.tensor(MEAN), std=torch.tensor(STD))
    attacker = AttackerModel(peer, dataset).to(bench.device).eval()
    x = x0s[min(x0s)]
    with torch.no_grad():
        (_, rep), _ = attacker(x, with_latent=True)
        same = (rep - model.representation(x)).norm() / rep.norm()
    print(f"peer: the same weights in the robustness library's ResNet-50; representations differ by {same:.1e} "
          "(relative)", flush=True)

    def loss(net, inp, target):  # the robustness notebooks' inversion loss
        _, rep = net(inp, with_latent=True, fake_relu=True)
        return torch.div(torch.norm(rep - target, dim=1), torch.norm(target, dim=1)), None

    best = 0.0
    kwargs = dict(make_adv=True, custom_loss=loss, constraint="2", eps=1000.0, step_size=1.0, targeted=True,
                  do_tqdm=False)
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for batch in sorted(x0s):
            if batch not in (128, max(x0s)):
                continue
            rate = bench.rate(lambda steps, b=batch: attacker(x0s[b], target_reps[b], iterations=steps, **kwargs),
                              batch)
            bench.record(f"peer/fp32/cudnn_benchmark={benchmark}/batch{batch}", rate)
            print(f"peer AttackerModel fp32, cudnn.benchmark={benchmark}, batch {batch}: {describe(rate)}", flush=True)
            best = max(best, rate)
    torch.backends.cudnn.benchmark = False
    return best


def measure_inversion(bench: Bench, model, x0s: dict, target_reps: dict, precision: str, compile: bool) -> dict:
    """robrep and the raw loop at every batch (largest first), one FastModel (one compilation) for all; compiled,
    its graphs go to the bench's scratch store's compile cache, and robrep's step is captured (on CUDA)."""
    fast = FastModel(model, bench.device, precision, compile, shared(bench.store, bench.device, compile))
    t = time.time()
    pgd(inversion(fast, target_reps[max(x0s)]), x0s[max(x0s)], eps=1000.0, step_size=1.0, steps=1)
    bench.sync()
    if compile:
        print(f"compile ({precision}): first step after {time.time() - t:.0f} s", flush=True)
        bench.record(f"compile_s/{precision}", time.time() - t)
    out = {}
    for batch in sorted(x0s, reverse=True):
        x0, target_rep = x0s[batch], target_reps[batch]
        name = f"{precision}/compile={'on' if compile else 'off'}/graph={'on' if fast.capture else 'off'}/batch{batch}"
        try:
            robrep = bench.rate(lambda steps, x0=x0, t=target_rep: pgd(inversion(fast, t), x0, eps=1000.0,
                                                                       step_size=1.0, steps=steps,
                                                                       capture=fast.capture), batch)
            raw = bench.rate(lambda steps, x0=x0, t=target_rep: raw_loop(
                lambda x: inversion_loss(fast.representation(x), t), x0, 1000.0, 1.0, steps), batch)
        except torch.cuda.OutOfMemoryError:
            print(f"robrep pgd  {name}: out of GPU memory", flush=True)
            torch.cuda.empty_cache()
            continue
        bench.record(f"robrep/{name}", robrep)
        bench.record(f"raw/{name}", raw)
        print(f"robrep pgd  {name}: {describe(robrep)}; {robrep / raw:.3f}x the raw loop ({raw:,.0f})", flush=True)
        out[batch] = (robrep, raw)
    return out


def fanout_path(bench: Bench, model, batch: int, compile: bool, steps: int = 50) -> None:
    """The invert kind's run on `batch` jobs of `steps` steps against pgd alone on the same starts and targets."""
    from robrep.experiments import noise_image
    from robrep.fanout.job import BatchContext
    from robrep.fanout.registry import get_kind

    res, device = bench.args.resolution, bench.device
    images, labels = torch.rand(batch, 3, res, res), torch.arange(batch) % bench.args.num_classes  # on the host
    fast = FastModel(model, device, "bf16", compile, shared(bench.store, device, compile))
    ctx = BatchContext(model, fast, device, lambda idx: (images[idx], labels[idx]), batch, {}, ("m", "d"))
    kind = get_kind("invert")
    jobs = [kind.job(model_id="m", dataset="d", split="test", target_index=t, source_index=(t + 1) % batch,
                     init="noise", rng_seed=t, constraint="l2", eps=1000.0, step_size=1.0, steps=steps,
                     precision="bf16") for t in range(batch)]
    x0 = torch.stack([noise_image((3, res, res), t, device) for t in range(batch)])
    with torch.no_grad():
        target_rep = model.representation(images.to(device))

    def timed(run) -> float:
        run()  # warm-up (and, compiled, the compilation)
        bench.sync()
        t, calls = time.perf_counter(), 0
        while calls < 2 or time.perf_counter() - t < 3 * bench.args.seconds:
            run()
            bench.sync()
            calls += 1
        return batch * steps * calls / (time.perf_counter() - t)

    worker = timed(lambda: kind.run(ctx, jobs))
    engine = timed(lambda: pgd(inversion(fast, target_rep), x0, eps=1000.0, step_size=1.0, steps=steps,
                               capture=fast.capture))
    bench.record("fanout_worker_path", {"worker": worker, "engine": engine, "batch": batch, "steps": steps})
    print(f"fan-out worker path, invert, bf16 compile {'on' if compile else 'off'}, batch {batch}, {steps} steps: "
          f"{worker:,.0f} image-steps/s; the engine alone {engine:,.0f}: {worker / engine:.3f}x (target >= 0.9)",
          flush=True)


SECOND_WORKER = """
import sys, time
t = time.time()
import torch
sys.path.insert(0, {repo!r})
from robrep.compile_cache import shared
from robrep.fast import FastModel
from robrep.models import create_model
from robrep.objectives import inversion
from robrep.pgd import pgd
model = create_model("resnet50", {classes}, {mean}, {std}).eval()
fast = FastModel(model, {device!r}, "bf16", True, shared({store!r}, {device!r}, True))
x0 = torch.rand({batch}, 3, {res}, {res}, device={device!r})
with torch.no_grad():
    target = fast.representation(torch.rand_like(x0))
pgd(inversion(fast, target), x0, eps=1000.0, step_size=1.0, steps=1, capture=fast.capture)
if {device!r} == "cuda":
    torch.cuda.synchronize()
print(f"first_step_s {{time.time() - t:.2f}} loaded {{len(fast.cache.files())}}", flush=True)
"""


def second_worker(bench: Bench, batch: int) -> None:
    """A fresh process on an empty Inductor folder (another node's worker): it loads the compile cache that the
    compiled bf16 section published, then builds ResNet-50 and runs its first compiled step."""
    script = SECOND_WORKER.format(repo=str(REPO), classes=bench.args.num_classes, mean=MEAN, std=STD,
                                  device=bench.device, store=bench.store, batch=batch, res=bench.args.resolution)
    with tempfile.TemporaryDirectory() as inductor:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    line = next((x for x in done.stdout.splitlines() if x.startswith("first_step_s")), None)
    if line is None:
        raise RuntimeError(f"the second worker failed: {' '.join(done.stderr.split())[-500:]}")
    seconds = float(line.split()[1])
    bench.record("second_worker_first_step_s", seconds)
    print(f"second worker, warm cache ({line.split()[3]} files loaded): first step after {seconds:.1f} s, model "
          "build and Python start included (target <= 10 s)", flush=True)


def quality(bench: Bench, model, x0, target, steps: int) -> None:
    """The quality guard on ResNet-50: the same inversions in fp32 and bf16 (eager: compiling changes no math);
    rep_dist_rel measured in fp32."""
    with torch.no_grad():
        target_rep = model.representation(target)
    means = {}
    for precision in ("fp32", "bf16"):
        fast = FastModel(model, bench.device, precision)
        x = pgd(inversion(fast, target_rep), x0, eps=1000.0, step_size=1.0, steps=steps).x
        with torch.no_grad():
            means[precision] = float(inversion_loss(model.representation(x), target_rep).mean())
    change = abs(means["bf16"] - means["fp32"]) / means["fp32"]
    bench.record("quality/rep_dist_rel", {**means, "relative_change": change})
    print(f"quality guard, ResNet-50, {len(x0)} inversions x {steps} steps: mean rep_dist_rel fp32 "
          f"{means['fp32']:.4f}, bf16 {means['bf16']:.4f} ({change:.2%} apart; "
          f"guard: 2%) -> {'pass' if change <= 0.02 else 'FAIL'}", flush=True)


def measure_training(bench: Bench, resolution: int, num_classes: int, compile: bool) -> None:
    """ResNet-50 SGD steps at batch 256 in bf16 on fixed random data: standard and adversarial img/s."""
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes, MEAN, STD).to(bench.device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = bench.args.train_batch
    x = torch.rand(batch, 3, resolution, resolution, device=bench.device)
    y = torch.randint(0, num_classes, (batch,), device=bench.device)
    step_model = torch.compile(model) if compile else model
    attack_model = torch.compile(model) if compile else model
    attack = AttackSpec(eps=3.0, steps=7, step_size=0.5)
    capture = compile and bench.device == "cuda"  # as cluster/train.py: the attack's steps as a CUDA graph
    tag = "compiled" if compile else "eager"
    t = time.time()
    rates = {}
    for name, spec in (("standard", None), ("adversarial", attack)):
        rates[name] = bench.rate(lambda steps, s=spec: [train_step(step_model, optimizer, x, y, s,
                                                                   attack_model=attack_model, precision="bf16",
                                                                   capture=capture)
                                                        for _ in range(steps)], batch)
        bench.record(f"train/{name}/bf16/{tag}/batch{batch}", rates[name])
    print(f"training ResNet-50 bf16 {tag}, batch {batch}: standard {rates['standard']:,.0f} img/s, adversarial "
          f"(7 steps) {rates['adversarial']:,.0f} img/s ({rates['standard'] / rates['adversarial']:.1f}x the cost; "
          f"FLOPs predict ~5.7x); {time.time() - t:.0f} s with warm-up", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.environ["OUT"], "gpu.json") if os.environ.get("OUT") else "")
    parser.add_argument("--budget-s", type=float, default=285.0, help="skip what would end later than this")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per figure")
    parser.add_argument("--batches", default="512,256,128")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script's code, not a benchmark")
    parser.add_argument("--compile", default="off,on", help="which compile settings to measure")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: bench/gpu.py measures on one H100/H200; nothing to do")
        return 0
    bench = Bench(args)
    compiles = {c == "on" for c in args.compile.split(",")}
    info = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)"
    print(f"device: {info}; torch {torch.__version__}; ResNet-50 at {args.resolution} px", flush=True)
    bench.record("device", info)
    bench.record("torch", torch.__version__)
    torch.manual_seed(0)
    model = create_model("resnet50", args.num_classes, MEAN, STD).to(args.device).eval()
    batches = [int(b) for b in args.batches.split(",")]
    gen = torch.Generator(device=args.device).manual_seed(0)
    x0s = {b: (torch.randn(b, 3, args.resolution, args.resolution, device=args.device, generator=gen) / 20 + 0.5)
           .clamp(0, 1) for b in batches}
    with torch.no_grad():
        target_reps = {b: model.representation(torch.rand(b, 3, args.resolution, args.resolution, device=args.device,
                                                          generator=gen)) for b in batches}

    def attempt(what: str, needs_s: float, fn):
        """One section; a failure (or the budget) skips it with a line, and the rest still runs."""
        if bench.over_budget(what, needs_s):
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - report and go on: device time is scarce
            print(f"{what}: FAILED: {type(e).__name__}: {' '.join(str(e).split())[:500]}", flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            return None

    peer = attempt("peer", 20, lambda: measure_peer(bench, model, x0s, target_reps))
    results = {}

    def inversion_section(precision: str, compile: bool):
        results[(precision, compile)] = measure_inversion(bench, model, x0s, target_reps, precision, compile)

    n = min(64, min(batches))
    sections = [  # what issue 24's targets name first (the GPU presets' bf16 + compile); the rest as budget allows
        *[("inversion bf16 eager", 30, lambda: inversion_section("bf16", False))] * (False in compiles),
        *[("inversion bf16 compiled", 60, lambda: inversion_section("bf16", True))] * (True in compiles),
        *[("second worker", 40, lambda: second_worker(bench, min(batches)))] * (True in compiles),
        ("fan-out worker path", 30, lambda: fanout_path(bench, model, min(batches), True in compiles)),
        ("quality guard", 15, lambda: quality(bench, model, x0s[min(batches)][:n],
                                              torch.rand_like(x0s[min(batches)][:n]), 50)),
        *[("training compiled", 120, lambda: measure_training(bench, args.resolution, args.num_classes, True))]
        * (True in compiles),
        ("training eager", 15, lambda: measure_training(bench, args.resolution, args.num_classes, False)),
        *[("inversion fp32 eager", 30, lambda: inversion_section("fp32", False))] * (False in compiles),
        *[("inversion fp32 compiled", 60, lambda: inversion_section("fp32", True))] * (True in compiles),
    ]
    for what, needs_s, fn in sections:
        attempt(what, needs_s, fn)
    if not results or not peer:
        print("error: no inversion figure or no peer figure: nothing to compare (see the lines above)")
        return 1

    (precision, compile, batch), (best, raw) = max(
        (((p, c, b), r) for (p, c), by_batch in results.items() for b, r in by_batch.items()), key=lambda t: t[1][0])
    best_raw = max(r[1] for (p, c), by_batch in results.items() if (p, c) == (precision, compile)
                   for r in by_batch.values())
    print(f"best robrep: {precision}, compile {'on' if compile else 'off'}, batch {batch}: {describe(best)}")
    print(f"  vs the best raw loop of the same precision and compile: {best / best_raw:.3f}x (target >= 0.95)")
    print(f"  vs the peer's best ({peer:,.0f} image-steps/s): {best / peer:.2f}x (target >= 6.4x, >= 13,900 "
          "image-steps/s)")
    print(f"total {bench.elapsed():.0f} s")
    bench.record("summary", {"best": best, "setting": [precision, compile, batch], "vs_raw": best / best_raw,
                             "peer": peer, "ratio": best / peer, "seconds": bench.elapsed()})
    print(f"ratio: {best / peer:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
