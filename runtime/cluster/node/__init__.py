"""A node: `daemon` (composes the parts, owns the jobs in flight), `front`
(the clients' socket, header validation), `scheduler` (the pure policy),
`pool` (the worker processes), `bundles` (the bundle cache and fetches),
`output` (job output to its caller), `worker` (the worker process) and
`limits` (a job's memory and fuel, inside its worker).

Nothing here imports `lucidity.cluster.client`: the node and the client meet
only on the wire (`lucidity.cluster.wire`). This package's `__init__` imports
nothing, so a worker (`python -m lucidity.cluster.node.worker`) starts light.
"""
