"""Offline check of a vault: decrypt every header, name, symlink and block.

Beyond damage, it looks for content that belongs to another object: blocks that
fail under their own file's key but open under another file's (content written
into, or spliced from, the wrong file: damage), and two backing objects carrying
one id (a copy: reported, not counted as damage, since sync tools make them).
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fs.format import layout as fmt
from fs.vault.backing import join
from fs.vault.content import OpenFile
from fs.vault.entries import link_target, read_c_name
from fs.errors import IntegrityError, UmbrafsError
from fs.vault.headers import DirKeys, load_dir_keys, owner_keys, read_file_header
from fs.format.names import is_reserved
from fs.vault.config import UnlockedVault

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Problem:
    backing_path: str  # relative to the vault
    plain_path: str  # as far as it could be decrypted
    message: str


@dataclass(frozen=True, slots=True)
class _Seen:
    """A file or directory met on the walk, for the cross-object checks after it."""

    backing_path: str
    plain_path: str
    st_ino: int
    key: bytes = field(repr=False)  # a file's DEK (b"" for directories)


@dataclass(slots=True)
class Report:
    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    others: int = 0
    plain_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Not damage, but worth knowing: objects that are copies of another (one id, two inodes).
    copies: list[Problem] = field(default_factory=list)
    seen: dict[bytes, list[_Seen]] = field(default_factory=dict, repr=False)  # object id -> objects
    bad_blocks: list[tuple[Problem, str, list[int]]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(vault: UnlockedVault) -> Report:
    report = Report()
    root_fd = os.open(vault.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            keys = load_dir_keys(root_fd, ".", owner_keys(vault.root_wrap_key))
        except UmbrafsError as exc:
            report.problems.append(Problem(fmt.DIR_HEADER_NAME, "/", f"root directory header: {exc}"))
            return report
        report.dirs += 1
        _walk(root_fd, ".", "", keys, report)
        _same_ids(report)
        _foreign_blocks(root_fd, report)
    finally:
        os.close(root_fd)
    return report


def _entries(root_fd: int, rel: str) -> Iterator[os.DirEntry[str]]:
    fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        with os.scandir(fd) as it:
            yield from sorted(it, key=lambda e: e.name)
    finally:
        os.close(fd)


def _walk(root_fd: int, rel: str, plain: str, keys: DirKeys, report: Report) -> None:
    markers: set[str] = set()
    entries = list(_entries(root_fd, rel))
    names = {e.name for e in entries}
    for entry in entries:
        b_name = entry.name
        b_rel = join(rel, b_name)
        if is_reserved(b_name):
            if b_name.endswith(fmt.LONGNAME_SUFFIX) and b_name[: -len(fmt.LONGNAME_SUFFIX)] not in names:
                report.problems.append(Problem(b_rel, plain + "/", "long-name sidecar without its entry"))
            continue
        try:
            c_name = read_c_name(root_fd, rel, b_name)
            p_name = keys.names.decrypt(c_name).decode("utf-8", "backslashreplace")
        except (IntegrityError, OSError, UnicodeDecodeError) as exc:
            report.problems.append(Problem(b_rel, plain + "/?", f"name: {exc}"))
            continue
        p_path = f"{plain}/{p_name}"
        st = os.lstat(b_rel, dir_fd=root_fd)
        try:
            if stat.S_ISDIR(st.st_mode):
                report.dirs += 1
                sub = load_dir_keys(root_fd, b_rel, keys)
                report.seen.setdefault(sub.dir_id, []).append(_Seen(b_rel, p_path, st.st_ino, b""))
                _walk(root_fd, b_rel, p_path, sub, report)
            elif stat.S_ISREG(st.st_mode):
                report.files += 1
                _check_file(root_fd, b_rel, p_path, keys, report)
            elif stat.S_ISLNK(st.st_mode):
                report.symlinks += 1
                c_target = os.readlink(b_rel, dir_fd=root_fd)
                if c_target.startswith(fmt.LONGNAME_PREFIX):
                    markers.add(c_target)
                link_target(root_fd, rel, c_target, keys)
            else:
                report.others += 1
        except (UmbrafsError, OSError, UnicodeDecodeError) as exc:
            report.problems.append(Problem(b_rel, p_path, str(exc)))
    for b_name in names:
        if b_name.startswith(fmt.LONGNAME_PREFIX) and b_name.endswith(fmt.LONGLINK_SUFFIX):
            if b_name[: -len(fmt.LONGLINK_SUFFIX)] not in markers:
                report.problems.append(Problem(join(rel, b_name), plain + "/", "symlink sidecar without its symlink"))


def _check_file(root_fd: int, b_rel: str, p_path: str, keys: DirKeys, report: Report) -> None:
    fd = os.open(b_rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        st = os.fstat(fd)
        header = read_file_header(fd)
        of = OpenFile(fd, header, keys.unwrap(header))
        report.seen.setdefault(header.obj_id, []).append(_Seen(b_rel, p_path, st.st_ino, of.dek))
        try:
            of.verify_all()
        except IntegrityError as exc:
            bad = _bad_blocks(of)
            problem = Problem(b_rel, p_path, f"{exc}" + (f" ({len(bad)} bad blocks)" if len(bad) > 1 else ""))
            report.problems.append(problem)
            report.bad_blocks.append((problem, b_rel, bad))
            return
        report.plain_bytes += of.size
    finally:
        os.close(fd)


def _bad_blocks(of: OpenFile, limit: int = 16) -> list[int]:
    bad = []
    for block_no in range((of.size - 1) // fmt.BLOCK_SIZE + 1 if of.size else 0):
        try:
            of._decrypt_blocks(block_no, block_no, of.size)
        except IntegrityError:
            bad.append(block_no)
            if len(bad) >= limit:
                break
    return bad


def _same_ids(report: Report) -> None:
    """Distinct backing objects (not hard links of one) carrying one id."""
    for obj_id, objects in report.seen.items():
        first = objects[0]
        for other in objects[1:]:
            if other.st_ino != first.st_ino:
                report.copies.append(Problem(
                    other.backing_path, other.plain_path,
                    f"carries the id {obj_id.hex()} of {first.plain_path} (backing {first.backing_path}): "
                    "a copy of that object (a sync conflict, one name of a hard link replaced by a sync "
                    "tool, a restore, or a confused writer); they are separate objects now",
                ))


# A foreign block's number is in its AAD, so its place in its own file is searched for:
# the same number first in every file, then other numbers up to a budget of tries.
_SEARCH_BLOCKS = 256
_SEARCH_BUDGET = 200_000


def _foreign_blocks(root_fd: int, report: Report) -> None:
    """Name the file that a block failing under its own key belongs to, if it is in the vault."""
    if not report.bad_blocks:
        return
    candidates = [(obj_id, AESGCM(o.key), o) for obj_id, objs in report.seen.items() for o in objs[:1] if o.key]
    for problem, b_rel, blocks in report.bad_blocks:
        fd = os.open(b_rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=root_fd)
        try:
            header_len = read_file_header(fd).length
            found = []
            for block_no in blocks:
                raw = os.pread(fd, fmt.CIPHER_BLOCK_SIZE, fmt.block_offset(block_no, header_len))
                owner = _owner_of(raw, block_no, candidates, problem.backing_path)
                if owner is not None:
                    found.append(f"block {block_no} is block {owner[1]} of {owner[0].plain_path} (file id {owner[2].hex()})")
        finally:
            os.close(fd)
        if found:
            index = report.problems.index(problem)
            report.problems[index] = Problem(problem.backing_path, problem.plain_path,
                                             f"{problem.message}; content of another file: " + "; ".join(found[:4]))


def _owner_of(raw: bytes, block_no: int, candidates: list[tuple[bytes, AESGCM, _Seen]], own: str) -> tuple[_Seen, int, bytes] | None:
    if len(raw) <= fmt.BLOCK_OVERHEAD:
        return None
    nonce, body = raw[: fmt.NONCE_LEN], raw[fmt.NONCE_LEN :]
    others = [c for c in candidates if c[2].backing_path != own]
    budget = _SEARCH_BUDGET
    for numbers in ((block_no,), range(_SEARCH_BLOCKS)):
        for obj_id, aead, seen in others:
            for k in numbers:
                for final in (False, True):
                    budget -= 1
                    if budget < 0:
                        return None
                    try:
                        aead.decrypt(nonce, body, fmt.block_aad(obj_id, k, final))
                    except InvalidTag:
                        continue
                    return seen, k, obj_id
    return None
