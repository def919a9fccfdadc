"""The ZeroMQ engine: control and node daemons, the client that reaches them.

What lives where:

- `client/`: the caller's side (the `Client` I/O thread, the fast path, the
  process singleton that `lucidity.connect` sets up).
- `node/`: a node daemon (`daemon`, composing `front`, `scheduler`, `pool`,
  `bundles` and `output`) and its worker process (`worker`, run as
  `python -m lucidity.cluster.node.worker`, with its `limits`).
- `wire/`: what client, control, node and worker share: the message format
  (`protocol`), the node-worker socketpair (`_link`), the event loop (`_loop`)
  and same-host shared memory (`_shm/`).
- `control.py` (the membership daemon), `embedded.py` (a private cluster in
  this process's children), `security/` (CURVE keys and membership),
  `watch.py` (`lucidity status --watch`), and the daemons' shared helpers
  (`_daemon`, `_cpus`, `_liveness`).

Engine-neutral code (the top-level `lucidity` modules) never imports this
package at import time; it reaches it only through `lucidity.engine`.
Importing `lucidity.cluster` itself loads nothing (no ZeroMQ).
"""
