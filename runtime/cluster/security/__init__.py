"""Keys, authorised members, and the limits every network-facing socket gets.

A keys folder (`lucidity keygen DIR`) holds:

    server.key, server.key_secret   the cluster's CURVE keypair: every daemon's
                                    bound sockets (control, node) use it
    member.key, member.key_secret   a member keypair: clients, and daemons'
                                    outgoing connections (node -> control)
    authorized/*.key                the public keys allowed in

`lucidity keygen DIR --member NAME` adds a member: `DIR/members/NAME/` is a
complete client keys folder (the server's public key and NAME's keypair, no
server secret) and `DIR/authorized/NAME.key` lets it in. Revoking NAME is
deleting `authorized/NAME.key` on the daemons' machines: a daemon re-reads the
folder on every handshake, and checks the sender's key on every message it
receives against the folder as it is now (cached until the folder changes),
so a revoked member is refused new connections and its messages on open
connections are dropped, with no restart or signal.

Without `--keys` (or `$LUCIDITY_KEYS`), daemons, `lucidity status` and
clients all use this user's own keys folder, `$XDG_CONFIG_HOME/lucidity/keys`
(default `~/.config/lucidity/keys`), made 0700 on first use: a hand-started
cluster is closed to other local users, and its own user notices nothing.
`--insecure` (daemons, status) or `LUCIDITY_INSECURE=1` (clients) runs open.
Secret keys readable by group or others, and an `authorized/` folder or key
that others may write, are refused.

Daemons run a `zmq.auth.ThreadAuthenticator` (the ZAP handler) on their
context. Clients watch each socket's handshake through a socket monitor, so a
refused client fails within moments with a message saying why, never hangs.

This package, one role per module:

* `keys`: keys folders on disk (`keygen`, `add_member`, the default folder,
  `load_keys` and its permission checks, reading `authorized/`);
* `sockets`: CURVE setup of server and client sockets, and the limits (the
  largest frame, the most workers a node may announce);
* `binding`: which addresses may be bound without keys, the --insecure warnings;
* `guard`: a daemon's side (the ZAP handler `Authorizer`, and `Guard`);
* `handshake`: a client's side (`HandshakeWatch` and its refusal messages).

`keys` imports none of the others; `sockets` and `binding` import only `keys`;
`guard` and `handshake` import those. The names below are the package's API:
import them from `lucidity.cluster.security`.
"""

from lucidity.cluster.security.binding import (
    check_bind,
    is_loopback,
    is_private_ipc,
    warn_open,
)
from lucidity.cluster.security.guard import Authorizer, Guard
from lucidity.cluster.security.handshake import HANDSHAKE_EVENTS, HandshakeWatch
from lucidity.cluster.security.keys import (
    INSECURE_ENV,
    KEYS_ENV,
    Keys,
    add_member,
    default_keys,
    default_keys_dir,
    keygen,
    keys_from_env,
    load_keys,
)
from lucidity.cluster.security.sockets import (
    DEFAULT_MAX_MESSAGE_MB,
    MAX_MESSAGE_ENV,
    MAX_NODE_WORKERS,
    client_max_message,
    secure_client,
    secure_server,
    set_max_message,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_MB",
    "HANDSHAKE_EVENTS",
    "INSECURE_ENV",
    "KEYS_ENV",
    "MAX_MESSAGE_ENV",
    "MAX_NODE_WORKERS",
    "Authorizer",
    "Guard",
    "HandshakeWatch",
    "Keys",
    "add_member",
    "check_bind",
    "client_max_message",
    "default_keys",
    "default_keys_dir",
    "is_loopback",
    "is_private_ipc",
    "warn_open",
    "keygen",
    "keys_from_env",
    "load_keys",
    "secure_client",
    "secure_server",
    "set_max_message",
]
