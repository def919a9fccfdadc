"""No parameters: the fanout takes empty tuples."""

import os

from lucidity import job


@job(retries=2, timeout=30)
def hostname() -> str:
    return os.uname().nodename
