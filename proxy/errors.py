"""The exception classes of proxy/ (the CLI maps them to exit codes in cli/exitcodes.py).

proxy/ imports nothing of fs/, so these do not derive from fs.errors.UmbrafsError;
the messages follow the same rule: one line a user understands, never a key,
a passphrase or a kfrag in it.
"""
from __future__ import annotations


class ProxyError(Exception):
    """Base class: a problem of identities, grants or proxies, explained by its message."""


class IdentityError(ProxyError):
    """No such identity or contact, one that exists already, a damaged keyring file or public file."""


class WrongIdentityPassphrase(IdentityError):
    """The passphrase does not unwrap the identity's secret keys."""


class GrantError(ProxyError):
    """A grant that cannot be made as asked (threshold outside 1..N, no proxies, …)."""


class ProxyRequestError(ProxyError):
    """A proxy answered with an error status (4xx/5xx); ``status`` holds it."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url}: {status} {message}")
        self.url = url
        self.status = status
        self.message = message


class ProxyUnreachable(ProxyError):
    """Not enough proxies answered for the operation to succeed."""


class ProxyDown(ProxyUnreachable):
    """One proxy could not be reached (connection refused, timeout, not HTTP)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: unreachable ({reason})")
        self.url = url
        self.reason = reason


class AccessRevoked(ProxyError):
    """The grant was revoked at enough proxies that it can no longer be opened."""


class CapsuleError(ProxyError):
    """A capsule, or the ciphertext sealed with it, is damaged or belongs to another grant."""


class RecordChainBroken(ProxyError):
    """The proxy's hash-chained record does not verify; the message names the first bad row."""


class ShareError(ProxyError):
    """A share record in the vault that cannot be used as asked."""


class NoSuchShare(ShareError):
    """No share record with that id (or none matching a path and recipient)."""


class ShareRecordInvalid(ShareError):
    """A share record that does not parse or whose owner's signature does not verify."""
