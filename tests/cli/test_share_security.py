"""Security of sharing end to end (issue 3, item 6): real CLI, real mounts, three real proxy
processes that record every request and answer (`umbrafs proxy serve --capture`).

alice shares /projects/x with bob and /other with carol (2 of 3 proxies); bob mounts his share
and reads it.  Then: (a) everything the proxies stored or received — their databases, every
request body, every cfrag they sent — opens no key of the vault; (b) bob, holding the key his
mount holds, reaches nothing outside /projects/x in the backing directory; (c) a captured
request replayed is refused; (d) bob can neither revoke nor re-share; (e) a record whose
capsule was altered, and cfrags altered by a proxy, are refused and nothing is mounted.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import umbral_pre
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cli import exitcodes
from fs.format import layout as fmt
from fs.format import cryptocore as fs_keys
from fs.vault import config as vault_mod
from fs.errors import IntegrityError
from fs.vault.headers import DirKeys, owner_keys, read_dir_header, read_file_header
from fs.format.names import is_reserved
from proxy import keyring as identity_mod
from proxy import shares as shares_mod
from proxy.client import ProxyClient, open_capsule
from proxy.errors import CapsuleError, ProxyUnreachable
from proxy.keyring import Identity, parse_public
from tests.cli.test_identity import one_line_error
from tests.conftest import PASSPHRASE, Env, is_mounted, live_mount, new_env
from tests.proxy.conftest import FAST_KDF as FAST_KDF_PARAMS
from tests.proxy.conftest import ProxyProc, TamperingProxy, make_identity, stop_all

BOB_SECRET = "bob's own passphrase, not the vault's"


@dataclass
class World:
    alice: Env
    bob: Env
    carol: Env
    vault: Path
    drive: Path
    proxies: list[ProxyProc]
    admin: Identity
    tmp: Path
    share_x: str = ""       # /projects/x with bob
    share_other: str = ""   # /other with carol
    bob_view: Path = Path()  # bob's mount of share_x, for the whole module

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.proxies]

    def share(self, path: str, who: str, *extra: str, proxies: list[str] | None = None) -> str:
        args = [a for url in (proxies or self.urls) for a in ("--proxy", url)]
        return self.alice.run("share", self.drive / path.lstrip("/"), "--with", who, *args,
                              "--passphrase-file", self.alice.passfile, "--vault-passphrase-file", self.alice.passfile,
                              *extra, check=True).stdout.strip()

    def bob_mount_fails(self, share_id: str, name: str) -> Any:
        mnt = self.tmp / name
        mnt.mkdir(exist_ok=True)
        result = self.bob.run("mount", self.vault, mnt, "--share", share_id, "--identity", "bob",
                              "--passphrase-file", self.bob.passfile)
        assert not is_mounted(mnt) and os.listdir(mnt) == []
        return result

    def bob_identity(self) -> Identity:
        return identity_mod.unlock(self.bob.home, "bob", BOB_SECRET.encode())


def _identity(env: Env, name: str) -> str:
    """In-process (the identity commands have their own tests): each CLI run costs ~1 s here."""
    secret = env.passfile.read_text().splitlines()[0].encode()
    return identity_mod.create(env.home, name, secret, FAST_KDF_PARAMS).public.to_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("share-security")
    envs = {}
    for name in ("alice", "bob", "carol"):
        (tmp / name).mkdir()
        envs[name] = new_env(tmp / name)
    envs["bob"].passfile.write_text(BOB_SECRET + "\n")
    pubs = {name: _identity(env, name) for name, env in envs.items()}
    for me, others in (("alice", ("bob", "carol")), ("bob", ("alice", "carol")), ("carol", ("alice",))):
        for other in others:
            identity_mod.import_public(envs[me].home, pubs[other])
    admin = make_identity(tmp / "admin-home", "admin")
    admin_file = tmp / "admin.pub"
    admin_file.write_text(admin.public.to_text())
    proxies = [ProxyProc(tmp / f"proxy{i}", admin_file, capture=True) for i in range(3)]
    try:
        for p in proxies:
            p.start()
            with ProxyClient(p.url, admin) as client:
                client.register(parse_public(pubs["alice"]), "owner")
                client.register(parse_public(pubs["bob"]), "reader")
                client.register(parse_public(pubs["carol"]), "reader")
        vault = envs["alice"].init(tmp / "vault")
        with live_mount(envs["alice"], vault, tmp / "drive") as drive:
            m = drive.path
            (m / "projects" / "x" / "sub").mkdir(parents=True)
            (m / "projects" / "x" / "a.txt").write_text("alpha\n")
            (m / "projects" / "x" / "sub" / "b.txt").write_text("beta\n")
            (m / "projects" / "secret.txt").write_text("parent's file\n")
            (m / "top.txt").write_text("root file\n")
            (m / "other").mkdir()
            (m / "other" / "y.txt").write_text("carol's\n")
            w = World(envs["alice"], envs["bob"], envs["carol"], vault, m, proxies, admin, tmp)
            w.share_x = w.share("/projects/x", "bob")
            w.share_other = w.share("/other", "carol")
            # bob's mount: cfrags from 2 proxies, through the real protocol.
            with live_mount(w.bob, vault, tmp / "bob-view", "--share", w.share_x, "--identity", "bob") as view:
                assert (view.path / "a.txt").read_text() == "alpha\n"
                assert (view.path / "sub" / "b.txt").read_text() == "beta\n"
                w.bob_view = view.path
                yield w
    finally:
        stop_all(proxies)


# -- helpers: the vault's keys (alice's side) and its headers ----------------------------------------

def _headers(vault: Path) -> dict[str, fmt.Header]:
    """Every directory and file header in the backing directory, by backing path."""
    out: dict[str, fmt.Header] = {}
    fd = os.open(vault, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for dirpath, dirnames, filenames in os.walk(vault):
            rel = os.path.relpath(dirpath, vault)
            dirnames[:] = [d for d in dirnames if not is_reserved(d)]
            out[rel] = read_dir_header(fd, rel)
            for name in filenames:
                if is_reserved(name) or name.endswith(fmt.LONGNAME_SUFFIX):
                    continue
                file_fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    out[os.path.normpath(os.path.join(rel, name))] = read_file_header(file_fd)
                finally:
                    os.close(file_fd)
    finally:
        os.close(fd)
    return out


def _unwrap_with(key: bytes, header: fmt.Header) -> bytes | None:
    """Try *key* on every slot of *header* (whatever parent it names); the key it opens, or None."""
    for slot in header.slots:
        if slot is None:
            continue
        try:
            return fs_keys.unwrap_slot(key, header, slot.parent_id)
        except IntegrityError:
            continue
    return None


def _all_keys(w: World) -> dict[str, bytes]:
    """Every secret of the vault, found with alice's passphrase: owner key, root wrap key, each
    directory key and each file's DEK, by backing path."""
    unlocked = vault_mod.unlock(w.vault, PASSPHRASE.encode())
    headers = _headers(w.vault)
    found = {"owner-key": unlocked.owner_key, "root-wrap": unlocked.root_wrap_key}
    found["."] = owner_keys(unlocked.root_wrap_key).unwrap(headers["."])
    pending = ["."]
    while pending:  # a directory's key opens its children's headers
        parent = pending.pop()
        keys = DirKeys(headers[parent].obj_id, found[parent])
        for rel, header in headers.items():
            if rel != "." and os.path.dirname(rel) == ("" if parent == "." else parent):
                found[rel] = keys.unwrap(header)
                if header.kind == fmt.KIND_DIR:
                    pending.append(rel)
    assert len(found) == len(headers) + 2
    return found


def _blobs_the_proxies_have(w: World) -> list[bytes]:
    """Everything the proxies hold or saw: every value in their databases (kfrags, public keys,
    record rows) and every request and answer body (capsules, kfrags, cfrags), base64 fields decoded."""
    blobs: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            blobs.append(value.encode())
            try:
                blobs.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                pass
        elif isinstance(value, bytes):
            blobs.append(value)

    for p in w.proxies:
        conn = sqlite3.connect(f"file:{p.db}?mode=ro", uri=True)
        try:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                for row in conn.execute(f"SELECT * FROM {table}"):
                    for value in row:
                        walk(value)
        finally:
            conn.close()
        for line in p.capture_file.read_text().splitlines():
            entry = json.loads(line)
            for part in ("request", "response"):
                data = base64.b64decode(entry[part])
                blobs.append(data)
                if data.startswith(b"{"):
                    walk(json.loads(data))
    return [b for b in blobs if b]


# -- (a) the proxies hold nothing that decrypts ----------------------------------------------------

def test_nothing_the_proxies_hold_or_saw_opens_a_key(world: World) -> None:
    w = world
    secrets_ = _all_keys(w)
    blobs = _blobs_the_proxies_have(w)
    captured = [json.loads(line) for p in w.proxies for line in p.capture_file.read_text().splitlines()]
    paths = {e["path"] for e in captured}
    assert any(path.endswith("/reencrypt") for path in paths) and "/v1/grants" in paths  # the real flows went through
    # 1. No key of the vault appears anywhere — not in a body, a database value, nor the raw files.
    raw_files = b"".join(f.read_bytes() for p in w.proxies for f in p.root.iterdir() if f.is_file())
    for name, secret in secrets_.items():
        assert all(secret not in blob for blob in blobs), name
        assert secret not in raw_files and base64.b64encode(secret) not in raw_files, name
    # 2. No 32-byte window of anything they have unwraps the shared directory's key, a DEK below
    #    it, the root's key or a sibling's DEK.
    headers = _headers(w.vault)
    record = shares_mod.read(w.vault, w.share_x).record
    x = record.backing_path
    targets = [headers[x], headers["."]] + [h for rel, h in headers.items() if rel.startswith(x + "/")] + \
              [h for rel, h in headers.items() if os.path.dirname(rel) == os.path.dirname(x) and rel != x]
    # The backing directory too (in real life a synced folder a proxy operator may see as well):
    # headers, encrypted names, file contents, share records.
    backing = [(Path(d) / f).read_bytes() for d, _, files in os.walk(w.vault) for f in files]
    backing += [os.fsencode(name) for _, dirs, files in os.walk(w.vault) for name in dirs + files]
    windows = {blob[i:i + 32] for blob in blobs + backing for i in range(0, max(0, len(blob) - 31))}
    assert len(windows) > 10000
    slots = [(h, s) for h in targets for s in h.slots if s is not None]
    for window in windows:
        aes = AESGCM(window)
        for header, slot in slots:
            with pytest.raises(InvalidTag):
                aes.decrypt(slot.nonce, slot.wrapped, fs_keys._slot_aad(header.kind, header.obj_id, slot.parent_id))
    # 3. The capsule: no window of any Umbral object they hold is a secret key that opens it,
    #    and the cfrags they made open it for bob alone — not for the proxies' admin, not for a fresh key.
    capsule = umbral_pre.Capsule.from_bytes(record.capsule)
    umbral_blobs = [b for b in blobs if len(b) in (105, 310, 381)]  # capsules, kfrags, cfrags
    assert any(len(b) == 381 for b in umbral_blobs) and any(len(b) == 310 for b in umbral_blobs)
    tried = 0
    for blob in umbral_blobs:
        for i in range(len(blob) - 31):
            try:
                sk = umbral_pre.SecretKey.from_be_bytes(blob[i:i + 32])
            except ValueError:
                continue
            tried += 1
            with pytest.raises(ValueError):
                umbral_pre.decrypt_original(sk, capsule, record.ciphertext)
    assert tried > 1000
    bob = w.bob_identity()
    delegating = umbral_pre.PublicKey.from_compressed_bytes(record.delegating_key)
    cfrags = []
    for blob in umbral_blobs:
        if len(blob) != 381:
            continue
        try:
            cfrags.append(umbral_pre.CapsuleFrag.from_bytes(blob).verify(
                capsule, record.owner.verifying_key(), delegating, bob.public.umbral_public_key()))
        except (ValueError, umbral_pre.VerificationError):
            continue  # a cfrag of another share
    assert len(cfrags) >= 2
    assert umbral_pre.decrypt_reencrypted(bob.umbral_sk, delegating, capsule, cfrags[:2], record.ciphertext)[:32] \
        == secrets_[x]  # the control: these cfrags are the real ones
    for outsider in (w.admin.umbral_sk, umbral_pre.SecretKey.random()):
        with pytest.raises(ValueError):
            umbral_pre.decrypt_reencrypted(outsider, delegating, capsule, cfrags[:2], record.ciphertext)


# -- (b) the recipient reaches nothing outside the share -------------------------------------------

def test_the_recipient_reaches_nothing_outside_the_shared_directory(world: World) -> None:
    w = world
    bob = w.bob_identity()
    signed = shares_mod.read(w.vault, w.share_x)
    record = signed.verify(identity_mod.load_public(w.bob.home, "alice"))
    # What bob's mount holds: the key opened through M proxies.
    key_d = open_capsule(list(record.proxies), bob, record.owner, record.capsule, record.ciphertext,
                         record.threshold, record.grant_id, record.delegating_key)[:32]
    headers = _headers(w.vault)
    x = record.backing_path
    # Everything bob can derive from it, by reading the backing directory with it.
    derived = {x: key_d}
    for rel in sorted(headers, key=len):
        parent = os.path.dirname(rel)
        if parent in derived and rel not in derived and headers[parent].kind == fmt.KIND_DIR:
            opened = DirKeys(headers[parent].obj_id, derived[parent]).unwrap(headers[rel])
            derived[rel] = opened
    inside = {rel for rel in headers if rel == x or rel.startswith(x + "/")}
    assert set(derived) == inside and len(inside) == 4  # x, x/a.txt, x/sub, x/sub/b.txt
    names = DirKeys(headers[x].obj_id, key_d).names
    assert sorted(names.decrypt(n) for n in os.listdir(w.vault / x) if not is_reserved(n)) == [b"a.txt", b"sub"]
    # Outside: no header opens with any key bob holds, under any parent id it names.
    outside = {rel: h for rel, h in headers.items() if rel not in inside}
    assert {".", os.path.dirname(x)} <= set(outside) and len(outside) >= 6
    for rel, header in outside.items():
        for key in derived.values():
            assert _unwrap_with(key, header) is None, rel
    # No name outside decrypts: not the parent's entries (x's siblings), not the root's.
    for rel in (os.path.dirname(x), "."):
        for entry in os.listdir(w.vault / rel):
            if is_reserved(entry) or entry.endswith(fmt.LONGNAME_SUFFIX):
                continue
            for key in derived.values():
                with pytest.raises(IntegrityError):
                    DirKeys(headers[rel].obj_id, key).names.decrypt(entry)
    # And carol's share, whose record bob can read in the vault: his grant does not open its capsule.
    other = shares_mod.read(w.vault, w.share_other).record
    with pytest.raises((CapsuleError, ProxyUnreachable)):
        open_capsule(list(record.proxies), bob, record.owner, other.capsule, other.ciphertext, record.threshold,
                     record.grant_id, record.delegating_key)
    with pytest.raises(ProxyUnreachable, match="403"):  # nor may he use her grant
        open_capsule(list(other.proxies), bob, other.owner, other.capsule, other.ciphertext, other.threshold,
                     other.grant_id, other.delegating_key)


# -- (c) a captured request, replayed -----------------------------------------------------------

def test_a_captured_reencrypt_request_replayed_is_refused(world: World) -> None:
    w = world
    for p in w.proxies:
        for line in p.capture_file.read_text().splitlines():
            entry = json.loads(line)
            if entry["path"].endswith("/reencrypt") and entry["status"] == 200:
                with ProxyClient(p.url, w.admin) as client:
                    status, obj = client.send("POST", entry["path"], base64.b64decode(entry["request"]),
                                              headers=entry["headers"], signed=False)
                assert status == 401, obj
                assert "replayed" in obj["error"] or "away from the proxy's clock" in obj["error"]
                return
    raise AssertionError("no re-encryption was captured")


# -- (d) a reader cannot revoke or re-share ------------------------------------------------------

def test_the_recipient_cannot_revoke_or_reshare(world: World) -> None:
    w = world
    urls = [a for url in w.urls for a in ("--proxy", url)]
    result = w.bob.run("proxy", "revoke", w.share_x, *urls, "--threshold", "2", "--identity", "bob",
                       "--passphrase-file", w.bob.passfile)
    assert result.returncode == exitcodes.PROXY_UNREACHABLE, result.stderr
    assert result.stdout.count("(403 ") == 3 and "does NOT hold" in result.stdout
    # bob can neither re-share a part of his share nor revoke it from the CLI.
    for args in (("share", w.bob_view / "sub", "--with", "carol", *urls),
                 ("revoke", w.bob_view, "--from", "bob")):
        result = w.bob.run(*args, "--identity", "bob", "--passphrase-file", w.bob.passfile,
                           "--vault-passphrase-file", w.bob.passfile)
        one_line_error(result, exitcodes.ERROR, "a share you received", w.share_x)
    # The grant is intact at every proxy: bob's running mount reads, and a new one would open.
    assert (w.bob_view / "sub" / "b.txt").read_text() == "beta\n"
    bob = w.bob_identity()
    record = shares_mod.read(w.vault, w.share_x).record
    assert len(open_capsule(list(record.proxies), bob, record.owner, record.capsule, record.ciphertext, 3,
                            record.grant_id, record.delegating_key)) > 32  # all three still re-encrypt
    before = set(os.listdir(w.vault / shares_mod.SHARES_DIR))
    assert not any(line for p in w.proxies for line in p.capture_file.read_text().splitlines()
                   if json.loads(line)["path"] == "/v1/grants" and json.loads(line)["status"] in (200, 201)
                   and json.loads(base64.b64decode(json.loads(line)["request"]))["owner"] != _fingerprint(w.alice))
    assert set(os.listdir(w.vault / shares_mod.SHARES_DIR)) == before


def _fingerprint(env: Env) -> str:
    return identity_mod.list_identities(env.home)[0].fingerprint


# -- (e) a tampered capsule or cfrag -------------------------------------------------------------

def test_a_record_with_a_tampered_capsule_mounts_nothing(world: World) -> None:
    w = world
    path = shares_mod.record_path(w.vault, w.share_x)
    original = path.read_bytes()
    try:
        for position in (40,):  # every position, against the proxies themselves: tests/proxy/test_security.py
            obj = json.loads(original)
            capsule = bytearray(base64.b64decode(obj["sealed"]["capsule"]))
            capsule[position] ^= 0x10
            obj["sealed"]["capsule"] = base64.b64encode(bytes(capsule)).decode()
            path.write_text(json.dumps(obj))
            one_line_error(w.bob_mount_fails(w.share_x, f"tampered-{position}"), exitcodes.DAMAGE,
                           "signature does not verify")
    finally:
        path.write_bytes(original)


def test_cfrags_tampered_by_a_proxy_mount_nothing(world: World) -> None:
    w = world
    evil = TamperingProxy(w.urls[0])
    try:
        share_id = w.share("/projects/x/sub", "bob", "--threshold", "2", proxies=[evil.url, w.urls[1]])
        result = w.bob_mount_fails(share_id, "evil-view")
        one_line_error(result, exitcodes.PROXY_UNREACHABLE, "only 1 of 2 proxies reachable",
                       f"{evil.url} (returned a cfrag that does not verify)")
        assert evil.tampered >= 1  # (with a third, honest proxy the bad cfrag is skipped: tests/proxy/test_security.py)
    finally:
        evil.close()
    assert stat.S_IMODE(w.proxies[0].capture_file.stat().st_mode) == 0o600
