"""CPU shares: `lucidity node --cpus` and the embedded cluster's split of
the machine (`lucidity.cluster._cpus`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lucidity
from lucidity.cluster._cpus import available, format_cpus, parse_cpus, split
from lucidity.cluster.client import get_client

WAIT_S = 20.0


@given(st.sets(st.integers(0, 300), min_size=1))
def test_a_cpu_list_is_formatted_as_ranges_and_read_back(cpus: set[int]) -> None:
    text = format_cpus(cpus)
    assert "--" not in text and " " not in text
    mine = cpus & available()
    if mine:
        assert parse_cpus(format_cpus(mine)) == mine


def test_format_joins_runs() -> None:
    assert format_cpus({0, 1, 2, 3, 6, 8, 9}) == "0-3,6,8-9"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is not a CPU list"),
        ("a-b", "is not a CPU list"),
        ("3-1", "'3-1' in '3-1' is not a CPU range"),
        ("-1", "is not a CPU list"),
        ("2-", "is not a CPU list"),
        ("0,100000", "CPU 100000 is not available here (this process may use "),
    ],
)
def test_bad_cpu_lists_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_cpus(text)
    assert needle in str(err.value)


@given(st.sets(st.integers(0, 63), min_size=1), st.integers(1, 8))
def test_split_gives_even_disjoint_shares_in_order(cpus: set[int], parts: int) -> None:
    shares = split(cpus, parts)
    if len(cpus) < parts:
        assert shares is None
        return
    assert shares is not None and len(shares) == parts
    assert [c for share in shares for c in share] == sorted(cpus)
    sizes = [len(share) for share in shares]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def _allowed(pid: int) -> set[str]:
    """Cpus_allowed_list of every thread of `pid`."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out.add(line.split()[1])
    return out


def test_a_node_and_its_workers_run_on_its_cpus(rt_daemons: Any) -> None:
    from lucidity_rtapp.work_jobs import cpus_remote

    cpu = min(available())
    control = rt_daemons.control()
    node = rt_daemons.node(control.endpoint, "--cpus", str(cpu))
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(1, timeout=WAIT_S)
    assert cpus_remote() == [cpu]
    assert _allowed(node.pid) == {str(cpu)}  # zmq's I/O thread too


@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_embedded_nodes_each_get_their_share_of_the_cpus() -> None:
    from lucidity.cluster.embedded import start_embedded

    before = os.sched_getaffinity(0)
    cluster = start_embedded(nodes=2)
    try:
        nodes = [d for d in cluster.daemons if "node" in d.proc.args]
        shares = split(available(), 2)
        got = [_allowed(d.proc.pid) for d in nodes]
        argv = [" ".join(map(str, d.proc.args)) for d in nodes]
        if shares is None:  # one CPU: nothing to split
            assert got == [{format_cpus(available())}] * 2
            assert not any("--cpus" in a for a in argv)
        else:
            assert got == [{format_cpus(share)} for share in shares]
            for a, share in zip(argv, shares, strict=True):
                assert f"--workers {len(share)}" in a
    finally:
        cluster.stop()
    assert os.sched_getaffinity(0) == before  # this process is not pinned
