"""Same-host shared memory for large out-of-band buffers (issue #5).

A pickle-5 buffer of at least THRESHOLD bytes, going to a process on this
host, is written to a file under SHM_ROOT (/dev/shm) and travels as a small
descriptor frame instead of its bytes; the receiver maps the file, as Ray's
object store does. This package owns the shared-memory side of that, one part per module:

* `folders`: the directories, directly under SHM_ROOT, mode 0700: a client's own
  (`lucidity-c<pid>-<random>`, removed when the client closes) and a node's
  (`lucidity-n<node id>-<random>`, removed when the node stops); the files in
  them are created exclusively, mode 0600;
* `descriptors`: the descriptor (`{"dir", "name", "size"}` as JSON, never a pickle) and its
  validation: a descriptor comes off the wire, so it may only name a plain
  file, owned by this user, inside a directory the receiver expects;
  writing a buffer out (None when /dev/shm is missing or full: the caller
  sends the bytes as a frame instead) and (`mapping`) mapping one back: read-only for a
  job's arguments, private and writable for a result;
* `policies`: `Outbound` and `Inbound`, the policies that `protocol.dumps_payload` and
  `protocol.loads_payload` apply to one payload.

Who removes what:

* argument files are written by the client (an app: into its own directory;
  a job calling jobs: into its node's directory) and unlinked by it when the
  job finishes, however it finishes, or when the client closes; until then a
  retry re-sends the same descriptors to another node;
* result files are written by the worker into its node's directory and
  unlinked by the client right after mapping them (or unread, when the job is
  already over); an echoed argument is not copied: its descriptor points back
  at the argument file;
* on SIGKILL: a killed app leaves its `lucidity-c*` directory with the
  argument files of its unfinished jobs; a killed node leaves its
  `lucidity-n*` directory with the results its clients had not picked up; a
  killed worker leaves files only inside its node's directory, which goes
  when the node stops. A result whose client never picks it up (the client
  died) also waits there for the node to stop. Each directory's owner holds
  an flock on it, which the kernel drops when the owner dies, so the next
  lucidity node or client to make a directory on this host removes the ones
  nobody holds (`_sweep`); until then they use memory.

The embedded cluster's folder of ipc sockets (`lucidity-s<pid>-<random>`,
under /tmp: `make_socket_dir`) is held and swept the same way, so neither a
SIGKILLed app nor a fork child that `os._exit`s leaves one behind for good.
"""

from lucidity.cluster.wire._shm import descriptors, folders, mapping, policies
from lucidity.cluster.wire._shm.descriptors import Descriptor, ShmError
from lucidity.cluster.wire._shm.folders import (
    NODE_DIR_ENV,
    ROOT_ENV,
    SHM_ROOT,
    boot_id,
    make_dir,
    make_socket_dir,
    node_dir_from_env,
    remove_dir,
    usable_dir,
)
from lucidity.cluster.wire._shm.policies import THRESHOLD, Inbound, Outbound, OwnFiles

__all__ = [
    "NODE_DIR_ENV",
    "ROOT_ENV",
    "SHM_ROOT",
    "THRESHOLD",
    "Descriptor",
    "Inbound",
    "Outbound",
    "OwnFiles",
    "ShmError",
    "boot_id",
    "descriptors",
    "folders",
    "make_dir",
    "make_socket_dir",
    "mapping",
    "node_dir_from_env",
    "policies",
    "remove_dir",
    "usable_dir",
]
