"""`umbrafs revoke --rotate` end to end: alice's live mount, bob's kept key, three real proxies.

bob opens the share's capsule himself (through the proxies, as his mount does) and keeps key_D.
alice revokes with --rotate while a process keeps appending to a file inside D through her mount:
the rotation runs inside that mount (control socket), every appended line is there afterwards,
and bob's kept key opens no name, header or block below D any more.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import exitcodes
from fs.format import layout as fmt
from fs.errors import IntegrityError
from fs.vault.headers import DirKeys
from fs.format.names import is_reserved
from proxy import keyring as identity_mod
from proxy import shares as shares_mod
from proxy.client import open_capsule
from tests.cli.test_identity import one_line_error
from tests.cli import test_sharing
from tests.cli.test_sharing import World, _eventually, _spooled
from tests.conftest import Env, live_mount

# The sharing tests' world (alice, bob, three proxies, alice's drive mounted), one per module.
world = test_sharing.world
w = test_sharing.w

_WRITER = """
import os, sys, time
path, stop = sys.argv[1], sys.argv[2]
n = 0
with open(path, "ab", buffering=0) as f:
    while not os.path.exists(stop):
        f.write(b"line %08d\\n" % n)
        n += 1
        time.sleep(0.001)
print(n)
"""


def _kept_key(w: World, share_id: str) -> DirKeys:
    """What bob's side opens from the share (and could write down): key_D."""
    record = shares_mod.read(w.vault, share_id).record
    bob = identity_mod.unlock(w.bob.home, "bob", w.bob.passfile.read_text().strip().encode())
    payload = open_capsule(list(record.proxies), bob, record.owner, record.capsule, record.ciphertext,
                           record.threshold, record.grant_id, record.delegating_key)
    return DirKeys(record.object_id, payload[: shares_mod.KEY_LEN])


def _opened_by(vault: Path, rel: str, kept: DirKeys) -> list[str]:
    """Everything below backing dir *rel* that *kept* (and the keys it unwraps) still opens."""
    opened = []
    stack = [(rel, kept)]
    while stack:
        d, k = stack.pop()
        for name in sorted(os.listdir(vault / d)):
            if is_reserved(name):
                continue
            p = vault / d / name
            c_name = (vault / d / (name + fmt.LONGNAME_SUFFIX)).read_text() if name.startswith("~") else name
            try:
                k.names.decrypt(c_name)
                opened.append(f"name {d}/{name}")
            except IntegrityError:
                pass
            st = os.lstat(p)
            header_file = p / fmt.DIR_HEADER_NAME if stat.S_ISDIR(st.st_mode) else p
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue
            kind = fmt.KIND_DIR if stat.S_ISDIR(st.st_mode) else fmt.KIND_FILE
            header = fmt.parse_header(header_file.read_bytes()[:4096], kind)
            try:
                key = k.unwrap(header)
                opened.append(f"key of {d}/{name}")
                if kind == fmt.KIND_DIR:
                    stack.append((f"{d}/{name}", DirKeys(header.obj_id, key)))
            except IntegrityError:
                pass
    return opened


def test_revoke_rotate_in_the_live_mount_loses_no_write_and_kills_the_kept_key(w: World) -> None:
    d = w.drive / "rot"
    (d / "sub" / "deep").mkdir(parents=True)
    contents = {f"f{i}": os.urandom(i * 1000) for i in range(30)}
    contents["sub/big.bin"] = os.urandom(5 << 20)
    contents["sub/deep/c.txt"] = b"deep\n"
    for rel, data in contents.items():
        (d / rel).write_bytes(data)
    os.symlink("f1", d / "sub" / "link")
    share_id = w.share("/rot")
    kept = _kept_key(w, share_id)
    rel = shares_mod.read(w.vault, share_id).record.backing_path
    assert len(_opened_by(w.vault, rel, kept)) >= 30  # the check below can see a kept key working

    stop = w.tmp / "stop-writer"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(d / "log.txt"), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    held = open(d / "sub" / "big.bin", "rb")  # an open handle across the rotation
    try:
        time.sleep(0.3)
        result = w.alice.run("revoke", d, "--from", "bob", "--rotate", "--json", "--passphrase-file", w.alice.passfile,
                             "--vault-passphrase-file", w.alice.passfile)
        assert result.returncode == 0, result.stderr
        time.sleep(0.2)
    finally:
        stop.touch()
        lines = int(writer.communicate(timeout=30)[0])
    out = json.loads(result.stdout)
    assert [r["holds"] for r in out["revocations"]] == [True]
    rotation = out["rotation"]
    assert rotation["state"] == "done" and not rotation["error"] and not rotation["problems"]
    assert rotation["files_done"] == rotation["files_total"] >= 33 and rotation["dirs_done"] == 3
    assert held.read() == contents["sub/big.bin"]
    held.close()
    expected_log = b"".join(b"line %08d\n" % i for i in range(lines))
    assert lines > 50 and (d / "log.txt").read_bytes() == expected_log
    # From the backing dir, through a fresh mount (no page cache of alice's drive in the way).
    with live_mount(w.alice, w.vault, w.tmp / "after-rotate", "--read-only") as fresh:
        f = fresh.path / "rot"
        assert (f / "log.txt").read_bytes() == expected_log
        for rel_path, data in contents.items():
            assert (f / rel_path).read_bytes() == data
        assert os.readlink(f / "sub" / "link") == "f1"
    # bob's kept key opens nothing below D any more (found by id, wherever D is now).
    new_rel = next(p for p in [rel, *[str(x.relative_to(w.vault)) for x in w.vault.rglob("*") if x.is_dir()]]
                   if (w.vault / p / fmt.DIR_HEADER_NAME).exists()
                   and fmt.parse_header((w.vault / p / fmt.DIR_HEADER_NAME).read_bytes(), fmt.KIND_DIR).obj_id == kept.dir_id)
    assert _opened_by(w.vault, new_rel, kept) == []
    with pytest.raises(IntegrityError):  # D's own header: its new key is wrapped under the parent only
        kept.unwrap(fmt.parse_header((w.vault / new_rel / fmt.DIR_HEADER_NAME).read_bytes(), fmt.KIND_DIR))
    one_line_error(w.bob_mount_fails(share_id, "after-rotate-bob"), exitcodes.ACCESS_REVOKED, "access revoked")
    _eventually(lambda: [e for e in _spooled(w.alice.home, "reencrypt") if e.detail.get("files", 0) >= 33] or _no())
    # Nothing pending: --resume says so; running --rotate again (already revoked) rotates again.
    resume = w.alice.run("revoke", w.drive, "--resume")
    assert resume.returncode == 0 and "no rotation pending" in resume.stdout, resume.stderr
    again = w.alice.run("revoke", d, "--from", "bob", "--rotate", "--passphrase-file", w.alice.passfile,
                        "--vault-passphrase-file", w.alice.passfile)
    assert again.returncode == 0, again.stderr
    assert "already revoked" in again.stdout and "rotated keys: 3 directories" in again.stdout


def _no() -> bool:
    raise AssertionError("not yet")


def test_resume_goes_to_the_live_mount(w: World) -> None:
    """A rotation cut short, the vault mounted: `revoke VAULT --resume` has the mount finish it."""
    from fs.vault import keywalk
    from fs.vault.rotate import engine as rotate
    from fs.vault import config as vault_mod

    unlocked = vault_mod.unlock(w.vault, w.alice.passfile.read_text().strip().encode())
    target = keywalk.find(unlocked, "/projects/x")
    with rotate.Rotation(w.vault, unlocked.root_wrap_key) as rotation:
        steps = rotation.steps(rotate.TargetSpec(target.kind, target.backing_rel, target.obj_id))
        next(steps)  # journal written, scan done: stop here, as a crash would
        steps.close()
    assert rotate.pending(w.vault) is not None
    # alice's drive is mounted: --resume goes to the mount, which finishes the job.
    result = w.alice.run("revoke", w.vault, "--resume", "--json", "--passphrase-file", w.alice.passfile)
    assert result.returncode == 0, result.stderr
    progress = json.loads(result.stdout)
    assert progress["state"] == "done" and progress["dirs_done"] >= 2
    assert rotate.pending(w.vault) is None
    assert (w.drive / "projects" / "x" / "a.txt").read_text() == "alpha\n"


@pytest.mark.slow  # the offline path is also covered by test_revoke_rotate_offline_with_vault
def test_resume_offline_when_not_mounted(env: Env, vault: Path) -> None:
    """Nothing mounted: `revoke VAULT --resume` runs the same engine on the backing dir."""
    from fs.vault import keywalk
    from fs.vault.rotate import engine as rotate
    from fs.vault import config as vault_mod

    with live_mount(env, vault, env.tmp / "mnt") as m:
        (m.path / "d").mkdir()
        (m.path / "d" / "f").write_bytes(b"x" * 100000)
    unlocked = vault_mod.unlock(vault, env.passfile.read_text().strip().encode())
    target = keywalk.find(unlocked, "/d")
    with rotate.Rotation(vault, unlocked.root_wrap_key) as rotation:
        steps = rotation.steps(rotate.TargetSpec(target.kind, target.backing_rel, target.obj_id))
        next(steps)
        steps.close()
    result = env.run("revoke", vault, "--resume", "--passphrase-file", env.passfile)
    assert result.returncode == 0, result.stderr
    assert "rotated keys: 1 directories, 1 files, 100000 bytes re-encrypted" in result.stdout
    assert rotate.pending(vault) is None and keywalk.find(unlocked, "/d").key != target.key
    with live_mount(env, vault, env.tmp / "mnt") as m:
        assert (m.path / "d" / "f").read_bytes() == b"x" * 100000


def test_revoke_rotate_of_a_shared_file(w: World) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data = os.urandom(100_000)
    (w.drive / "report.pdf").write_bytes(data)
    share_id = w.share("/report.pdf")
    record = shares_mod.read(w.vault, share_id).record
    kept_dek = _kept_key(w, share_id).key  # for a file share: its DEK

    def first_block_opens(dek: bytes) -> bool:
        raw = (w.vault / record.backing_path).read_bytes()
        h = fmt.parse_header(raw, fmt.KIND_FILE)
        try:
            AESGCM(dek).decrypt(raw[h.length : h.length + 12], raw[h.length + 12 : h.length + fmt.CIPHER_BLOCK_SIZE],
                                fmt.block_aad(h.obj_id, 0, False))
            return True
        except InvalidTag:
            return False

    assert first_block_opens(kept_dek)
    result = w.alice.run("revoke", w.drive / "report.pdf", "--from", "bob", "--rotate", "--json",
                         "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
    assert result.returncode == 0, result.stderr
    rotation = json.loads(result.stdout)["rotation"]
    assert rotation["files_done"] == 1 and rotation["dirs_done"] == 0 and rotation["bytes_done"] == len(data)
    assert not first_block_opens(kept_dek)  # same backing file (a file's name is its directory's business)
    assert (w.drive / "report.pdf").read_bytes() == data


def test_revoke_rotate_offline_with_vault(w: World) -> None:
    """Not mounted: `revoke /path --vault VAULT --rotate` revokes and rotates on the backing dir."""
    vault2 = w.alice.init(w.tmp / "vault-offline")
    data = os.urandom(300_000)
    with live_mount(w.alice, vault2, w.tmp / "drive-offline") as m:
        (m.path / "p" / "q").mkdir(parents=True)
        (m.path / "p" / "q" / "f").write_bytes(data)
        result = w.alice.run("share", m.path / "p", "--with", "bob", *w.proxy_args(), "--passphrase-file",
                             w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
        assert result.returncode == 0, result.stderr
        share_id = result.stdout.strip()
    record = shares_mod.read(vault2, share_id).record
    bob = identity_mod.unlock(w.bob.home, "bob", w.bob.passfile.read_text().strip().encode())
    kept = DirKeys(record.object_id, open_capsule(list(record.proxies), bob, record.owner, record.capsule,
                                                  record.ciphertext, record.threshold, record.grant_id,
                                                  record.delegating_key)[: shares_mod.KEY_LEN])
    assert _opened_by(vault2, record.backing_path, kept)
    result = w.alice.run("revoke", "/p", "--vault", vault2, "--from", "bob", "--rotate", "--json",
                         "--passphrase-file", w.alice.passfile, "--vault-passphrase-file", w.alice.passfile)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["revocations"][0]["holds"] and out["rotation"]["state"] == "done"
    assert out["rotation"]["files_done"] == 1 and out["rotation"]["dirs_done"] == 2
    from fs.vault import config as vault_mod
    from fs.vault import keywalk

    new_rel = keywalk.find(vault_mod.unlock(vault2, w.alice.passfile.read_text().strip().encode()), "/p").backing_rel
    assert new_rel == record.backing_path  # D keeps its name: its parent is not re-keyed
    assert _opened_by(vault2, new_rel, kept) == []
    with live_mount(w.alice, vault2, w.tmp / "drive-offline") as m:
        assert (m.path / "p" / "q" / "f").read_bytes() == data
