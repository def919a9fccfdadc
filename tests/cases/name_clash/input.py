"""Parameters named like the stubs' globals do not shadow them."""

from lucidity import job


@job
def f(_lucidity: int, _f: int, args_list: int, item: int) -> int:
    return _lucidity + _f + args_list + item
