"""Keys folders, member keys and the loopback rule: no daemons needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lucidity.cluster.security import (
    add_member,
    check_bind,
    is_loopback,
    keygen,
    load_keys,
)
from lucidity.errors import KeysError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("tcp://127.0.0.1:3030", True),
        ("tcp://127.1.2.3:*", True),
        ("tcp://[::1]:3030", True),
        ("tcp://localhost:3030", True),
        ("ipc:///tmp/x/sock", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:3030", False),
        ("tcp://*:3030", False),
        ("tcp://[::]:3030", False),
        ("tcp://192.168.1.10:3030", False),
        ("tcp://eth0:3030", False),
        ("tcp://example.com:3030", False),
        ("ws://127.0.0.1:3030", False),
        ("nonsense", False),
    ],
)
def test_loopback(address: str, local: bool) -> None:
    assert is_loopback(address) is local


def test_keygen_makes_a_private_cluster_folder(tmp_path: Path) -> None:
    folder = keygen(tmp_path / "keys")
    assert _mode(folder) == 0o700
    assert _mode(folder / "authorized") == 0o700
    assert _mode(folder / "server.key_secret") == 0o600
    assert _mode(folder / "member.key_secret") == 0o600
    keys = load_keys(folder, server=True)
    assert keys.server_secret is not None
    assert (folder / "authorized" / "member.key").read_bytes() == (
        folder / "member.key"
    ).read_bytes()
    with pytest.raises(KeysError, match="already holds"):
        keygen(folder)


def test_member_folder_is_a_client_folder_only(tmp_path: Path) -> None:
    folder = keygen(tmp_path / "keys")
    alice = add_member(folder, "alice")
    assert alice == folder / "members" / "alice"
    assert _mode(alice) == 0o700
    assert not (alice / "server.key_secret").exists()
    keys = load_keys(alice)
    assert keys.server_secret is None
    assert keys.server_public == load_keys(folder).server_public
    assert (folder / "authorized" / "alice.key").exists()
    with pytest.raises(KeysError, match="server.key_secret"):
        load_keys(alice, server=True)
    with pytest.raises(KeysError, match="already has a member"):
        add_member(folder, "alice")
    with pytest.raises(KeysError, match="use letters"):
        add_member(folder, "../evil")


def test_missing_folder_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="lucidity keygen"):
        load_keys(tmp_path / "nowhere")


def test_open_bind_needs_keys_or_insecure(tmp_path: Path) -> None:
    check_bind("tcp://127.0.0.1:*", None, False, "node")
    with pytest.raises(SystemExit, match="refusing to listen on tcp://0.0.0.0"):
        check_bind("tcp://0.0.0.0:*", None, False, "node")
    check_bind("tcp://0.0.0.0:*", None, True, "node")
    keys = load_keys(keygen(tmp_path / "keys"), server=True)
    check_bind("tcp://0.0.0.0:*", keys, False, "node")


def test_keys_made_under_a_group_writable_umask_are_usable(tmp_path: Path) -> None:
    # umask 002 (user private groups) must not make keygen's own files fail
    # the check that authorized/ is not writable by others.
    old = os.umask(0o002)
    try:
        folder = keygen(tmp_path / "keys")
        add_member(folder, "dora")
    finally:
        os.umask(old)
    for key in (folder / "authorized").iterdir():
        assert not _mode(key) & 0o022, key
    assert load_keys(folder, server=True).server_secret is not None
