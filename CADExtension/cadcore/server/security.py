"""The server's token and bind checks: who may call, and whether the address is private to this machine.

The token is the only credential: it is compared in constant time (:func:`hmac.compare_digest`), never logged, and a
generated one is written to a file only its owner can read (created 0600, never widened afterwards).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from cadcore.errors import CadError

DEFAULT_TOKEN_FILE = Path("~/.cache/cadextension/server-token")
TOKEN_FILE_VARIABLE = "CAD_SERVER_TOKEN_FILE"


def default_token_file() -> Path:
    """``$CAD_SERVER_TOKEN_FILE`` when set, else ``~/.cache/cadextension/server-token``."""
    return Path(os.environ.get(TOKEN_FILE_VARIABLE) or DEFAULT_TOKEN_FILE).expanduser()


def read_token(path: str | Path) -> str:
    """The token of an existing file (its first line, stripped); a missing, unreadable or empty file is refused."""
    path = Path(path)
    if not path.is_file():
        raise CadError("token file not found", path)
    try:
        token = path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise CadError(f"cannot read the token file ({exc})", path) from exc
    if len(token) < 16:
        raise CadError("the token file's first line must hold a token of at least 16 characters", path)
    return token


def write_new_token(path: str | Path) -> str:
    """A fresh random token written to ``path`` with mode 0600 (created so, then renamed over any older file, so an
    old file's wider mode never carries over)."""
    path = Path(path)
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, f"{token}\n".encode())
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)  # the umask can only narrow the mode; this states it whatever the umask
        os.replace(tmp, path)
    except OSError as exc:
        raise CadError(f"cannot write the token file: {exc.strerror or exc}", path) from exc
    return token


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time (bytes, so a non-ASCII header cannot raise)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); a host name or a wildcard is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
