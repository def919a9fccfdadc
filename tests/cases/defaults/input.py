"""Literal defaults are repeated; positional-only parameters keep their `/`."""

from lucidity import job


@job
def scale(
    data: bytes,
    /,
    factor: float = -1.5,
    label: str = "x",
    raw: bytes = b"\x00",
    flags: tuple[int, ...] = (1, 2),
    limit: int | None = None,
    strict: bool = True,
) -> int:
    return len(data)
