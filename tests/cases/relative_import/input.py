"""A relative import is repeated as is: the stubs live in the same package."""

from lucidity import job

from .models import Shape


@job
def area(shape: Shape) -> float:
    return shape.width * shape.height
