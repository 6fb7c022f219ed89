"""The project's exception classes.

Library code raises these; the FUSE adapter maps them to errno values and the
CLI maps them to exit codes (cli/exitcodes.py).  Messages never contain keys,
passphrases or plaintext contents.
"""
from __future__ import annotations

import errno


class UmbrafsError(Exception):
    """Base class: a problem the user can understand from the message alone."""

    errno: int = errno.EIO


class WrongPassphrase(UmbrafsError):
    errno = errno.EACCES


class NotAVault(UmbrafsError):
    errno = errno.ENOENT


class VaultExists(UmbrafsError):
    errno = errno.EEXIST


class UnsupportedFormat(UmbrafsError):
    """The vault or a file was written by a newer umbrafs (or is not ours)."""


class MountpointError(UmbrafsError):
    errno = errno.EBUSY


class FuseUnavailable(UmbrafsError):
    errno = errno.ENODEV


class IntegrityError(UmbrafsError):
    """Authentication of a header, name or block failed: never return its bytes."""
