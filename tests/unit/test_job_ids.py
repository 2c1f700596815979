"""Job ids, block settings and batches are derived from the kinds' declared parameters; the ids of existing stores
stay what they were (pinned on 2026-12-01, before kinds owned their parameters, from commit 50bc0d9)."""

import hashlib

import numpy as np
import pytest

from robrep.core.config import from_dict
from robrep.fanout.plan import FanoutSpec, ModelRef, SplitRef, pack, plan_jobs
from robrep.fanout.registry import KINDS, complete_rows, get_kind, run_settings, table_schema

MODELS = {"rob": ModelRef("rob", "/ck/rob", True, 1.2, 16, "a" * 64),
          "std": ModelRef("std", "/ck/std", False, 0.0, 16, "b" * 64)}
SPLIT = SplitRef("digits", "test", "/data/test.beton", (1, 16, 16), 10, "c" * 64)
LABELS = np.arange(40) % 10
BLOCKS = {
    "invert": {"kind": "invert", "inits": ["noise", "gray", "image"], "steps": 50, "step_size": 0.1},
    "invert_sweep": {"kind": "invert_sweep", "radii": [0.5, 2.0], "steps": 20},
    "pairs": {"kind": "pairs", "models": ["std"]},
    "visualize": {"kind": "visualize", "inits": ["gray", "image"], "coordinates": {"mode": "list", "values": [0, 3]}},
    "regularized_visualize": {"kind": "regularized_visualize", "coordinates": {"mode": "list", "values": [1, 2]}},
    "regularized_visualize_plain": {"kind": "regularized_visualize", "jitter": 0, "max_degrees": 0.0},
    "manipulate": {"kind": "manipulate", "coordinates": {"mode": "top", "n": 2}},
    "interpolate": {"kind": "interpolate", "lam_steps": 2},
    "top_activating": {"kind": "top_activating", "coordinates": {"mode": "list", "values": [0, 5]},
                       "images_per_end": 2},
}
# (jobs, digest of their ids, digest of the run's block settings, batches of 4), computed by the code before kinds
# declared their parameters: a store written then resumes, and its report keeps its figures.
GOLDEN = {
    ('invert', 'fp32'): (18, '637fd9c23a0493c8', '304ed0d5ab929708', 6),
    ('invert', 'bf16'): (18, '2dfbf98f2af33329', '704b4a4e2054beb2', 6),
    ('invert_sweep', 'fp32'): (12, '661212f5c197ac9a', 'b94242ea9623e5e1', 4),
    ('invert_sweep', 'bf16'): (12, '172dce1758206dee', 'cc1d24039c43670f', 4),
    ('pairs', 'fp32'): (3, '595e71142290c8de', '2c1943e4ee5e4544', 1),
    ('pairs', 'bf16'): (3, '7943d0ab9880f229', 'e87b83afb81e55dc', 1),
    ('visualize', 'fp32'): (16, '6b5e929835a47490', '2de9c0b9b2933542', 4),
    ('visualize', 'bf16'): (16, '06cd3918dfcd0f99', '9b3b44017d2c556b', 4),
    ('regularized_visualize', 'fp32'): (4, '0b7a9206f2b8affe', '85000465f5d63768', 2),
    ('regularized_visualize', 'bf16'): (4, 'c9e3f4e18dd21c46', 'aea5b8558375202b', 2),
    ('regularized_visualize_plain', 'fp32'): (8, '4fbdd07f8ef7bc1a', '61c1979a711d208d', 2),
    ('regularized_visualize_plain', 'bf16'): (8, '4b7c1cf9c877a92f', 'bef6c0273dfdcf79', 2),
    ('manipulate', 'fp32'): (12, '28327487e7e6e0ed', '0e60eeadb41afb0a', 4),
    ('manipulate', 'bf16'): (12, 'b2990bc3f8847187', '40dd262584b8e8bb', 4),
    ('interpolate', 'fp32'): (18, '7e96114b40f5ce00', '0fc81963bceec2f6', 6),
    ('interpolate', 'bf16'): (18, '6a714b81cd6b9246', '7c556e0385441c97', 6),
    ('top_activating', 'fp32'): (6, '5accfce7014790c8', 'd4d799a72484af53', 4),
    ('top_activating', 'bf16'): (6, '015675dfc5a40790', '68c053671037df15', 4),
}


def digest(values) -> str:
    return hashlib.sha256("\n".join(sorted(values)).encode()).hexdigest()[:16]


def plan(name: str, precision: str):
    fan = from_dict(FanoutSpec, {"models": ["rob", "std"], "indices": {"mode": "list", "values": [1, 2, 7]},
                                 "jobs": [BLOCKS[name]], "rng_seed": 3, "precision": precision}, "fanout.")
    return plan_jobs(fan, MODELS, SPLIT, LABELS)


@pytest.mark.parametrize(("name", "precision"), sorted(GOLDEN))
def test_job_ids_settings_and_batches_stay_as_they_were(name, precision):
    jobs = plan(name, precision)
    settings = [s for keys in run_settings(jobs).values() for s in keys]
    assert (len(jobs), digest(j.job_id for j in jobs), digest(settings), len(pack(jobs, 4))) == \
        GOLDEN[(name, precision)]


def test_every_kind_is_pinned():
    assert {name for name, _ in GOLDEN} >= set(KINDS) - {"representations"}  # top_activating plans those


def test_a_kinds_parameters_are_its_columns_and_the_others_defaults():
    jobs = plan("interpolate", "fp32") + plan("top_activating", "fp32")
    rows = complete_rows("results", [j.columns() for j in jobs if j.kind != "representations"])
    schema = table_schema("results")
    for row in rows:
        kind = get_kind(row["kind"])
        assert set(row) <= set(schema.names)
        own = {p.name for p in kind.params}
        assert ("lam" in own) == (row["kind"] == "interpolate") and ("images_per_end" in own) != ("lam" in own)
    lams = sorted(r["lam"] for r in rows if r["kind"] == "interpolate")
    assert lams[:3] == [0.0, 0.0, 0.0] and lams[-1] == 1.0
    assert all(r["images_per_end"] == 2 and r["coordinate"] in (0, 5) for r in rows if r["kind"] == "top_activating")
    assert all(r["images_per_end"] == 0 and r["coordinate"] == -1 for r in rows if r["kind"] == "interpolate")


def test_jobs_that_differ_in_a_batch_parameter_never_share_a_batch():
    a = get_kind("regularized_visualize").job(model_id="m", dataset="d", split="test", jitter=2, steps=5)
    b = get_kind("regularized_visualize").job(model_id="m", dataset="d", split="test", jitter=4, steps=5)
    c = get_kind("regularized_visualize").job(model_id="m", dataset="d", split="test", jitter=4, steps=5,
                                               coordinate=7)
    assert len(pack([a, b, c], 8)) == 2 and a.job_id != b.job_id != c.job_id
    with pytest.raises(AttributeError, match="has no parameter 'lam'"):
        _ = a.lam


@pytest.mark.parametrize("name", [k.name for k in KINDS.values() if k.fake_relu])
def test_a_fake_relu_kind_is_refused_for_a_model_it_does_not_apply_to(name):
    """visualize, regularized_visualize and manipulate run R(x) through the fake ReLU: a model whose R(x) follows
    no ReLU (ModelRef.no_fake_relu, read from its architecture) is refused at the door, naming the model; the other
    kinds plan on it as on any model."""
    from robrep.core.errors import ConfigError

    gelu = {**MODELS, "std": ModelRef("std", "/ck/std", False, 0.0, 16, "b" * 64, "fake_relu does not apply to x")}
    fan = from_dict(FanoutSpec, {"models": ["rob", "std"], "jobs": [BLOCKS[name]]}, "fanout.")
    with pytest.raises(ConfigError, match=f"fanout.jobs {name}: fake_relu does not apply to x; leave std out"):
        plan_jobs(fan, gelu, SPLIT, LABELS)
    assert plan_jobs(from_dict(FanoutSpec, {"models": ["rob", "std"], "jobs": [{**BLOCKS[name], "models": ["rob"]}]},
                               "fanout."), gelu, SPLIT, LABELS)
    assert plan_jobs(from_dict(FanoutSpec, {"models": ["rob", "std"], "jobs": [BLOCKS["invert"]]}, "fanout."),
                     gelu, SPLIT, LABELS)
