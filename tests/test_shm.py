"""Same-host shared memory for large buffers (lucidity.cluster.wire._shm, issue #5).

Units, on a private root folder in tmp: descriptors off the wire are
validated (no path leaves its directory), /dev/shm missing or full falls back
to frames, arguments map read-only, results private and writable, an echoed
argument points back at its own file.

Integration, on the real daemons of `rt_cluster`: large buffers and numpy
arrays round-trip, nothing is left in any shared-memory folder after a job,
a job retried after its worker was killed still finds its arguments, nodes
without shared memory get frames, and a node removes its folder when it stops.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from pickle import PickleBuffer
from typing import Any

import pytest

import lucidity
from lucidity.cluster.client import get_client
from lucidity.cluster.wire import _shm
from lucidity.cluster.wire import protocol as p

MIB = 1 << 20
WAIT_S = 20.0


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private stand-in for /dev/shm, and no node folder known yet."""
    path = tmp_path / "shm"
    path.mkdir()
    monkeypatch.setattr(_shm.folders, "SHM_ROOT", str(path))
    monkeypatch.setattr(_shm.folders, "_node_dir", _shm.folders._UNKNOWN)
    monkeypatch.delenv(_shm.NODE_DIR_ENV, raising=False)
    yield path
    for made in [d for d in _shm.folders._locks if d.startswith(str(path))]:
        _shm.remove_dir(made)  # and its lock


def _dir(kind: str = "c") -> str:
    path = _shm.make_dir(kind, "1234")
    assert path is not None
    return path


def _send(data: Any, directory: str) -> tuple[list[Any], list[str]]:
    """The payload a client on this host sends for `(data,)`, and its files."""
    out = _shm.Outbound(lambda: directory, "a")
    frames = p.dumps_payload((data,), out)
    return frames, out.written


def _names(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


# ---- descriptors -----------------------------------------------------------------

GOOD = {"dir": "lucidity-c12-0123456789ab", "name": "a1f-0123456789abcdef", "size": 5}


def test_descriptor_round_trips() -> None:
    desc = _shm.Descriptor(GOOD["dir"], GOOD["name"], 5)  # type: ignore[arg-type]
    assert json.loads(desc.encode()) == GOOD
    assert _shm.Descriptor.decode(desc.encode()) == desc


@pytest.mark.parametrize(
    "change",
    [
        {"dir": ".."},
        {"dir": "../etc"},
        {"dir": "/etc"},
        {"dir": "lucidity-c12-0123456789ab/.."},
        {"dir": "lucidity-c12-0123456789ab/lucidity-c12-0123456789ab"},
        {"dir": "other-c12-0123456789ab"},
        {"name": "../../etc/passwd"},
        {"name": "/etc/passwd"},
        {"name": "a1f-0123456789abcdef/../../x"},
        {"name": ".."},
        {"name": ""},
        {"name": "a1f-0123456789abcdef\x00"},
        {"size": 0},
        {"size": -1},
        {"size": "5"},
        {"size": True},
        {"size": 5.0},
        {"size": 1 << 60},
        {"extra": 1},
    ],
)
def test_descriptor_refuses_anything_but_a_plain_name(change: dict[str, Any]) -> None:
    with pytest.raises(_shm.ShmError):
        _shm.Descriptor.decode(json.dumps({**GOOD, **change}).encode())


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"[1, 2]",
        json.dumps({"dir": GOOD["dir"], "name": GOOD["name"]}).encode(),
        pickle.dumps(GOOD),
        json.dumps({**GOOD, "pad": "x" * 300}).encode(),
    ],
)
def test_descriptor_refuses_garbage(frame: bytes) -> None:
    with pytest.raises(_shm.ShmError):
        _shm.Descriptor.decode(frame)


def test_a_result_may_only_come_from_an_expected_folder(root: Path) -> None:
    frames, _ = _send(PickleBuffer(bytearray(2 * MIB)), _dir("n"))
    elsewhere = _shm.Inbound({"lucidity-n99-0123456789ab"}, writable=True)
    with pytest.raises(_shm.ShmError, match="unexpected directory"):
        p.loads_payload(frames, elsewhere)


def test_links_foreign_folders_and_wrong_sizes_are_refused(root: Path) -> None:
    directory = _dir()
    frames, [path] = _send(PickleBuffer(bytearray(2 * MIB)), directory)
    desc = _shm.Descriptor.decode(frames[2])

    def load(**change: Any) -> None:
        fields = {"dir": desc.dir, "name": desc.name, "size": desc.size, **change}
        frame = json.dumps(fields).encode()
        p.loads_payload([frames[0], frames[1], frame])

    # A link in place of the file, to a file outside the folder.
    outside = root / "secret"
    outside.write_bytes(b"x" * desc.size)
    link = "a1-00000000000000aa"
    os.symlink(outside, os.path.join(directory, link))
    with pytest.raises(_shm.ShmError):
        load(name=link)
    # A link in place of the folder, to a private folder.
    linked_dir = "lucidity-c1-00000000000b"
    os.symlink(directory, root / linked_dir)
    with pytest.raises(_shm.ShmError):
        load(dir=linked_dir)
    # A size that is not the file's, a file that is not there.
    with pytest.raises(_shm.ShmError, match="holds"):
        load(size=desc.size + 1)
    with pytest.raises(_shm.ShmError):
        load(name="a1-00000000000000bb")
    # A folder others may enter.
    os.chmod(directory, 0o755)
    with pytest.raises(_shm.ShmError, match="not private"):
        load()
    os.chmod(directory, 0o700)
    assert bytes(p.loads_payload(frames)[0]) == bytes(2 * MIB)
    assert os.path.exists(path)  # arguments are the caller's to unlink


def test_descriptors_from_another_host_are_refused(root: Path) -> None:
    frames, _ = _send(PickleBuffer(bytearray(2 * MIB)), _dir())
    manifest = json.loads(frames[0][3:])
    manifest["host"] = "another-boot-id"
    frames[0] = p.MANIFEST + json.dumps(manifest).encode()
    with pytest.raises(_shm.ShmError, match="another host"):
        p.loads_payload(frames)


@pytest.mark.parametrize("shm", [[1], [-1], [0, 0], "0", [True]])
def test_a_manifest_that_does_not_match_its_frames_is_a_frame_error(shm: Any) -> None:
    head = p.MANIFEST + json.dumps({"host": _shm.boot_id(), "shm": shm}).encode()
    with pytest.raises(p.FrameError):
        p.loads_payload([head, pickle.dumps(1, protocol=5), b"x"])


def test_usable_dir_is_a_private_lucidity_folder_under_the_root(root: Path) -> None:
    good = _dir("n")
    assert _shm.usable_dir(good)
    assert not _shm.usable_dir(good + "/")
    assert not _shm.usable_dir(os.path.join(good, ".."))
    assert not _shm.usable_dir(str(root / "lucidity-n1-0123456789ab"))  # missing
    (root / "unrelated").mkdir(mode=0o700)
    assert not _shm.usable_dir(str(root / "unrelated"))
    os.symlink(good, root / "lucidity-n2-0123456789ab")
    assert not _shm.usable_dir(str(root / "lucidity-n2-0123456789ab"))
    os.chmod(good, 0o750)
    assert not _shm.usable_dir(good)
    assert not _shm.usable_dir(None)


# ---- the path through shared memory ---------------------------------------------


def test_small_buffers_stay_frames(root: Path) -> None:
    directory = _dir()
    data = bytearray(b"s" * (_shm.THRESHOLD - 1))
    frames, written = _send(PickleBuffer(data), directory)
    assert written == [] and _names(directory) == []
    assert len(frames) == 2 and bytes(frames[1]) == data  # no manifest
    assert bytes(p.loads_payload(frames)[0]) == data


def test_arguments_arrive_read_only(root: Path) -> None:
    directory = _dir()
    data = bytearray(os.urandom(3 * MIB))
    frames, written = _send(PickleBuffer(data), directory)
    assert len(written) == 1 and len(frames[2]) < 200  # a descriptor, not the bytes
    assert os.stat(written[0]).st_mode & 0o777 == 0o600
    assert os.stat(directory).st_mode & 0o777 == 0o700
    (arg,), _ = p.loads_request(frames)
    view = memoryview(arg)
    assert view.readonly and bytes(view) == data
    with pytest.raises(TypeError):
        view[0] = 1
    data[0] ^= 0xFF  # the caller's own memory is not the file
    assert view[0] != data[0]


def test_numpy_arguments_arrive_read_only(root: Path) -> None:
    import numpy as np

    arr = np.arange(MIB, dtype=np.float64)
    frames, _ = _send(arr, _dir())
    (got,), _ = p.loads_request(frames)
    assert np.array_equal(got, arr) and not got.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 1.0


def test_results_map_private_and_writable_and_are_unlinked(root: Path) -> None:
    node = _dir("n")
    out = _shm.Outbound(lambda: node, "r")
    frames = p.dumps_payload(PickleBuffer(bytearray(b"r" * 2 * MIB)), out)
    [path] = out.written
    inbound = _shm.Inbound({os.path.basename(node)}, writable=True, unlink=True)
    value = p.loads_payload(frames, inbound)
    assert not os.path.exists(path)  # unlinked as soon as it was mapped
    view = memoryview(value)
    assert not view.readonly
    view[0] = ord("w")
    assert bytes(view[:2]) == b"wr"


def _fds_open_on(name: str) -> list[str]:
    """This process's descriptors open on a file called `name` (by /proc)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if os.path.basename(target.removesuffix(" (deleted)")) == name:
            out.append(fd)
    return out


def test_a_dropped_result_releases_its_file(root: Path) -> None:
    node = _dir("n")
    out = _shm.Outbound(lambda: node, "r")
    frames = p.dumps_payload(PickleBuffer(bytearray(2 * MIB)), out)
    [path] = out.written
    name = os.path.basename(path)
    value = p.loads_payload(frames, _shm.Inbound({os.path.basename(node)}, True, True))
    assert _fds_open_on(name)  # held until the result goes
    del value
    deadline = time.monotonic() + 5  # closed by the reaper thread
    while _fds_open_on(name) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _fds_open_on(name)


def test_an_echoed_argument_points_back_at_its_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, node = _dir("c"), _dir("n")
    monkeypatch.setenv(_shm.NODE_DIR_ENV, node)
    frames, [arg_file] = _send(PickleBuffer(bytearray(os.urandom(2 * MIB))), client)
    (arg,), reply = p.loads_request(frames, reply=True)
    assert reply is not None
    echoed = p.dumps_payload(PickleBuffer(arg), reply)
    assert bytes(echoed[2]) == bytes(frames[2])  # the same descriptor: no copy
    assert reply.written == [] and _names(node) == []
    # A new buffer of the same size is a new result file in the node's folder.
    fresh = p.dumps_payload(PickleBuffer(bytearray(bytes(arg))), reply)
    assert bytes(fresh[2]) != bytes(frames[2])
    assert [os.path.dirname(f) for f in reply.written] == [node]
    # The client maps its own file for the echo and leaves it to the job's end.
    own = _shm.Inbound(
        {os.path.basename(client), os.path.basename(node)},
        writable=True,
        unlink=True,
        keep={arg_file},
    )
    assert bytes(p.loads_payload(echoed, own)) == bytes(arg)
    assert os.path.exists(arg_file)
    assert bytes(p.loads_payload(fresh, own)) == bytes(arg)
    assert _names(node) == []


def test_no_reply_through_shm_unless_asked_and_the_node_has_a_folder(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames, _ = _send(b"small", _dir())
    # A worker of a node without a shared-memory folder answers in frames.
    assert p.loads_request(frames, reply=True)[1] is None
    monkeypatch.setattr(_shm.folders, "_node_dir", _shm.folders._UNKNOWN)
    monkeypatch.setenv(_shm.NODE_DIR_ENV, _dir("n"))
    assert p.loads_request(frames, reply=False)[1] is None
    assert p.loads_request(frames, reply=True)[1] is not None
    assert p.loads_request(p.dumps_payload((1,)))[1] is None


def test_discard_unlinks_results_but_never_the_callers_own_files(root: Path) -> None:
    client, node = _dir("c"), _dir("n")
    out = _shm.Outbound(lambda: node, "r")
    frames = p.dumps_payload([PickleBuffer(bytearray(2 * MIB))] * 2, out)
    names = {os.path.basename(client), os.path.basename(node)}
    keep = {out.written[1]}
    p.discard_payload(frames, _shm.Inbound(names, unlink=True, keep=keep))
    assert _names(node) == [os.path.basename(out.written[1])]


# ---- fallback -----------------------------------------------------------------------


def test_no_shm_folder_means_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shm.folders, "SHM_ROOT", str(tmp_path / "missing"))
    assert _shm.make_dir("c", "1") is None
    own = _shm.OwnFiles("1", None)
    out = _shm.Outbound(own.directory, "a")
    data = bytearray(os.urandom(2 * MIB))
    frames = p.dumps_payload((PickleBuffer(data),), out)
    assert out.written == [] and bytes(frames[1]) == data
    assert bytes(p.loads_payload(frames)[0]) == data
    own.close()


def test_a_full_shm_means_frames_and_no_partial_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_full(fd: int, data: memoryview) -> int:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_shm.descriptors, "_write_all", half_then_full)
    directory = _dir()
    data = bytearray(os.urandom(2 * MIB))
    frames, written = _send(PickleBuffer(data), directory)
    assert written == [] and _names(directory) == []
    assert len(frames) == 2 and bytes(frames[1]) == data  # no manifest
    assert bytes(p.loads_payload(frames)[0]) == data


def test_own_files_are_released_and_the_folder_removed(root: Path) -> None:
    own = _shm.OwnFiles("7", None)
    frames, written = _send(PickleBuffer(bytearray(2 * MIB)), own.directory() or "")
    own.adopt(written)
    directory = own.directory()
    assert directory is not None and _names(directory) != []
    own.close()
    assert not os.path.exists(directory)


def test_folders_of_killed_processes_are_swept_and_live_ones_kept(root: Path) -> None:
    code = (
        "import time; from lucidity.cluster.wire import _shm; "
        "print(_shm.make_dir('c', '99'), flush=True); time.sleep(60)"
    )
    env = {**os.environ, _shm.ROOT_ENV: str(root)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    try:
        dead, live = (proc.stdout.readline().decode().strip() for proc in procs)  # type: ignore[union-attr]
        assert os.path.isdir(dead) and os.path.isdir(live)
        Path(dead, "a1-0123456789abcdef").write_bytes(b"left behind")
        procs[0].kill()
        procs[0].wait(5)
        mine = _dir()
        assert not os.path.exists(dead)
        assert os.path.isdir(live) and os.path.isdir(mine)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()


# ---- with real daemons ---------------------------------------------------------------


def _folders(client: Any) -> list[str]:
    nodes = [n["shm"] for n in client.nodes() if "shm" in n]
    own = client._shm_own.directory()
    return [*nodes, *([own] if own else [])]


def _files_left(client: Any) -> list[str]:
    """Files in the shm folders of this client and its nodes, once the
    job-end callbacks (run just after the waiter wakes) had their turn."""
    deadline = time.monotonic() + 5
    while True:
        left = [os.path.join(d, f) for d in _folders(client) for f in os.listdir(d)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def test_the_cluster_offers_shm_on_this_host(rt_client: Any) -> None:
    nodes = get_client().nodes()
    assert len(nodes) == 2
    for n in nodes:
        assert n["host"] == _shm.boot_id()
        assert _shm.usable_dir(n["shm"])


def test_a_large_numpy_array_round_trips_intact(rt_client: Any) -> None:
    import numpy as np
    from lucidity_rtapp.buffers_jobs import echo_remote, inspect_remote

    arr = np.random.default_rng(5).standard_normal(2 * MIB)  # 16 MiB
    out = echo_remote(arr)
    assert out.shape == arr.shape and np.array_equal(out, arr)
    digest, writable, _ = inspect_remote(arr)
    assert digest == hashlib.sha256(arr).hexdigest()
    assert not writable  # the job cannot write to the caller's data
    assert _files_left(get_client()) == []


def test_large_buffers_travel_through_shm_both_ways(rt_client: Any) -> None:
    from lucidity_rtapp.buffers_jobs import (
        echo_buffer_remote,
        fill_remote,
        inspect_remote,
    )

    data = bytearray(os.urandom(4 * MIB))
    digest, writable, kind = inspect_remote(PickleBuffer(data))
    assert (digest, writable, kind) == (hashlib.sha256(data).hexdigest(), False, "mmap")
    assert bytes(echo_buffer_remote(PickleBuffer(data))) == data
    made = memoryview(fill_remote(3 * MIB, 7))
    assert not made.readonly and made.nbytes == 3 * MIB
    assert bytes(made[:4]) == b"\x07" * 4 and bytes(made[-4:]) == b"\x07" * 4
    assert _files_left(get_client()) == []


def test_an_echo_leaves_no_file_behind(rt_client: Any) -> None:
    from lucidity_rtapp.buffers_jobs import echo_buffer_remote

    client = get_client()
    data = bytearray(os.urandom(2 * MIB))
    for _ in range(4):
        assert bytes(echo_buffer_remote(PickleBuffer(data))) == data
    assert client._shm_own.name() is not None  # the arguments went through shm
    assert _files_left(client) == []
    assert not client._shm_own.live


def test_a_retried_job_still_gets_its_arguments(rt_client: Any, tmp_path: Path) -> None:
    from lucidity_rtapp.buffers_jobs import die_once_remote

    data = bytearray(os.urandom(2 * MIB))
    marker = tmp_path / "died"
    digest = die_once_remote(str(marker), PickleBuffer(data))
    assert marker.exists()  # the first run's worker was killed
    assert digest == hashlib.sha256(data).hexdigest()
    assert _files_left(get_client()) == []


def test_a_job_in_shared_memory_is_placed_only_on_this_host(
    rt_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its arguments were written to this host's shared memory; if, by the
    time it is placed (or placed again), no node of this host is left, it
    fails saying so instead of reaching a node that cannot read them."""
    from lucidity_rtapp.buffers_jobs import inspect_remote_async

    client = get_client()
    real = client._shm_node_dir
    calls = {"n": 0}

    def node_dir(node: dict[str, Any]) -> str | None:
        calls["n"] += 1  # writing the payload asks once per node; then "moved"
        return real(node) if calls["n"] <= len(client.nodes()) else None

    monkeypatch.setattr(client, "_shm_node_dir", node_dir)
    job = inspect_remote_async(PickleBuffer(bytearray(2 * MIB)))
    with pytest.raises(lucidity.ClusterError, match="no node on this host is left"):
        job.await_get(timeout=20)
    assert _files_left(client) == []


def test_nodes_without_shm_get_frames(rt_daemons: Any, tmp_path: Path) -> None:
    """Without shared memory, 24 MiB arguments and results go as frames: more
    than the node's link to its worker takes at once, so the node sends the
    rest as the worker drains it (`lucidity.cluster.wire._link`, never blocking on it).
    """
    from lucidity_rtapp.buffers_jobs import fill_remote_async, inspect_remote_async

    rt_daemons.env = {**rt_daemons.env, _shm.ROOT_ENV: str(tmp_path / "no-shm")}
    control = rt_daemons.control()
    rt_daemons.node(control.endpoint)
    lucidity.connect(control.endpoint)
    [node] = get_client().wait_for_nodes(1, timeout=WAIT_S)
    assert "shm" not in node
    data = os.urandom(24 * MIB)
    for _ in range(2):  # the link is usable after a partial send
        # Bounded: a send cut short would leave the worker waiting for the rest.
        job = inspect_remote_async(PickleBuffer(data))
        digest, writable, kind = job.result(timeout=WAIT_S)
        assert digest == hashlib.sha256(data).hexdigest()
        assert (writable, kind) == (False, "memoryview")  # a frame, not a mapping
    made = fill_remote_async(24 * MIB, 3).result(timeout=WAIT_S)
    assert bytes(made) == b"\x03" * (24 * MIB)


def test_a_node_removes_its_folder_when_it_stops(rt_daemons: Any) -> None:
    control = rt_daemons.control()
    node = rt_daemons.node(control.endpoint)
    lucidity.connect(control.endpoint)
    [info] = get_client().wait_for_nodes(1, timeout=WAIT_S)
    folder = info["shm"]
    assert os.path.isdir(folder)
    assert rt_daemons.stop(node) == []
    assert not os.path.exists(folder)
