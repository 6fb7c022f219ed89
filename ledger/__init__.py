"""Tamper-evident audit ledger: event schema, hash chain, Merkle tree, checkpoints, proofs."""
