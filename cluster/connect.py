"""Connect to Ray: an existing cluster (address) or a local one kept on loopback."""

from __future__ import annotations

import os

import ray

# A local Ray stays on loopback. 127.0.0.1 as node address is silently replaced by the external one,
# 127.0.0.2 is left alone (shared/PITFALLS.md); the dashboard listens on 127.0.0.1.
LOCAL_NODE_IP = "127.0.0.2"
DASHBOARD_HOST = "127.0.0.1"


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` ("auto" under `ray job submit`), or start a local Ray when None.

    When the process already runs inside a Ray job (RAY_ADDRESS is set by `ray job submit`), that
    cluster is used whatever `address` says.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None and "RAY_ADDRESS" in os.environ:
        address = "auto"
    if address is not None:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        address="local",  # always a new local Ray; never attach to whatever cluster this machine ran last
        num_cpus=num_cpus,
        _node_ip_address=LOCAL_NODE_IP,
        include_dashboard=True,
        dashboard_host=DASHBOARD_HOST,
        configure_logging=True,
        logging_level="warning",
    )
