"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and proof checking (pure).

Leaf hash = SHA-256(0x00 || entry), node hash = SHA-256(0x01 || left || right), and the tree over
n leaves splits at the largest power of two below n (RFC 9162 §2.1.1).  The empty tree hashes to
SHA-256("").

Proofs are generated over an abstract accessor ``node(level, index)`` that returns the hash of the
*perfect* subtree of 2**level leaves starting at leaf ``index << level``.  Every perfect subtree of a
tree of size n is also a subtree of every larger tree, so a store can keep them once, forever, and
serve proofs for any tree size from O(log n) lookups (ledger/store.py keeps levels >= 1 in a table
and hashes level-0 leaves from the entry bytes).
"""
from __future__ import annotations

from hashlib import sha256
from typing import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = sha256(b"").digest()

# (level, index) -> hash of leaves [index << level, (index + 1) << level)
NodeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """MTH of a single entry: SHA-256(0x00 || data)."""
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def compact_range(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees (level, index) that tile leaves [0, size), largest (leftmost) first.

    One per set bit of ``size``; the root is their right fold (see ``fold``)."""
    out: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Root from the compact-range hashes of a tree: H(h0, H(h1, … H(hk-1, hk)))."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def subtree_hash(node: NodeHash, lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for a range that the RFC's recursion produces (lo aligned to the split)."""
    n = hi - lo
    if n <= 0:
        raise ValueError("empty subtree")
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return node(level, lo >> level)
    k = _split(n)
    return node_hash(subtree_hash(node, lo, lo + k), subtree_hash(node, lo + k, hi))


def root_from_nodes(size: int, node: NodeHash) -> bytes:
    """MTH(D[0:size]) from perfect-subtree hashes: at most log2(size) accessor calls."""
    return fold([node(level, index) for level, index in compact_range(size)])


def levels_of(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """All perfect-subtree hashes of a tree: ``levels[l][i]`` is node (l, i); levels[0] the leaves."""
    levels = [list(leaf_hashes)]
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes; the empty tree is SHA-256("")."""
    if not leaf_hashes:
        return EMPTY_ROOT
    levels = levels_of(leaf_hashes)
    return root_from_nodes(len(leaf_hashes), lambda level, index: levels[level][index])


def inclusion_proof(index: int, size: int, node: NodeHash) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 §2.1.1, leaf-side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(subtree_hash(node, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_hash(node, lo, lo + k))
            lo += k
    proof.reverse()
    return proof


def consistency_proof(old_size: int, new_size: int, node: NodeHash) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 6962 §2.1.2; empty when old_size is 0 or equal."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(subtree_hash(node, lo, hi))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree_hash(node, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_hash(node, lo, lo + k))
            lo += k
            m -= k
            complete = False
    proof.reverse()
    return proof


def _hashes_ok(*hashes: bytes) -> bool:
    return all(isinstance(h, (bytes, bytearray)) and len(h) == HASH_SIZE for h in hashes)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``leaf`` (a *leaf hash*, not entry bytes) sit at ``index`` under ``root``?"""
    if not (_hashes_ok(leaf, root, *proof) and isinstance(index, int) and isinstance(size, int)):
        return False
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (new_size, new_root) an append-only extension of (old_size, old_root)?

    Edge cases follow transparency-dev/merkle: equal sizes need equal roots and an empty proof;
    size 0 is consistent with anything, with an empty proof."""
    if not (_hashes_ok(old_root, new_root, *proof) and isinstance(old_size, int) and isinstance(new_size, int)):
        return False
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
