"""One module per engine; `python benchmarks/engines/child.py ENGINE ...` runs one.

Every engine module defines `NAME`, `LABEL`, `STARTUP_CODE` and a class
`Engine` with `setup()`, `teardown()` and one method per workload it can run
(`latency`, `fanout`, `nested`, `payload`); a workload it cannot run is simply
absent (reported as n/a).
"""
