"""An `async def` job: the stubs look as a def job's do."""

import asyncio

from lucidity import job


@job
async def fetch(url: str, *, delay: float = 0.0) -> bytes:
    await asyncio.sleep(delay)
    return url.encode()
