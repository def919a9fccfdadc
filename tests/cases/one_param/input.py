"""One parameter: the fanout takes bare values, not 1-tuples."""

from lucidity import job


@job
def double(x: float) -> float:
    return 2 * x
