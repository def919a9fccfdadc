"""How a process reaches Ray (and sees its nodes), and how a job's code
reaches Ray's workers.

Connection: `RAY_ADDRESS` (or the address given to `connect`), else what a
plain `ray.init()` starts; a loopback address (or a local Ray) is kept on
127.0.0.1, which Ray otherwise resolves to the machine's network address.

Code: a job's package travels as its `bundle.build_bundle` zip, uploaded
once to Ray's GCS under its digest and named as a `py_modules` URI in the
task's `runtime_env` (a Ray worker serves one runtime_env, so two versions
never share a process); nested jobs inherit it (SHIPPED_ENV says which).
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray._private import ray_constants
from ray._private.runtime_env import packaging

from lucidity.bundle import Bundle, build_bundle
from lucidity.engine import NodeInfo, Target

__all__ = [
    "LOOPBACK_HOSTS",
    "SHIPPED_ENV",
    "CodeShipper",
    "init_args",
    "keep_on_loopback",
    "loopback",
    "ray_nodes",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# Packages whose bundles this process's runtime_env already holds (a Ray
# worker's: its nested jobs inherit them): "pkg=digest,..." .
SHIPPED_ENV = "LUCIDITY_RAY_SHIPPED"


def loopback(address: str | None) -> bool:
    """Whether `address` (None: a local Ray) is on this machine's loopback."""
    if address is None:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def keep_on_loopback() -> None:
    """Keep 127.0.0.1 as Ray's node address: Ray otherwise resolves it to the
    machine's network address. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's
    switch for that (it also refuses a second node); Ray reads it when it is
    imported, so this process's copy is set too. A value the user set wins."""
    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    value = os.environ.setdefault(name, "0")
    ray_constants.ENABLE_RAY_CLUSTER = value.lower() in ("1", "true")


def init_args(address: str | None) -> dict[str, Any]:
    """`ray.init`'s arguments for `address` (None: a new local Ray)."""
    kwargs: dict[str, Any] = {"address": address}
    if loopback(address):
        keep_on_loopback()
        kwargs["_node_ip_address"] = LOOPBACK_HOSTS[0]
    if address is None:
        kwargs["include_dashboard"] = False
    return kwargs


def _upload(bundle: Bundle) -> str:
    """The bundle's URI in Ray's GCS, uploaded once per cluster: the zip's
    top level is the package, which is what Ray's py_modules unpack wants."""
    uri = f"gcs://_lucidity_{bundle.package}_{bundle.digest}.zip"
    if not packaging.package_exists(uri):
        packaging.upload_package_to_gcs(uri, bundle.data)
    return uri


class CodeShipper:
    """The runtime_env that ships a job's package, one per top-level package."""

    def __init__(self) -> None:
        shipped = os.environ.get(SHIPPED_ENV, "")
        self._inherited = {s.partition("=")[0] for s in shipped.split(",") if s}
        self._envs: dict[str, tuple[str, dict[str, Any]] | None] = {}

    def env(self, target: Target) -> tuple[str, dict[str, Any]] | None:
        """(key, runtime_env) shipping the job's package, or None (nothing to
        ship: installed, or already in this worker's inherited runtime_env)."""
        if isinstance(target, str):
            module = target.partition(":")[0]
        else:
            module = getattr(getattr(target, "func", target), "__module__", "")
        top = module.split(".", 1)[0]
        try:
            return self._envs[top]
        except KeyError:
            pass
        env: tuple[str, dict[str, Any]] | None = None
        bundle = None if top in self._inherited else build_bundle(module)
        if bundle is not None:
            env = (
                bundle.digest,
                {
                    "py_modules": [_upload(bundle)],
                    "env_vars": {SHIPPED_ENV: f"{top}={bundle.digest}"},
                },
            )
        self._envs[top] = env
        return env


def ray_nodes() -> list[NodeInfo]:
    """Ray's live nodes (Ray has at least the one this process joined)."""
    out = []
    for n in ray.nodes():  # type: ignore[no-untyped-call]
        if not n.get("Alive"):
            continue
        resources = n.get("Resources", {})
        out.append(
            NodeInfo(
                id=str(n["NodeID"]),
                address=f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}",
                slots=int(resources.get("CPU", 0)),
                extra={
                    "hostname": n.get("NodeManagerHostname", ""),
                    "memory": int(resources.get("memory", 0)),
                    "object_store_memory": int(resources.get("object_store_memory", 0)),
                    "head": "node:__internal_head__" in resources,
                },
            )
        )
    return out
