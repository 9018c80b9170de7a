"""A filesystem broker transport for embedded mode, safe for concurrent processes.

kombu's ``filesystem`` transport (5.7) writes a message file in place, so a
consumer polling the folder can read it before its bytes are written (seen
here as JSONDecodeError on an empty message). It also moves consumed files
with ``shutil.move`` to the system temporary folder, which copies when that is
another file system, so a consumer can read a copy still being written. This
subclass writes each message to a temporary name and renames it into the
folder (atomic on one file system), and claims a file by renaming it into a
``.claimed`` folder beside it, which exactly one consumer can do.

Register it with :func:`register`; the broker URL is then ``glfs://localhost/``.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

__all__ = ["SCHEME", "Channel", "Transport", "register"]

SCHEME = "glfs"


class Channel(filesystem.Channel):  # type: ignore[misc]
    """Filesystem channel with atomic publish and exclusive claim."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000)):015d}_{uuid.uuid4()}.{queue}.msg"
        staging = os.path.join(self.data_folder_out, ".staging")
        os.makedirs(staging, exist_ok=True)
        temporary = os.path.join(staging, name)
        with open(temporary, "wb") as handle:
            handle.write(str_to_bytes(dumps(payload)))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, os.path.join(self.data_folder_out, name))

    def _get(self, queue: str) -> Any:
        suffix = f".{queue}.msg"
        claimed = os.path.join(self.data_folder_in, ".claimed")
        os.makedirs(claimed, exist_ok=True)
        for name in sorted(os.listdir(self.data_folder_in)):
            if not name.endswith(suffix) or name.partition(".")[2] != f"{queue}.msg":
                continue
            target = os.path.join(claimed, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), target)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            with open(target, "rb") as handle:
                payload = handle.read()
            os.remove(target)
            return loads(bytes_to_str(payload))
        raise filesystem.Empty()


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel


def register() -> None:
    """Make ``glfs://`` broker URLs resolve to this transport."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
