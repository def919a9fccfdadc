"""`job` under another name is still `lucidity.job`; a job's own body may
import its stubs without an import cycle."""

from lucidity import job as task


@task(fanout="roundrobin")  # the default: omitted from the JobRef
def greet(name: str) -> str:
    return f"hello {name}"


@task()
def shout(name: str) -> str:
    from aliased_import.mod_jobs import greet_local

    return greet_local(name).upper()
