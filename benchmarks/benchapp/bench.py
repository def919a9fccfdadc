"""Jobs the benchmark suite runs on lucidity (the same work every engine does).

`bench_jobs.py` beside this file is generated from it by `lucidity-gen`;
`benchmarks/run.py` regenerates it at the start of every run.
"""

from typing import Any

from lucidity import job


@job
def square(x: int) -> int:
    return x * x


@job(fanout="random")
def pythagorean(a: int, b: int) -> float:
    from benchapp.bench_jobs import square_remote_async

    sa, sb = square_remote_async(a), square_remote_async(b)
    return float((sa.await_get() + sb.await_get()) ** 0.5)


@job
def echo(value: Any) -> Any:
    return value
