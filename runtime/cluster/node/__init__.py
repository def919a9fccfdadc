"""A node: the daemon (`daemon`), its worker process (`worker`) and the
forwarding of job output to callers (`output`).

Nothing here imports `lucidity.cluster.client`: the node and the client meet
only on the wire (`lucidity.cluster.wire`). This package's `__init__` imports
nothing, so a worker (`python -m lucidity.cluster.node.worker`) starts light.
"""
