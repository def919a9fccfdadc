"""A job that returns nothing."""

from lucidity import job


@job
def log(message: str) -> None:
    print(message)
