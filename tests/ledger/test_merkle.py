"""RFC 6962 / 9162 tree hashing and proofs: published vectors, an independent naive implementation,
every index/size pair of small trees, and proofs that must not verify."""
from __future__ import annotations

from hashlib import sha256

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import merkle

# Test vectors from transparency-dev/merkle proof/verify_test.go (the CT reference implementation's
# successor; the same values appear in certificate-transparency-go).  Leaf inputs, the roots of their
# first n leaves, and known inclusion / consistency proofs.
LEAVES = [bytes.fromhex(h) for h in
          ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # empty tree: SHA-256("")
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, proof)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# ---------------------------------------------------------------- an independent, naive RFC 6962


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(data: list[bytes]) -> bytes:
    if not data:
        return sha256(b"").digest()
    if len(data) == 1:
        return sha256(b"\x00" + data[0]).digest()
    k = _k(len(data))
    return sha256(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:])).digest()


def naive_path(m: int, data: list[bytes]) -> list[bytes]:
    if len(data) == 1:
        return []
    k = _k(len(data))
    if m < k:
        return naive_path(m, data[:k]) + [naive_mth(data[k:])]
    return naive_path(m - k, data[k:]) + [naive_mth(data[:k])]


def naive_subproof(m: int, data: list[bytes], complete: bool) -> list[bytes]:
    if m == len(data):
        return [] if complete else [naive_mth(data)]
    k = _k(len(data))
    if m <= k:
        return naive_subproof(m, data[:k], complete) + [naive_mth(data[k:])]
    return naive_subproof(m - k, data[k:], False) + [naive_mth(data[:k])]


def memory_nodes(data: list[bytes]) -> merkle.NodeHash:
    levels = merkle.levels_of([merkle.leaf_hash(d) for d in data])
    return lambda level, index: levels[level][index]


DATA40 = [b"entry %d" % i for i in range(40)]


# ---------------------------------------------------------------- published vectors


def test_rfc6962_roots() -> None:
    for n, want in enumerate(ROOTS):
        hashes = [merkle.leaf_hash(x) for x in LEAVES[:n]]
        assert merkle.root_of(hashes).hex() == want
        assert naive_mth(LEAVES[:n]).hex() == want  # the reference below is right too
    assert merkle.EMPTY_ROOT.hex() == ROOTS[0]


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_rfc6962_inclusion_vectors(index: int, size: int, proof: list[str]) -> None:
    node = memory_nodes(LEAVES[:size])
    assert [h.hex() for h in merkle.inclusion_proof(index, size, node)] == proof
    root = bytes.fromhex(ROOTS[size])
    assert merkle.verify_inclusion(merkle.leaf_hash(LEAVES[index]), index, size, [bytes.fromhex(h) for h in proof], root)


@pytest.mark.parametrize("old,new,proof", CONSISTENCY)
def test_rfc6962_consistency_vectors(old: int, new: int, proof: list[str]) -> None:
    node = memory_nodes(LEAVES[:new])
    assert [h.hex() for h in merkle.consistency_proof(old, new, node)] == proof
    assert merkle.verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]),
                                     [bytes.fromhex(h) for h in proof])


# ---------------------------------------------------------------- every pair of small trees


@pytest.mark.parametrize("size", range(1, 41))
def test_every_inclusion_proof_matches_naive(size: int) -> None:
    data = DATA40[:size]
    node = memory_nodes(data)
    root = naive_mth(data)
    assert merkle.root_from_nodes(size, node) == root == merkle.root_of([merkle.leaf_hash(d) for d in data])
    for index in range(size):
        proof = merkle.inclusion_proof(index, size, node)
        assert proof == naive_path(index, data)
        leaf = merkle.leaf_hash(data[index])
        assert merkle.verify_inclusion(leaf, index, size, proof, root)
        for other in {index - 1, index + 1, index ^ 2} - {index}:
            assert not merkle.verify_inclusion(leaf, other, size, proof, root)
        assert not merkle.verify_inclusion(leaf, index, size * 2, proof, root)
        assert not merkle.verify_inclusion(merkle.leaf_hash(data[index] + b"!"), index, size, proof, root)


@pytest.mark.parametrize("new", range(1, 41))
def test_every_consistency_proof_matches_naive(new: int) -> None:
    data = DATA40[:new]
    node = memory_nodes(data)
    new_root = naive_mth(data)
    for old in range(0, new + 1):
        proof = merkle.consistency_proof(old, new, node)
        assert proof == ([] if old in (0, new) else naive_subproof(old, data, True))
        old_root = naive_mth(data[:old])
        assert merkle.verify_consistency(old, new, old_root, new_root, proof)
        if 0 < old < new:
            assert not merkle.verify_consistency(old, new, new_root, new_root, proof)
            assert not merkle.verify_consistency(old, new, old_root, naive_mth(data[:-1] + [b"x"]), proof)


# ---------------------------------------------------------------- proofs that must fail


def _inclusion_probes(index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes):
    yield index - 1, size, proof, root, leaf
    yield index + 1, size, proof, root, leaf
    yield index ^ 2, size, proof, root, leaf
    yield index, size * 2, proof, root, leaf
    yield index, size // 2, proof, root, leaf
    yield index, size, proof, root, b"WrongLeaf"
    yield index, size, proof, merkle.EMPTY_ROOT, leaf
    yield index, size, proof, SOME_HASH, leaf
    yield index, size, proof + [b""], root, leaf
    yield index, size, proof + [root], root, leaf
    yield index, size, [b""] + proof, root, leaf
    yield index, size, [root] + proof, root, leaf
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        yield index, size, bad, root, leaf
    if proof:
        yield index, size, proof[:-1], root, leaf
    if len(proof) > 1:
        yield index, size, [proof[0], SOME_HASH] + proof[1:], root, leaf


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_corrupted_inclusion_proofs_fail(index: int, size: int, proof: list[str]) -> None:
    good = [bytes.fromhex(h) for h in proof]
    root, leaf = bytes.fromhex(ROOTS[size]), merkle.leaf_hash(LEAVES[index])
    for i, s, p, r, lf in _inclusion_probes(index, size, good, root, leaf):
        assert not merkle.verify_inclusion(lf, i, s, p, r), (i, s)


@pytest.mark.parametrize("old,new,proof", [c for c in CONSISTENCY if c[2]])
def test_corrupted_consistency_proofs_fail(old: int, new: int, proof: list[str]) -> None:
    good = [bytes.fromhex(h) for h in proof]
    r1, r2 = bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new])
    probes = [
        (old - 1, new, r1, r2, good), (old + 1, new, r1, r2, good), (old ^ 2, new, r1, r2, good),
        (old, new * 2, r1, r2, good), (old, new // 2, r1, r2, good),
        (old, new, SOME_HASH, r2, good), (old, new, r1, SOME_HASH, good), (old, new, r2, r1, good),
        (old, new, r1, r2, []), (old, new, r1, r2, good + [b""]), (old, new, r1, r2, good + [r1]),
        (old, new, r1, r2, good + [r2]), (old, new, r1, r2, [b""] + good), (old, new, r1, r2, [r1] + good),
        (old, new, r1, r2, [r2] + good), (old, new, r1, r2, [good[0]] + good), (old, new, r1, r2, good[:-1]),
    ]
    for i in range(len(good)):
        bad = list(good)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((old, new, r1, r2, bad))
    for o, n, a, b, p in probes:
        assert not merkle.verify_consistency(o, n, a, b, p), (o, n)


def test_consistency_edge_cases() -> None:
    r1, r2 = SOME_HASH, merkle.EMPTY_ROOT
    assert merkle.verify_consistency(0, 0, r1, r1, [])
    assert merkle.verify_consistency(0, 1, r1, r2, [])
    assert merkle.verify_consistency(1, 1, r2, r2, [])
    assert not merkle.verify_consistency(0, 0, r1, r2, [])
    assert not merkle.verify_consistency(1, 1, r1, r2, [])
    assert not merkle.verify_consistency(1, 0, r1, r2, [])
    assert not merkle.verify_consistency(2, 1, r1, r2, [])
    assert not merkle.verify_consistency(1, 2, r1, r2, [])
    assert not merkle.verify_consistency(0, 1, r2, r2, [r2])
    assert not merkle.verify_consistency(1, 1, r2, r2, [r2])


def test_inclusion_edge_cases() -> None:
    leaf = merkle.leaf_hash(b"data")
    assert merkle.verify_inclusion(leaf, 0, 1, [], leaf)
    for index, size in ((0, 0), (1, 0), (2, 1), (-1, 3)):
        assert not merkle.verify_inclusion(leaf, index, size, [], leaf)
    assert not merkle.verify_inclusion(b"", 0, 1, [], b"")  # wrong hash sizes
    with pytest.raises(ValueError):
        merkle.inclusion_proof(3, 3, memory_nodes([b"a", b"b", b"c"]))
    with pytest.raises(ValueError):
        merkle.consistency_proof(4, 3, memory_nodes([b"a", b"b", b"c"]))


def test_compact_range_tiles_the_tree() -> None:
    assert merkle.compact_range(0) == []
    assert merkle.compact_range(13) == [(3, 0), (2, 2), (0, 12)]
    assert merkle.compact_range(1 << 20) == [(20, 0)]


# ---------------------------------------------------------------- hypothesis


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=70), st.data())
def test_random_trees_prove_and_refuse(data: list[bytes], draw: st.DataObject) -> None:
    size = len(data)
    node = memory_nodes(data)
    root = merkle.root_from_nodes(size, node)
    assert root == naive_mth(data)
    index = draw.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(index, size, node)
    assert merkle.verify_inclusion(merkle.leaf_hash(data[index]), index, size, proof, root)
    if proof:
        k = draw.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[k] = sha256(bad[k]).digest()
        assert not merkle.verify_inclusion(merkle.leaf_hash(data[index]), index, size, bad, root)
    old = draw.draw(st.integers(0, size))
    cproof = merkle.consistency_proof(old, size, node)
    assert merkle.verify_consistency(old, size, naive_mth(data[:old]), root, cproof)
    if 0 < old < size:
        changed = list(data)
        changed[draw.draw(st.integers(0, old - 1))] += b"~"
        assert not merkle.verify_consistency(old, size, naive_mth(changed[:old]), root, cproof)
