"""`--shared-state redis://[user:password@]host:port[/db]` (or `rediss://` for TLS) and its password file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("redis", "rediss")


class SharedStateError(ValueError):
    pass


@dataclass(frozen=True)
class SharedStateSettings:
    #: the URL without its password (safe to log)
    url: str
    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None

    @property
    def client_url(self) -> str:
        """The URL the client connects with (the password travels separately)."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


def parse_shared_state(url: str, password_file: str = "") -> SharedStateSettings:
    """Check the URL and read the password file; every error names the flag and the fix."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise SharedStateError(f"--shared-state {url!r}: {exc}; use redis://[user:password@]host:port[/db]") from None
    if parts.scheme not in SCHEMES:
        raise SharedStateError(
            f"--shared-state {url!r}: scheme {parts.scheme or '(none)'!r} is not supported; use "
            "redis://[user:password@]host:port[/db] or rediss:// for TLS"
        )
    if not parts.hostname:
        raise SharedStateError(f"--shared-state {url!r}: no host; use redis://host:port[/db]")
    if parts.query or parts.fragment:
        raise SharedStateError(
            f"--shared-state {url!r}: query options are not supported; give only redis://[user:password@]host:port[/db]"
        )
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise SharedStateError(f"--shared-state {url!r}: the database {path!r} must be a number, e.g. /0")
    password = unquote(parts.password) if parts.password is not None else None
    if password_file:
        if password is not None:
            raise SharedStateError(
                "--shared-state-password-file and a password in the --shared-state URL are both given; give one"
            )
        try:
            password = Path(password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise SharedStateError(f"--shared-state-password-file {password_file}: cannot read it ({exc})") from None
        if not password:
            raise SharedStateError(f"--shared-state-password-file {password_file}: the file is empty")
    username = unquote(parts.username) if parts.username else None
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    shown_user = f"{username}:***@" if username and password else (f"{username}@" if username else "")
    if not username and password:
        shown_user = ":***@"
    shown = f"{parts.scheme}://{shown_user}{shown_host}:{port}/{int(path or 0)}"
    return SharedStateSettings(shown, host, port, int(path or 0), parts.scheme == "rediss", username, password)
