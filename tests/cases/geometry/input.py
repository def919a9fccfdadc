"""The seed's example: `pythagorean` waits on two `square` children."""

from lucidity import job


@job
def square(a: int) -> int:
    return a * a


@job(fanout="random", memory=200 * 1024 * 1024)
def pythagorean(a: int, b: int) -> float:
    from app.geometry_jobs import square_remote_async

    sa, sb = square_remote_async(a), square_remote_async(b)
    return float((sa.await_get() + sb.await_get()) ** 0.5)
