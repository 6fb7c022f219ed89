"""Another writer of a synced backing directory, as a sync tool applies its changes.

Syncthing, Dropbox and Nextcloud bring a remote change in by writing a temp file
next to the old one and renaming it over: the file gets a new backing inode, and
the old inode's number is free for the next file created anywhere.  What they
write is what the other device's umbrafs mount wrote there: the same file id and
DEK with new content (an edit in place on that device), or a new header (a file
saved by write-new-and-rename there).  This module produces exactly those files
with the project's own format code and applies them the way the sync tools do.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from fs.format import layout as fmt
from fs.vault.backing import join
from fs.vault.content import OpenFile
from fs.vault.headers import DirKeys, new_header, read_file_header
from fs.vault.keywalk import find, split_plain
from fs.format.names import backing_name, is_long
from fs.vault.config import UnlockedVault, unlock


class Peer:
    """Writes into the backing dir of *vault* behind the live mount's back."""

    def __init__(self, vault: Path, passphrase: str) -> None:
        self.vault = vault
        self.unlocked: UnlockedVault = unlock(vault, passphrase.encode())
        self._n = 0

    def _tmp(self, dir_rel: str) -> Path:
        self._n += 1
        return self.vault / dir_rel / f".syncthing.peer{self._n}.tmp"

    def _dir(self, plain: str) -> tuple[str, DirKeys]:
        target = find(self.unlocked, plain)
        return target.backing_rel, target.dir_keys()

    def _entry(self, plain: str) -> tuple[str, str, DirKeys]:
        *parents, name = split_plain(plain)
        dir_rel, keys = self._dir("/" + "/".join(p.decode("utf-8", "surrogateescape") for p in parents))
        return dir_rel, keys.names.encrypt(name), keys

    def backing_of(self, plain: str) -> str:
        """The backing path (relative to the vault) of a plaintext path."""
        dir_rel, c_name, _ = self._entry(plain)
        return join(dir_rel, backing_name(c_name))

    def new_backing(self, plain: str) -> tuple[str, str, DirKeys]:
        """(parent's backing path, backing name, parent's keys) for a plaintext path, with
        the long-name sidecar the other device's mount wrote for it."""
        dir_rel, c_name, keys = self._entry(plain)
        if is_long(c_name):
            (self.vault / join(dir_rel, backing_name(c_name) + fmt.LONGNAME_SUFFIX)).write_bytes(c_name.encode())
        return dir_rel, backing_name(c_name), keys

    def resync(self, plain: str) -> None:
        """The same bytes again under a new inode (cp -p then mv, as in issue 18)."""
        rel = self.backing_of(plain)
        tmp = self._tmp(os.path.dirname(rel) or ".")
        shutil.copy2(self.vault / rel, tmp)
        os.rename(tmp, self.vault / rel)

    def write(self, plain: str, data: bytes, *, new_id: bool = False, mode: int | None = None) -> None:
        """The other device's new version of *plain* (created if missing), renamed into place.

        *new_id*: it saved a new file (a new header and DEK), else it edited the file in place."""
        dir_rel, b_name, keys = self.new_backing(plain)
        rel = join(dir_rel, b_name)
        old: os.stat_result | None
        try:
            old = os.lstat(self.vault / rel)
        except FileNotFoundError:
            old = None
        if old is not None and not new_id and stat.S_ISREG(old.st_mode):
            fd = os.open(self.vault / rel, os.O_RDONLY)
            try:
                header = read_file_header(fd)
            finally:
                os.close(fd)
            dek = find(self.unlocked, plain).key
        else:
            header, dek = new_header(fmt.KIND_FILE, keys)
        tmp = self._tmp(dir_rel)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, header.pack())
            OpenFile(fd, header, dek).write(0, data)
            os.fchmod(fd, mode if mode is not None else stat.S_IMODE(old.st_mode) if old is not None else 0o644)
        finally:
            os.close(fd)
        os.rename(tmp, self.vault / rel)

    def delete(self, plain: str) -> None:
        rel = self.backing_of(plain)
        os.unlink(self.vault / rel)
        name = os.path.basename(rel)
        if name.startswith(fmt.LONGNAME_PREFIX):
            os.unlink(self.vault / (rel + fmt.LONGNAME_SUFFIX))

    def rename(self, src: str, dst: str) -> None:
        """A rename inside one directory (a cross-directory move re-wraps keys: not a sync tool's job)."""
        assert os.path.dirname(src.rstrip("/")) == os.path.dirname(dst.rstrip("/")), (src, dst)
        old_rel = self.backing_of(src)
        dir_rel, b_name, _ = self.new_backing(dst)
        os.rename(self.vault / old_rel, self.vault / join(dir_rel, b_name))
        old_name = os.path.basename(old_rel)
        if old_name.startswith(fmt.LONGNAME_PREFIX) and old_name != b_name:
            os.unlink(self.vault / (old_rel + fmt.LONGNAME_SUFFIX))
