"""`lucidity status --engine ray`: the nodes of the Ray cluster at
$RAY_ADDRESS (or the local one), as a table."""

from __future__ import annotations

import os
import sys

import ray

from lucidity.ray.shipping import LOOPBACK_HOSTS, keep_on_loopback, loopback, ray_nodes

__all__ = ["status"]


def status() -> int:
    """`lucidity status --engine ray`: Ray's nodes (connects, never starts one)."""
    address = os.environ.get("RAY_ADDRESS") or None
    if loopback(address):
        keep_on_loopback()
    try:
        ray.init(
            address=address or "auto",
            _node_ip_address=LOOPBACK_HOSTS[0] if loopback(address) else None,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        print(
            f"lucidity status: cannot reach Ray (RAY_ADDRESS): {exc}", file=sys.stderr
        )
        return 1
    try:
        nodes = ray_nodes()
    finally:
        ray.shutdown()
    rows = [("NODE", "ADDRESS", "HOST", "CPUS", "MEMORY MiB", "HEAD")]
    for n in nodes:
        rows.append(
            (
                n.id,
                n.address,
                str(n.extra.get("hostname", "")),
                str(n.slots),
                str(int(n.extra.get("memory", 0)) // 2**20),
                "yes" if n.extra.get("head") else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    print(f"{len(nodes)} Ray node(s)")
    return 0
