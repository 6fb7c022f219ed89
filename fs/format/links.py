"""Symlinks in the backing directory: the numbers and names of their on-disk form.

A symlink's target is sealed under its directory's key (DirKeys.encrypt_link) and
stored as the backing symlink's own target.  A sealed target longer than
LONGLINK_MIN goes to a sidecar file ``<marker>.link`` instead, and the backing
symlink points at the marker: ``~`` + 32 hex digits, so it is told from a sealed
target (base64url, never this short) by its length alone, before any readlink.
Pure: the mount (fs/mount) and the rotation engine (fs/vault/rotate) share it
through fs/vault/entries.py.
"""
from __future__ import annotations

import os
import re

from fs.format.layout import LONGLINK_SUFFIX, LONGNAME_PREFIX

# The longest plaintext target a symlink may have (PATH_MAX - 1, as Linux allows).
SYMLINK_MAX = 4095
# Sealed targets longer than this live in a sidecar (backing symlinks stay well under
# PATH_MAX, and sync tools that cap symlink targets still carry them).
LONGLINK_MIN = 3000
_MARKER_RANDOM = 16  # bytes, written as hex
# Length of a marker (the backing symlink's st_size when its target is in a sidecar).
LINK_MARKER_LEN = len(LONGNAME_PREFIX) + 2 * _MARKER_RANDOM  # 33
# A symlink being made under a temporary name, then renamed into place (a rename across
# directories, a rotation): a run cut short leaves it, and the next rotation removes it.
TMP_PREFIX = ".umbrafs.tmp."


def new_marker() -> str:
    """A fresh random marker for a sidecar'ed target."""
    return LONGNAME_PREFIX + os.urandom(_MARKER_RANDOM).hex()


_MARKER = re.compile(re.escape(LONGNAME_PREFIX) + "[0-9a-f]{%d}" % (2 * _MARKER_RANDOM))


def is_marker(c_target: str) -> bool:
    """Exactly the form new_marker makes: anything else starting with ``~`` (say
    ``~/../../x``, planted by another writer) must never be joined into a sidecar path."""
    return _MARKER.fullmatch(c_target) is not None


def sidecar_name(marker: str) -> str:
    return marker + LONGLINK_SUFFIX


def tmp_name() -> str:
    return TMP_PREFIX + os.urandom(8).hex()
