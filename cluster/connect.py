"""Connect to Ray: an existing cluster (address) or a local one kept on loopback; a quiet console unless
asked otherwise (Ray's own per-report lines and worker logs go to Ray's log files under /tmp/ray)."""

from __future__ import annotations

import logging
import os

import ray

from robrep.core.errors import ConfigError

# A local Ray stays on loopback. 127.0.0.1 as node address is silently replaced by the external one,
# 127.0.0.2 is left alone; the dashboard listens on 127.0.0.1.
LOCAL_NODE_IP = "127.0.0.2"
DASHBOARD_HOST = "127.0.0.1"


def quiet_console() -> None:
    """Keep Ray's internal messages (Train's per-report lines, Tune's status tables, C++ core-worker lines)
    off the terminal; they stay in Ray's session logs."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def use_token_auth() -> None:
    """Ray's token authentication, unless the user set RAY_AUTH_MODE=disabled themselves: Ray 2.60 binds several
    services to all interfaces whatever the node address, so the token is the guard. The token is Ray's own
    (~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH), created on first use."""
    from ray._private.authentication import authentication_token_setup as auth

    if "RAY_AUTH_MODE" not in os.environ:
        auth._enable_token_auth()  # sets RAY_AUTH_MODE=token and refreshes the config Ray cached at import
    if os.environ["RAY_AUTH_MODE"] != "token" or "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ:
        return
    if not auth._get_default_token_path().is_file():
        auth.generate_and_save_token()


_LOCAL = {"started": False}  # whether this process started its own local Ray (no autoscaler will add a node)


def check_fits(request: dict[str, float], key: str, workers: int = 1) -> None:
    """ConfigError when this Ray cluster can never run `workers` workers of `request` ({"CPU": 1, "GPU": 0.5}, what
    `key` asks each for) at once: no node offers one worker's share, or all nodes together offer fewer shares than
    `workers`. Ray would wait for them without end. On a local Ray that is final; on a cluster an autoscaler may
    still add nodes, so it is one printed line and Ray waits."""
    need = {k: float(v) for k, v in request.items() if v > 0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    shares = [min((int(node.get(k, 0.0) / v + 1e-9) for k, v in need.items()), default=workers) for node in nodes]
    if sum(shares) >= workers:
        return
    largest = {k: max((node.get(k, 0.0) for node in nodes), default=0.0) for k in need}
    asked = ", ".join(f"{k} {v:g}" for k, v in need.items())
    offered = ", ".join(f"{k} {v:g}" for k, v in largest.items())
    message = (f"{key} asks for {workers} worker(s) of {asked} each at once, but this Ray cluster has room for "
               f"{sum(shares)} ({len(nodes)} node(s), the largest with {offered})")
    if _LOCAL["started"]:
        raise ConfigError(f"{message}; ask for less, or give the local Ray more with --set ray.num_cpus=N")
    print(f"[cluster] {message}: waiting for the autoscaler to add nodes", flush=True)


def connect(address: str | None, num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Join the cluster at `address` ("auto" under `ray job submit`), or start a local Ray when None.

    When the process already runs inside a Ray job (RAY_ADDRESS is set by `ray job submit`), that
    cluster is used whatever `address` says. verbose=False keeps Ray's own messages off the console.
    """
    if ray.is_initialized():
        return
    use_token_auth()
    if not verbose:
        quiet_console()
    if address is None and "RAY_ADDRESS" in os.environ:
        address = "auto"
    logging_level = "info" if verbose else "error"
    if address is not None:
        ray.init(address=address, log_to_driver=verbose, logging_level=logging_level)
        return
    # The metrics agent's Prometheus exporter binds to all interfaces for any node address but 127.0.0.1 (which
    # Ray replaces); a laptop's Ray has no Prometheus to serve, so it does not start one.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    # Ray starts its workers at niceness 15 (worker_niceness): on a small machine its own services at 0 then take
    # the CPU from a training worker and FFCV's threads (bench/train.py: 0.59 of a plain process). Workers at 0 run
    # as a plain process does, level with Ray's services (docs/cluster.md; the cluster configs set the same).
    os.environ.setdefault("RAY_worker_niceness", "0")
    _LOCAL["started"] = True
    ray.init(
        address="local",  # always a new local Ray; never attach to whatever cluster this machine ran last
        num_cpus=num_cpus,
        _node_ip_address=LOCAL_NODE_IP,
        include_dashboard=True,
        dashboard_host=DASHBOARD_HOST,
        configure_logging=True,
        logging_level=logging_level,
        log_to_driver=verbose,
    )
