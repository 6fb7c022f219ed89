"""Encrypted extended attributes, stored as backing xattrs of the same object.

Backing name: ``user.umbrafs.<base64url(AES-SIV(name))>``; value:
nonce || AES-GCM(value, aad = object id || plaintext name), under keys derived
from the file's DEK or the directory's key, so they travel with the object.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from fs.format import layout as fmt
from fs.errors import IntegrityError
from fs.format.cryptocore import xattr_names_key, xattr_values_key
from fs.format.names import b64decode, b64encode

PREFIX = "user.umbrafs."


class XattrCipher:
    __slots__ = ("_siv", "_gcm", "_obj_id")

    def __init__(self, key: bytes, obj_id: bytes) -> None:
        self._siv = AESSIV(xattr_names_key(key))
        self._gcm = AESGCM(xattr_values_key(key))
        self._obj_id = obj_id

    def backing_name(self, name: bytes) -> str:
        return PREFIX + b64encode(self._siv.encrypt(name, None))

    def plain_name(self, b_name: str) -> bytes | None:
        if not b_name.startswith(PREFIX):
            return None
        try:
            return self._siv.decrypt(b64decode(b_name[len(PREFIX) :]), None)
        except (InvalidTag, ValueError, IntegrityError):
            return None

    def seal(self, name: bytes, value: bytes, nonce: bytes | None = None) -> bytes:
        """*nonce* is for test vectors only: by default it is random."""
        nonce = os.urandom(fmt.NONCE_LEN) if nonce is None else nonce
        return nonce + self._gcm.encrypt(nonce, value, self._obj_id + name)

    def open(self, name: bytes, sealed: bytes) -> bytes:
        try:
            return self._gcm.decrypt(sealed[: fmt.NONCE_LEN], sealed[fmt.NONCE_LEN :], self._obj_id + name)
        except (InvalidTag, ValueError):
            raise IntegrityError("xattr value failed authentication") from None
