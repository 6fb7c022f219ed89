#!/usr/bin/env bash
# End-to-end demo on embedded defaults: a vault under ./demo, mounted, used, inspected, unmounted.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=./demo
export UMBRAFS_HOME="$PWD/$DEMO/home"
export UMBRAFS_PASSPHRASE="demo passphrase - use a real one"
VAULT="$DEMO/vault" MNT="$DEMO/drive"

cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && umbrafs unmount "$MNT" || true
  [ -e "$UMBRAFS_HOME/daemon.pid" ] && umbrafs daemon stop >/dev/null || true
}
trap cleanup EXIT

if mountpoint -q "$MNT" 2>/dev/null; then umbrafs unmount "$MNT"; fi
if [ -e "$UMBRAFS_HOME/daemon.pid" ]; then umbrafs daemon stop || true; fi
rm -rf "$DEMO" && mkdir -p "$MNT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "umbrafs init $VAULT"
umbrafs init "$VAULT"
step "an identity and the audit daemon: every access goes on a tamper-evident record"
umbrafs identity create demo --kdf-memory-kib 65536 --kdf-iterations 2 --kdf-lanes 2
umbrafs daemon start
step "umbrafs mount $VAULT $MNT"
umbrafs mount "$VAULT" "$MNT"
step "write files through the mount"
mkdir -p "$MNT/projects/report"
echo "Quarterly numbers: confidential" > "$MNT/projects/report/notes.txt"
head -c 3000000 /dev/urandom > "$MNT/projects/report/data.bin"
ln -s notes.txt "$MNT/projects/report/latest"
cp -a /etc/os-release "$MNT/"
ls -lR "$MNT"
step "read them back"
cat "$MNT/projects/report/latest"
sha256sum "$MNT/projects/report/data.bin"
step "the backing directory holds only ciphertext (names included)"
find "$VAULT" | head -20
if grep -rq "Quarterly" "$VAULT" || find "$VAULT" -name '*notes*' | grep -q .; then
  echo "PLAINTEXT FOUND IN BACKING DIR" >&2; exit 1
fi
echo "no plaintext name or content in $VAULT"
step "umbrafs unmount $MNT"
umbrafs unmount "$MNT"
step "umbrafs fsck $VAULT"
umbrafs fsck "$VAULT"
step "remount read-only and read again"
umbrafs mount --read-only "$VAULT" "$MNT"
cat "$MNT/projects/report/notes.txt"
umbrafs unmount "$MNT"
step "umbrafs audit log --path /projects/report (what happened, by whom)"
umbrafs audit log --path /projects/report
step "umbrafs audit verify (hash chain, Merkle tree, signed checkpoints, anchors)"
umbrafs audit verify
umbrafs daemon stop
echo; echo "demo complete: vault in $VAULT (passphrase in \$UMBRAFS_PASSPHRASE of scripts/demo.sh)"
