"""Payload encoding: a job's SUBMIT frames, and the shared-memory policy.

`encode_callable` turns a callable target (Executor, joblib) into what the
wire takes; `_Payloads` builds a job's frames (its header cached per kind of
job, its arguments pickled, large buffers through this host's shared memory
when every node shares it) and its `_Pending` record. Owns `_heads`, `_ids`
and the `_shm_*` state (made in `state`); sends nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from lucidity._options import JobOptions
from lucidity.cluster.client.bundles import _Bundles
from lucidity.cluster.client.pending import _Pending
from lucidity.cluster.wire import _shm
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire.protocol import forwarding
from lucidity.handle import child_depth

__all__ = ["_Payloads", "encode_callable"]

log = logging.getLogger("lucidity.cluster.client")


def encode_callable(fn: Callable[..., Any], args: Any) -> tuple[str, Any]:
    """A callable target (Executor, joblib) and its arguments as the wire
    takes them: a module-level function or class by reference, as a job is
    ("pkg.mod:name", shipped by its package); anything else (a bound method,
    a partial, an instance) pickled ahead of its arguments, named
    "<pickled>:MODULE:NAME" for logs and for the package to ship."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str) and module != "__main__":
        obj: Any = sys.modules.get(module)
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is fn:
            return f"{module}:{name}", args
    inner = fn.func if isinstance(fn, functools.partial) else fn
    module = getattr(inner, "__module__", None) or "builtins"
    name = getattr(inner, "__qualname__", type(inner).__qualname__)
    if module.partition(".")[0] == "lucidity":
        module = "builtins"  # lucidity is installed where workers run
    return f"{p.PICKLED_TARGET}:{module}:{name}", (fn, args)


class _Payloads(_Bundles):
    """SUBMIT frames and argument files (see the module docstring)."""

    def _new_job(
        self,
        target: str,
        options: JobOptions,
        args: Any,
        batch: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[int, list[Any], list[str] | None]:
        """The job's id, its SUBMIT frames, and the shared-memory files of its
        arguments (then only a node on this host can run it).

        Keyword arguments travel with the positional ones, `(args, kwargs)`,
        under a "kw" header; without any the payload is `args` alone, as
        positional calls (the hot path) always had it."""
        job_id = next(self._ids)
        kw = bool(kwargs)
        payload, shared, files = self._dumps_args((args, kwargs) if kw else args)
        depth = child_depth()
        # By the options' identity (hashing a dataclass costs a tuple of its
        # fields each time); the entry holds them, so the id stays theirs.
        key = (target, id(options), batch, depth, shared, kw)
        entry = self._heads.get(key)
        if entry is None:
            if len(self._heads) >= 1024:
                self._heads.clear()  # a bound, for apps of many job kinds
            head = self._submit_head(target, options, batch, depth, shared, kw)
            entry = self._heads[key] = (options, head)
        return job_id, [p.with_id(entry[1], job_id), *payload], files

    def _submit_head(
        self,
        target: str,
        options: JobOptions,
        batch: str | None,
        depth: int | None,
        shared: bool,
        kw: bool = False,
    ) -> bytes:
        """The SUBMIT header of a kind of job, but for its id."""
        header: dict[str, Any] = {"target": target}
        if batch is not None:
            # `args` is a list of items; see worker._run_batch.
            header["batch"] = batch
        if depth is not None:
            header["depth"] = depth
        if options.async_set_retry_interval_ms != 100:
            header["set_ms"] = options.async_set_retry_interval_ms
        bundle = self._bundle(target)
        if bundle is not None:
            header["bundle"] = bundle.digest
        if options.memory is not None:
            header["memory"] = options.memory
        if options.fuel is not None:
            header["fuel"] = options.fuel
        if shared:
            header["shm"] = 1  # answer through shared memory too
        # A result over it would make our socket drop the node's connection:
        # the node answers with an error instead.
        header["max_mb"] = self._max_mb
        if not forwarding():
            header["quiet"] = 1  # its output stays in its node's log
        if kw:
            header["kw"] = 1  # the payload is (args, kwargs)
        return p.encode(p.MsgType.SUBMIT, header)

    def _dumps_args(self, args: Any) -> tuple[list[Any], bool, list[str] | None]:
        """The payload of a job's arguments, whether every node shares this
        host, and the shared-memory files the payload names (if any).

        When every node shares this host, large buffers go through shared
        memory and the worker is asked to answer the same way. Nodes are
        chosen later (and a retry may pick another), so it is all or none.
        The files are this client's until the job is over, however it ends:
        a retry re-sends the same descriptors.
        """
        nodes = self._nodes
        known, shared = self._shm_all
        if known is not nodes:
            shared = bool(nodes) and all(self._shm_node_dir(n) for n in nodes)
            self._shm_all = (nodes, shared)
        if not shared:
            return p.dumps_payload(args), False, None
        out = _shm.Outbound(self._shm_own.directory, "a")
        frames = p.dumps_payload(args, out)
        if out.written:
            self._shm_own.adopt(out.written)  # released by the job's handle
        return frames, True, out.written or None

    def _shm_node_dir(self, node: dict[str, Any]) -> str | None:
        """`node`'s shared-memory directory, if it is on this host (same boot
        id) and this process can use the directory; else None."""
        path, host = node.get("shm"), node.get("host")
        if path is None and node.get("addr") == os.environ.get("LUCIDITY_NODE"):
            # A worker of a standalone node knows its node from its environment.
            path, host = _shm.node_dir_from_env(), _shm.boot_id()
        if not isinstance(path, str) or host is None or host != _shm.boot_id():
            return None
        usable = self._shm_dirs.get(path)
        if usable is None:
            usable = self._shm_dirs[path] = _shm.usable_dir(path)
            if usable:
                self._shm_names = self._shm_names | {os.path.basename(path)}
        return path if usable else None

    def _shm_inbound(self) -> _shm.Inbound:
        """How a result's descriptors are taken: from a node's directory (the
        file is unlinked once mapped) or, for an echoed argument, our own;
        mapped private and writable."""
        names = self._shm_names
        own = self._shm_own.name()
        if own is not None:
            names = names | {own}
        return _shm.Inbound(names, writable=True, unlink=True, keep=self._shm_own.live)

    def _pending(
        self,
        target: str,
        options: JobOptions,
        args: Any,
        local: bool,
        addr: str | None,
        blocking: bool,
        batch: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> _Pending:
        """A new job's record, its frames built (`submit` and `run`)."""
        job_id, frames, files = self._new_job(target, options, args, batch, kwargs)
        if local:
            addr = self.local_node()
        return _Pending(
            self, job_id, target, frames, options, local, addr, blocking, files
        )
