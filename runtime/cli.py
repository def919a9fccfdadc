"""`lucidity`: the daemons (`control`, `node`) and `status`.

The only place that configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

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
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="jobs run at once (default: the number of CPUs)",
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
    node.add_argument("--parent-pipe", action="store_true", help=argparse.SUPPRESS)

    status = sub.add_parser("status", help="print the nodes and their workers")
    status.add_argument(
        "--control",
        default=os.environ.get("LUCIDITY_CONTROL", DEFAULT_CONTROL),
        help="control address (default $LUCIDITY_CONTROL or " + DEFAULT_CONTROL + ")",
    )
    status.add_argument("--timeout-ms", type=_positive_ms, default=3.0)
    return parser


def _status(control: str, timeout: float) -> int:
    import zmq

    from lucidity import protocol as p

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(control)
        sock.send(p.encode(p.MsgType.SUBSCRIBE, {"once": True}))
        if not sock.poll(int(timeout * 1000)):
            print(
                f"lucidity status: no answer from control at {control} within "
                f"{timeout * 1000:.0f} ms",
                file=sys.stderr,
            )
            return 1
        msg = p.decode(sock.recv())
    except zmq.ZMQError as exc:
        print(
            f"lucidity status: cannot reach control at {control}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
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
    if args.command == "control":
        from lucidity.control import ControlDaemon

        ControlDaemon(args.bind, dead_after=args.dead_after_ms).run(
            parent_fd=0 if args.parent_pipe else None
        )
        return 0
    if args.command == "node":
        from lucidity.node import NodeDaemon

        NodeDaemon(
            args.bind,
            None if args.standalone else args.control,
            args.workers,
            heartbeat_s=args.heartbeat_ms,
            cache_dir=args.cache,
        ).run(parent_fd=0 if args.parent_pipe else None)
        return 0
    if args.command == "status":
        return _status(args.control, args.timeout_ms)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
