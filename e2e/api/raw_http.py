"""Raw-socket HTTP for the adversarial suite (test_adversarial_*.py): requests written byte by byte (heads
without bodies, partial bodies, broken framing), answers read from the socket (interim 100 Continue
included), and the state of a connection (closed by the peer, data waiting, the kernel's TCP state).
"""

from __future__ import annotations

import select
import socket

from gs_helpers import TIMEOUT


def raw(port: int, head: str, body: bytes = b"", timeout: float = TIMEOUT) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(head.encode() + body)
    return s


def post_head(path: str, length: int, ctype: str = "application/json", extra: str = "") -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
            f"{extra}\r\n")


def _parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    return status, {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}


def read_head(s: socket.socket, timeout: float = TIMEOUT, buf: bytes = b"") -> tuple[int, dict, bytes]:
    """One answer head (status, lower-cased headers) and the bytes that came after it."""
    s.settimeout(timeout)
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    assert b"\r\n\r\n" in buf, f"no answer head (got {buf[:300]!r})"
    head, _, rest = buf.partition(b"\r\n\r\n")
    return (*_parse_head(head), rest)


def read_answer(s: socket.socket, timeout: float = TIMEOUT) -> tuple[int, dict, bytes]:
    """The final answer (an interim 100 Continue before it is skipped), its body read to Content-Length."""
    status, headers, rest = read_head(s, timeout)
    while status == 100:
        status, headers, rest = read_head(s, timeout, rest)
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def closed_by_peer(s: socket.socket, timeout: float = TIMEOUT) -> bool:
    """True once the peer has closed (EOF or reset); False if it is still open after `timeout`."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def has_data(s: socket.socket) -> bool:
    """Something (an answer, or the close) has arrived on `s`; does not wait."""
    readable, _, _ = select.select([s], [], [], 0)
    return bool(readable)


def tcp_state(local_port: int, remote_port: int) -> str | None:
    """The kernel's state of the TCP socket from `local_port` to `remote_port` on this host (hex code:
    01 ESTABLISHED; 04 FIN_WAIT1, closed by its owner with unsent data), or None when there is none."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == local_port and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                return cols[3]
    return None
