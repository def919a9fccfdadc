"""`import lucidity as lu` + `@lu.job`, and `import lucidity` + `@lucidity.job`."""

import lucidity
import lucidity as lu


@lu.job(fuel=50, init_retry_interval_ms=250)
def total(values: list[int]) -> int:
    return sum(values)


@lucidity.job
def count(values: list[int]) -> int:
    return len(values)


def helper(values: list[int]) -> int:  # not a job
    return max(values)
