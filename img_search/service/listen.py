"""Can the service listen where it is told to? Checked before anything is loaded.

uvicorn runs the application's lifespan (catalog, index, models: seconds to minutes) before it binds its socket, so a
port in use or a host that is not this machine's would only show after that, as a logged ``OSError`` and exit code 3.
``check_listen_address`` binds the same sockets uvicorn will (asyncio's ``create_server``: every address
``getaddrinfo`` gives for the host, ``SO_REUSEADDR`` set, IPv6 sockets IPv6-only) and closes them at once, so the
command can refuse in one line first. Another program can still take the port in the moment between the check and
uvicorn's bind; uvicorn then reports it as before.
"""

from __future__ import annotations

import errno
import socket
from contextlib import ExitStack

from img_search.errors import ConflictError, ImgSearchError, UnavailableError


def check_listen_address(host: str, port: int) -> None:
    """Bind (host, port) the way uvicorn will, then release it.

    ``host``: a name or an IP address ('' or 0.0.0.0: every IPv4 interface); ``port``: 1-65535 (0 is not checked:
    the system picks a free port). Raises ``ConflictError`` when the port is in use, ``UnavailableError`` when the
    host does not resolve, is not an address of this machine, or the port needs privileges.
    """
    where = f"{host or '0.0.0.0'}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        detail = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else "not a valid host name"
        raise UnavailableError(f"cannot listen on {where}: host {host!r} does not resolve ({detail}); give an IP "
                               "address of this machine (127.0.0.1: this machine only; 0.0.0.0: every interface) "
                               "or a name it resolves") from None
    with ExitStack() as stack:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = stack.enter_context(socket.socket(family, kind, proto))
            except OSError:
                continue  # a family this system cannot open: asyncio skips it too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise _bind_error(where, port, exc) from None


def _bind_error(where: str, port: int, exc: OSError) -> ImgSearchError:
    if exc.errno == errno.EADDRINUSE:
        return ConflictError(f"cannot listen on {where}: the port is already in use (another `img-search serve`?); "
                             "stop that program or choose another --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return UnavailableError(f"cannot listen on {where}: the host is not an address of this machine; use "
                                "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = "ports below 1024 need root; choose --port 1024 or above" if port < 1024 else "permission denied"
        return UnavailableError(f"cannot listen on {where}: {hint}")
    return UnavailableError(f"cannot listen on {where}: {(exc.strerror or str(exc)).lower()}")
