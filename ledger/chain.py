"""The plain SHA-256 hash chain over ledger entries (pure).

The chain localises an edit to one entry (each stored chain value is checked against its
predecessor); the Merkle tree and the signed checkpoints are what make rewriting it detectable.
"""
from __future__ import annotations

from hashlib import sha256

GENESIS = bytes(32)


def chain_hash(prev: bytes, entry: bytes) -> bytes:
    """SHA-256(prev || entry): the chain value of ``entry`` following ``prev``."""
    return sha256(prev + entry).digest()
