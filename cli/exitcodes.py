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

_BY_CLASS: list[tuple[type[UmbrafsError], int]] = [
    (WrongPassphrase, WRONG_PASSPHRASE),
    (NotAVault, NOT_A_VAULT),
    (VaultExists, VAULT_EXISTS),
    (UnsupportedFormat, UNSUPPORTED_FORMAT),
    (MountpointError, MOUNTPOINT),
    (FuseUnavailable, FUSE_UNAVAILABLE),
    (IntegrityError, DAMAGE),
]


def for_error(exc: UmbrafsError) -> int:
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            return code
    return ERROR
