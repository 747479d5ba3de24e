"""Runs `main.py` with every attempt to reach the network outside this machine refused and recorded.

Usage: `python tests/support/offline_guard.py LOG_FILE` (then main.py's usual environment). An audit hook sees each
`socket.connect`, `socket.sendto` and `socket.getaddrinfo` before it happens: loopback and Unix sockets pass, anything
else raises `PermissionError` and is appended to LOG_FILE. This needs no privileges (unlike `unshare -n`, which also
takes loopback away from the test client).
"""

from __future__ import annotations

import ipaddress
import runpy
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str) or host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name to resolve: that would be a DNS query
    return address.is_loopback or address.is_unspecified


def install(log_path: Path) -> None:
    def audit(event: str, args: tuple[object, ...]) -> None:
        if event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[-1]
            if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
                return
            host = address[0]
        elif event == "socket.getaddrinfo":
            host = args[0]
        else:
            return
        if not _is_local(host):
            with log_path.open("a") as log:
                log.write(f"{event} {host!r}\n")
            raise PermissionError(f"network access to {host!r} is not allowed in this test")

    sys.addaudithook(audit)


if __name__ == "__main__":
    install(Path(sys.argv.pop(1)))
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
