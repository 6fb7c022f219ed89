"""Offline check of a vault: decrypt every header, name, symlink and block."""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import backing
from . import format as fmt
from .backing import join
from .content import OpenFile
from .errors import IntegrityError, UmbrafsError
from .headers import DirKeys, load_dir_keys, owner_keys, read_file_header
from .names import is_reserved
from .vault import UnlockedVault

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Problem:
    backing_path: str  # relative to the vault
    plain_path: str  # as far as it could be decrypted
    message: str


@dataclass(slots=True)
class Report:
    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    others: int = 0
    plain_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

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
            if b_name.startswith(fmt.LONGNAME_PREFIX):
                c_name = backing.read_small_file(root_fd, join(rel, b_name + fmt.LONGNAME_SUFFIX)).decode("ascii")
            else:
                c_name = b_name
            p_name = keys.names.decrypt(c_name).decode("utf-8", "backslashreplace")
        except (IntegrityError, OSError, UnicodeDecodeError) as exc:
            report.problems.append(Problem(b_rel, plain + "/?", f"name: {exc}"))
            continue
        p_path = f"{plain}/{p_name}"
        st = os.lstat(b_rel, dir_fd=root_fd)
        try:
            if stat.S_ISDIR(st.st_mode):
                report.dirs += 1
                _walk(root_fd, b_rel, p_path, load_dir_keys(root_fd, b_rel, keys), report)
            elif stat.S_ISREG(st.st_mode):
                report.files += 1
                _check_file(root_fd, b_rel, keys, report)
            elif stat.S_ISLNK(st.st_mode):
                report.symlinks += 1
                c_target = os.readlink(b_rel, dir_fd=root_fd)
                if c_target.startswith(fmt.LONGNAME_PREFIX):
                    markers.add(c_target)
                    c_target = backing.read_small_file(root_fd, join(rel, c_target + fmt.LONGLINK_SUFFIX)).decode("ascii")
                keys.decrypt_link(c_target)
            else:
                report.others += 1
        except (UmbrafsError, OSError, UnicodeDecodeError) as exc:
            report.problems.append(Problem(b_rel, p_path, str(exc)))
    for b_name in names:
        if b_name.startswith(fmt.LONGNAME_PREFIX) and b_name.endswith(fmt.LONGLINK_SUFFIX):
            if b_name[: -len(fmt.LONGLINK_SUFFIX)] not in markers:
                report.problems.append(Problem(join(rel, b_name), plain + "/", "symlink sidecar without its symlink"))


def _check_file(root_fd: int, b_rel: str, keys: DirKeys, report: Report) -> None:
    fd = os.open(b_rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        header = read_file_header(fd)
        of = OpenFile(fd, header, keys.unwrap(header))
        of.verify_all()
        report.plain_bytes += of.size
    finally:
        os.close(fd)
