"""`revoke --rotate`: fresh keys for a shared subtree, re-encrypted in place, resumable."""
