"""The wire: what the client, control, node and worker processes share.

`protocol` (message types and framing), `_link` (the node-worker socketpair),
`_loop` (the event loop the daemons and the client's I/O thread run) and
`_shm` (same-host shared memory for large buffers). Nothing here imports the
client or the node: both sides import the wire, never each other.
"""
