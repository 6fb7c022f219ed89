"""Exit codes of `umbrafs`, in one table (documented in docs/operations.md)."""
from __future__ import annotations

from fs.errors import (
    FuseUnavailable,
    IntegrityError,
    MountpointError,
    NotAVault,
    UmbrafsError,
    UnsupportedFormat,
    VaultExists,
    WrongPassphrase,
)
from fs.vault.rotate.engine import RotationError
from wire.errors import AuditUnavailable, DaemonUnavailable, WireError
from daemon.policy import PolicyError
from ledger.errors import LedgerError, LedgerTampered
from proxy import errors as proxy_errors

OK = 0
ERROR = 1  # anything not listed below
USAGE = 2  # bad arguments (click's own code)
WRONG_PASSPHRASE = 10
NOT_A_VAULT = 11  # missing path, not a vault, damaged vault.json
VAULT_EXISTS = 12  # init into a non-empty directory
UNSUPPORTED_FORMAT = 13  # written by a newer umbrafs
MOUNTPOINT = 14  # missing, not a dir, not empty, busy, already mounted, not mounted
FUSE_UNAVAILABLE = 15  # /dev/fuse or fusermount3 missing or unusable
DAMAGE = 16  # fsck found damage; an integrity error
RESTORE_INCOMPLETE = 17  # restore: a version was no longer kept, or a step was skipped or failed
AUDIT_UNAVAILABLE = 20  # --audit required and no daemon; daemon not running (daemon status/stop)
LEDGER_INVALID = 21  # audit verify found tampering or damage
POLICY_INVALID = 22  # the vault's policy file is unsigned, forged or malformed
# Sharing (proxy/): a wrong identity passphrase is WRONG_PASSPHRASE (10), a damaged capsule DAMAGE (16),
# a broken proxy record LEDGER_INVALID (21).
IDENTITY = 30  # no such identity or contact, name taken, damaged keyring or public-identity file
PROXY_UNREACHABLE = 31  # too few proxies reachable ("only K of M proxies reachable")
ACCESS_REVOKED = 32  # the grant was revoked at enough proxies
PROXY_REFUSED = 33  # a proxy refused the request (401/403/404/409/4xx/5xx)
GRANT_INVALID = 34  # threshold outside 1..N, no or duplicate proxies, bad grant id, grant not stored
ROTATION_INCOMPLETE = 35  # revoke --rotate stopped (journal kept: `revoke --resume` finishes it)

_BY_CLASS: list[tuple[type[Exception], int]] = [
    (WrongPassphrase, WRONG_PASSPHRASE),
    (NotAVault, NOT_A_VAULT),
    (VaultExists, VAULT_EXISTS),
    (UnsupportedFormat, UNSUPPORTED_FORMAT),
    (MountpointError, MOUNTPOINT),
    (FuseUnavailable, FUSE_UNAVAILABLE),
    (IntegrityError, DAMAGE),
    (AuditUnavailable, AUDIT_UNAVAILABLE),
    (DaemonUnavailable, AUDIT_UNAVAILABLE),
    (LedgerTampered, LEDGER_INVALID),
    (PolicyError, POLICY_INVALID),
    (proxy_errors.WrongIdentityPassphrase, WRONG_PASSPHRASE),
    (proxy_errors.IdentityError, IDENTITY),
    (proxy_errors.ProxyUnreachable, PROXY_UNREACHABLE),
    (proxy_errors.AccessRevoked, ACCESS_REVOKED),
    (proxy_errors.ProxyRequestError, PROXY_REFUSED),
    (proxy_errors.GrantError, GRANT_INVALID),
    (proxy_errors.CapsuleError, DAMAGE),
    (proxy_errors.NoSuchShare, NOT_A_VAULT),
    (proxy_errors.ShareRecordInvalid, DAMAGE),
    (proxy_errors.RecordChainBroken, LEDGER_INVALID),
    (RotationError, ROTATION_INCOMPLETE),
]


# What the CLI reports as one line with a code from the table; anything else is a bug (traceback).
PROJECT_ERRORS = (UmbrafsError, WireError, LedgerError, proxy_errors.ProxyError)


def for_error(exc: Exception) -> int:
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            return code
    return ERROR
