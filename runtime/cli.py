"""`lucidity`: the daemons (`control`, `node`), `status` and `keygen`.

The only place that configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

__all__ = ["main"]

DEFAULT_CONTROL = "tcp://127.0.0.1:3030"
DEFAULT_NODE = "tcp://127.0.0.1:3031"


def _positive_ms(text: str) -> float:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of ms"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 ms")
    return value / 1000


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _worker_count(text: str) -> int:
    from lucidity.cluster.security import MAX_NODE_WORKERS

    value = _positive_int(text)
    if value > MAX_NODE_WORKERS:
        raise argparse.ArgumentTypeError(f"{text} must be <= {MAX_NODE_WORKERS}")
    return value


def _cpu_list(text: str) -> frozenset[int]:
    from lucidity.cluster._cpus import parse_cpus

    try:
        return parse_cpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_security(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--keys",
        metavar="DIR",
        default=os.environ.get("LUCIDITY_KEYS") or None,
        help="the cluster's keys folder, from `lucidity keygen` (default "
        "$LUCIDITY_KEYS, else this user's own, made on first use in "
        "$XDG_CONFIG_HOME/lucidity/keys): every connection is encrypted and "
        "only authorised members get in",
    )
    sub.add_argument(
        "--insecure",
        action="store_true",
        help="run without keys: anyone who can connect can run code here "
        "(clients then need LUCIDITY_INSECURE=1)",
    )
    sub.add_argument(
        "--max-message-mb",
        type=_positive_int,
        default=1024,
        help="drop peers that send a frame larger than this (default 1024)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucidity", description="lucidity's daemons and cluster tools"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LUCIDITY_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ctl = sub.add_parser("control", help="run the membership registry")
    ctl.add_argument(
        "--bind", default=DEFAULT_CONTROL, help=f"(default {DEFAULT_CONTROL})"
    )
    ctl.add_argument(
        "--dead-after-ms",
        type=_positive_ms,
        default=3.0,
        help="drop a node silent for this long (default 3000)",
    )
    _add_security(ctl)
    ctl.add_argument("--parent-pipe", action="store_true", help=argparse.SUPPRESS)

    node = sub.add_parser("node", help="run jobs in worker processes")
    node.add_argument(
        "--control",
        default=DEFAULT_CONTROL,
        help=f"control address (default {DEFAULT_CONTROL})",
    )
    node.add_argument(
        "--standalone", action="store_true", help="join no cluster (a private node)"
    )
    node.add_argument("--bind", default=DEFAULT_NODE, help=f"(default {DEFAULT_NODE})")
    node.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        help="jobs run at once (default: the number of CPUs, or of --cpus)",
    )
    node.add_argument(
        "--cpus",
        type=_cpu_list,
        default=None,
        help="run the node and its workers on these CPUs only, e.g. 0-3,6 "
        "(default: any)",
    )
    node.add_argument(
        "--heartbeat-ms",
        type=_positive_ms,
        default=0.5,
        help="heartbeat period to control (default 500)",
    )
    node.add_argument(
        "--cache",
        default=None,
        help="folder of fetched code bundles (default $LUCIDITY_CACHE or "
        "~/.cache/lucidity/bundles)",
    )
    _add_security(node)
    node.add_argument("--parent-pipe", action="store_true", help=argparse.SUPPRESS)

    status = sub.add_parser("status", help="print the nodes and their workers")
    status.add_argument(
        "--control",
        default=os.environ.get("LUCIDITY_CONTROL", DEFAULT_CONTROL),
        help="control address (default $LUCIDITY_CONTROL or " + DEFAULT_CONTROL + ")",
    )
    status.add_argument("--timeout-ms", type=_positive_ms, default=3.0)
    status.add_argument(
        "--engine",
        choices=("zmq", "ray"),
        default=os.environ.get("LUCIDITY_ENGINE") or "zmq",
        help="ray: print the nodes of the Ray cluster at $RAY_ADDRESS (or the "
        "local one) instead (default $LUCIDITY_ENGINE or zmq)",
    )
    status.add_argument(
        "--keys",
        metavar="DIR",
        default=os.environ.get("LUCIDITY_KEYS") or None,
        help="keys folder (default $LUCIDITY_KEYS, else this user's own)",
    )
    status.add_argument(
        "--insecure", action="store_true", help="ask a cluster run without keys"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="a live view (per node: workers, busy, queued, jobs/s, memory), "
        "refreshed in place on a terminal; Ctrl-C ends it",
    )
    status.add_argument(
        "--interval-ms",
        type=_positive_ms,
        default=1.0,
        help="with --watch: refresh period (default 1000)",
    )
    status.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        help="with --watch: stop after this many refreshes (default: never)",
    )

    keygen = sub.add_parser("keygen", help="make a cluster's CURVE keys")
    keygen.add_argument("dir", metavar="DIR", help="the keys folder (created 0700)")
    keygen.add_argument(
        "--member",
        metavar="NAME",
        help="add a member to DIR's cluster: writes DIR/members/NAME/ (copy it "
        "to the member) and authorises DIR/authorized/NAME.key",
    )
    return parser


def _status(control: str, timeout: float, keys_dir: str | None, insecure: bool) -> int:
    import zmq

    from lucidity.cluster import security as sec
    from lucidity.cluster.wire import protocol as p
    from lucidity.errors import AuthenticationError

    if keys_dir:
        keys: sec.Keys | None = sec.load_keys(keys_dir)
    else:
        keys = None if insecure else sec.default_keys()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        sec.secure_client(sock, keys)
    sec.set_max_message(sock, sec.client_max_message())
    refused: list[AuthenticationError] = []
    watch = sec.HandshakeWatch(sock, control, keys, refused.append)
    try:
        sock.connect(control)
        sock.send(p.encode(p.MsgType.SUBSCRIBE, {"once": True}))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(watch.monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while not refused and sock not in dict(poller.poll(0)):
            left = deadline - time.monotonic()
            if left <= 0:
                print(
                    f"lucidity status: no answer from control at {control} within "
                    f"{timeout * 1000:.0f} ms (is it running? does the cluster "
                    "use other keys: --keys DIR, or none: --insecure?)",
                    file=sys.stderr,
                )
                return 1
            if watch.monitor in dict(poller.poll(int(left * 1000) + 1)):
                watch.on_event()
        if refused:
            print(f"lucidity status: {refused[0]}", file=sys.stderr)
            return 1
        msg = p.decode(sock.recv())
    except zmq.ZMQError as exc:
        print(
            f"lucidity status: cannot reach control at {control}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        watch.close()
        sock.close(0)
        ctx.term()
    nodes = msg.header.get("nodes", [])
    rows: list[tuple[str, ...]] = [
        ("NODE", "ADDRESS", "PID", "WORKERS", "PROCS", "BUSY", "QUEUED")
    ]
    for n in nodes:
        rows.append(
            tuple(
                str(n.get(k, ""))
                for k in ("id", "addr", "pid", "workers", "procs", "busy", "queued")
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    print(f"{len(nodes)} node(s) at {control}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from lucidity.errors import KeysError

    try:
        return _dispatch(args)
    except KeysError as exc:
        print(f"lucidity {args.command}: {exc}", file=sys.stderr)
        return 2


def _security(args: argparse.Namespace) -> dict[str, Any]:
    from lucidity.cluster.security import default_keys, load_keys, warn_open

    if args.keys:
        keys = load_keys(args.keys, server=True)
    elif args.insecure:
        keys = None
        warn_open(args.bind, args.command)
    else:
        keys = default_keys(server=True)
    return {
        "keys": keys,
        "insecure": args.insecure,
        "max_message_mb": args.max_message_mb,
    }


def _watch(args: argparse.Namespace) -> int:
    from lucidity.cluster.security import Keys, default_keys, load_keys
    from lucidity.cluster.watch import Asker, watch
    from lucidity.errors import AuthenticationError

    # The same keys as `status` (and the daemons) by default: this user's own.
    keys: Keys | None
    if args.keys:
        keys = load_keys(args.keys)
    else:
        keys = None if args.insecure else default_keys()
    asker = Asker(args.control, keys, args.timeout_ms)
    try:
        return watch(asker, args.control, args.interval_ms, args.count)
    except AuthenticationError as exc:
        print(f"lucidity status: {exc}", file=sys.stderr)
        return 1
    finally:
        asker.close()


def _keygen(folder: str, member: str | None) -> int:
    from lucidity.cluster.security import add_member, keygen

    if member:
        target = add_member(folder, member)
        print(f"member {member!r} added: copy {target} to its machine and set")
        print(
            f"LUCIDITY_KEYS to it there; revoke with rm {folder}/authorized/{member}.key"
        )
    else:
        target = keygen(folder)
        print(f"cluster keys written to {target}: copy the folder to every machine,")
        print("then start daemons with --keys DIR and clients with LUCIDITY_KEYS=DIR")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "control":
        from lucidity.cluster.control import ControlDaemon

        ControlDaemon(args.bind, dead_after=args.dead_after_ms, **_security(args)).run(
            parent_fd=0 if args.parent_pipe else None
        )
        return 0
    if args.command == "node":
        from lucidity.cluster.node.daemon import NodeDaemon

        NodeDaemon(
            args.bind,
            None if args.standalone else args.control,
            args.workers or (len(args.cpus) if args.cpus else os.cpu_count() or 1),
            heartbeat_s=args.heartbeat_ms,
            cache_dir=args.cache,
            cpus=args.cpus,
            **_security(args),
        ).run(parent_fd=0 if args.parent_pipe else None)
        return 0
    if args.command == "status" and args.engine == "ray":
        from lucidity.ray.status import status as ray_status

        return ray_status()
    if args.command == "status" and args.watch:
        return _watch(args)
    if args.command == "status":
        return _status(args.control, args.timeout_ms, args.keys, args.insecure)
    if args.command == "keygen":
        return _keygen(args.dir, args.member)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
