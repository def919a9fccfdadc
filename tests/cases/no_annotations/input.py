"""No annotations anywhere: parameters and result are `Any`."""

from lucidity import job


@job
def add(a, b=1):
    return a + b
