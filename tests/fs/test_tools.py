"""Real tools on a real mount: cp, diff, rsync, tar, git, vim, sqlite and
the file patterns editors and databases rely on.

Each test is skipped (with the reason) only when its tool is missing; CI
installs them all.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Mount

BLOCK = 16384
SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, (1 << 20) + 123]



def wait_all(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    """Every worker exits 0; none is left running whatever happens."""
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def run(*cmd: str | os.PathLike[str], cwd: Path | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, env={**os.environ, **env} if env else None,
    )
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_tree(root: Path) -> None:
    """Binary files around the block boundary, symlinks, empty dirs, odd modes and mtimes."""
    root.mkdir()
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "sub" / "empty-too").mkdir()
    for i, size in enumerate(SIZES):
        (root / f"bin-{size}").write_bytes(os.urandom(size))
        (root / "sub" / f"copy-{i}").write_bytes(os.urandom(size // 2))
    (root / "sub" / "deeper" / "text.txt").write_text("hello\n" * 1000)
    (root / "link-rel").symlink_to("sub/deeper/text.txt")
    (root / "sub" / "link-up").symlink_to("../bin-1")
    (root / "link-dangling").symlink_to("does/not/exist")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "link-dir").symlink_to("sub")
    os.chmod(root / "bin-1", 0o600)
    os.chmod(root / f"bin-{BLOCK}", 0o755)
    os.chmod(root / "sub" / "copy-0", 0o444)
    os.chmod(root / "sub" / "deeper", 0o750)
    os.chmod(root / "empty", 0o700)
    # Distinct, nanosecond-precise mtimes; directories last (filling them changed theirs).
    base = 1_500_000_000_000_000_000
    paths = sorted(root.rglob("*"), key=lambda p: (p.is_dir() and not p.is_symlink(), -len(p.parts)))
    for n, path in enumerate(paths):
        t = base + n * 1_000_000_123
        os.utime(path, ns=(t + 7, t), follow_symlinks=False)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything cp -a / rsync -a / tar promise to keep, per relative path."""
    out: dict[str, tuple] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            body: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            body = hashlib.sha256(path.read_bytes()).hexdigest()
            assert st.st_size == path.stat().st_size
        else:
            body = None
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        mtime = st.st_mtime_ns if rel != "." else None
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else None, size, mtime, body)
    return out


def test_cp_a_and_diff_round_trip(mounted: Mount, tmp_path: Path) -> None:
    need("cp", "diff")
    src = tmp_path / "src"
    make_tree(src)
    want = snapshot(src)
    into = mounted.path / "tree"
    run("cp", "-a", src, into)
    run("diff", "-r", "--no-dereference", src, into)
    assert snapshot(into) == want
    back = tmp_path / "back"
    run("cp", "-a", into, back)
    run("diff", "-r", "--no-dereference", src, back)
    assert snapshot(back) == want
    # And after a remount: nothing lived only in the page cache.
    mounted.remount()
    run("diff", "-r", "--no-dereference", src, into)
    assert snapshot(into) == want


def test_rsync_a_twice_copies_nothing_the_second_time(mounted: Mount, tmp_path: Path) -> None:
    need("rsync")
    src = tmp_path / "src"
    make_tree(src)
    dst = mounted.path / "mirror"
    first = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/")
    assert "bin-16384" in first
    assert snapshot(dst) == snapshot(src)
    second = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{dst}/")
    assert second.strip() == "", f"second rsync changed things:\n{second}"
    # The other direction too: mount -> plain, then again with nothing to do.
    out = tmp_path / "out"
    run("rsync", "-a", f"{dst}/", f"{out}/")
    assert run("rsync", "-a", "--itemize-changes", "--checksum", f"{dst}/", f"{out}/").strip() == ""
    assert snapshot(out) == snapshot(src)


def test_tar_into_the_mount_and_back_out(mounted: Mount, tmp_path: Path) -> None:
    need("tar")
    # pax keeps nanosecond mtimes; no atime/ctime or pid in it, so two runs are byte-identical.
    pax = ["--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"]
    src = tmp_path / "src"
    make_tree(src)
    archive = mounted.path / "tree.tar"
    run("tar", *pax, "-C", src, "-cf", archive, ".")
    reference = tmp_path / "reference.tar"
    run("tar", *pax, "-C", src, "-cf", reference, ".")
    assert archive.read_bytes() == reference.read_bytes()
    # Extract inside the mount, archive that again, extract on the plain side.
    inside = mounted.path / "extracted"
    inside.mkdir()
    run("tar", "-C", inside, "-xpf", archive)
    assert snapshot(inside) == snapshot(src)
    again = mounted.path / "again.tar"
    run("tar", *pax, "-C", inside, "-cf", again, ".")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-C", out, "-xpf", again)
    assert snapshot(out) == snapshot(src)


def test_git_workflow(mounted: Mount) -> None:
    need("git")
    repo = mounted.path / "repo"
    repo.mkdir()
    git_env = ["-c", "user.name=T", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main",
               "-c", "gc.auto=0", "-c", "core.fsync=all"]

    isolated = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}

    def git(*args: str) -> str:
        return run("git", *git_env, *args, cwd=repo, env=isolated)

    git("init", "-q")
    for n in range(3):
        (repo / f"file{n}.txt").write_text(f"line {n}\n" * (n * 3000 + 1))
    (repo / "bin").write_bytes(os.urandom(3 * BLOCK + 5))
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    git("branch", "feature")
    git("checkout", "-q", "feature")
    (repo / "file1.txt").write_text("changed on feature\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "new.txt").write_text("new\n")
    git("add", "-A")
    git("commit", "-q", "-m", "feature work")
    git("mv", "file2.txt", "sub/moved.txt")
    git("commit", "-q", "-m", "move")
    git("checkout", "-q", "main")
    assert (repo / "file1.txt").read_text() == "line 1\n" * 3001
    assert not (repo / "sub").exists()
    (repo / "file0.txt").write_text("changed on main\n")
    git("commit", "-q", "-am", "main work")
    git("merge", "-q", "--no-edit", "feature")
    assert (repo / "sub" / "moved.txt").read_text() == "line 2\n" * 6001
    assert git("rev-list", "--count", "HEAD").strip() == "5"
    git("gc", "-q", "--aggressive", "--prune=now")
    assert list((repo / ".git" / "objects" / "pack").glob("*.pack"))
    fsck = subprocess.run(["git", "fsck", "--full", "--strict"], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **isolated})
    assert fsck.returncode == 0 and fsck.stdout == "" and "error" not in fsck.stderr.lower(), fsck.stdout + fsck.stderr
    assert git("status", "--porcelain", "--untracked-files=all") == ""
    mounted.remount()
    assert git("fsck", "--full") == ""
    assert git("status", "--porcelain") == ""
    assert git("log", "--format=%s", "-1").strip().startswith("Merge")


def test_vim_ex_mode_edit(mounted: Mount) -> None:
    need("vim")
    path = mounted.path / "notes.txt"
    path.write_text("".join(f"line {i} foo\n" for i in range(5000)))
    os.chmod(path, 0o640)
    vim = ["vim", "-Nu", "NONE", "-i", "NONE", "-n", "-es"]
    # In place (vim's default for a file it may overwrite).
    result = subprocess.run(
        [*vim, "-c", "%s/foo/bar/g", "-c", "1d", "-c", "$put ='appended at the end'", "-c", "wq", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    want = "".join(f"line {i} bar\n" for i in range(1, 5000)) + "appended at the end\n"
    assert path.read_text() == want
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    # The other way: rename the original to a backup, write a new file, copy the mode.
    ino = os.stat(path).st_ino
    result = subprocess.run(
        [*vim, "-c", "set backup backupcopy=no backupdir=. backupext=.orig backupskip=",
         "-c", "g/^line [0-9]*0 /d", "-c", "wq", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=mounted.path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = path.read_text().splitlines()
    assert len(lines) == 4999 - 499 + 1 and not any(line.startswith("line 10 ") for line in lines)
    assert sorted(os.listdir(mounted.path)) == ["notes.txt", "notes.txt.orig"]  # no swap file
    assert (mounted.path / "notes.txt.orig").read_text() == want
    assert os.stat(mounted.path / "notes.txt.orig").st_ino == ino
    assert os.stat(path).st_ino != ino
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    mounted.remount()
    assert path.read_text().splitlines() == lines
    assert (mounted.path / "notes.txt.orig").read_text() == want


SQLITE_WRITER = textwrap.dedent("""
    import sqlite3, sys
    db, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    con.execute("PRAGMA busy_timeout=60000")
    for i in range(count):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t(tag, n, payload) VALUES (?, ?, ?)", (tag, i, f"{tag}:{i}:" + "x" * (i * 37 % 3000)))
        con.execute("COMMIT")
    con.close()
""")


def _check_db(db: Path, writers: int, inserts: int) -> None:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*) FROM t").fetchone() == (writers * inserts,)
        assert con.execute("SELECT count(DISTINCT tag || ':' || n) FROM t").fetchone() == (writers * inserts,)
        for tag, n, payload in con.execute("SELECT tag, n, payload FROM t"):
            assert payload == f"{tag}:{n}:" + "x" * (n * 37 % 3000)
    finally:
        con.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_concurrent_writers(mounted: Mount, journal_mode: str) -> None:
    import sqlite3

    writers, inserts = 4, 200
    db = mounted.path / "db" / "test.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone() == (journal_mode,)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, tag TEXT, n INTEGER, payload TEXT)")
    con.commit()
    con.close()
    procs = [
        subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(db), f"w{k}", str(inserts)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(writers)
    ]
    wait_all(procs, timeout=240)
    _check_db(db, writers, inserts)
    if shutil.which("sqlite3"):
        assert run("sqlite3", db, "PRAGMA integrity_check;").strip() == "ok"
    mounted.remount()
    _check_db(db, writers, inserts)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone() == (journal_mode,)
    con.close()


ATOMIC_READER = textwrap.dedent("""
    import hashlib, os, sys, time
    path, stop = sys.argv[1], sys.argv[2]
    seen, reads, last = set(), 0, -1
    while not os.path.exists(stop):
        try:
            size = os.stat(path).st_size
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            print(f"MISSING {exc}", flush=True)
            sys.exit(1)
        head, _, body = data.partition(b"\\n")
        version, length, digest = head.split(b" ")
        if len(body) != int(length) or hashlib.sha256(body).hexdigest().encode() != digest:
            print(f"TORN version {version!r} len {len(body)} want {int(length)}", flush=True)
            sys.exit(1)
        if int(version) < last:
            print(f"BACKWARDS {int(version)} after {last}", flush=True)
            sys.exit(1)
        last = int(version)
        seen.add(last)
        reads += 1
    print(f"OK {reads} {len(seen)}", flush=True)
""")


def _versioned(version: int) -> bytes:
    body = os.urandom(version * 997 % (3 * BLOCK + 7))
    return b"%d %d %s\n" % (version, len(body), hashlib.sha256(body).hexdigest().encode()) + body


def test_atomic_write_then_rename(mounted: Mount, tmp_path: Path) -> None:
    target = mounted.path / "config.json"
    target.write_bytes(_versioned(0))
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", ATOMIC_READER, str(target), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        versions = 300
        for version in range(1, versions + 1):
            tmp = mounted.path / f".config.json.tmp{version % 3}"
            with open(tmp, "wb") as f:
                f.write(_versioned(version))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            assert reader.poll() is None, reader.communicate()
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        stop.touch()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, out + err
    _, reads, distinct = out.split()
    assert int(reads) > 0 and int(distinct) >= 2, out  # the reader really raced the writer
    head = target.read_bytes().partition(b"\n")[0]
    assert head.split(b" ")[0] == str(versions).encode()
    assert sorted(os.listdir(mounted.path)) == ["config.json"]


APPENDER = textwrap.dedent("""
    import os, sys
    path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(count):
        line = f"{tag} {i:06d} " + tag[0] * (i * 131 % 700) + "\\n"
        assert os.write(fd, line.encode()) == len(line)
    os.close(fd)
""")


def test_two_processes_append(mounted: Mount) -> None:
    path = mounted.path / "log.txt"
    path.write_bytes(b"")
    count = 2000
    tags = ["alpha", "bravo"]
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), tag, str(count)],
                              stderr=subprocess.PIPE, text=True) for tag in tags]
    wait_all(procs, timeout=120)

    def check(data: str) -> None:
        lines = data.split("\n")
        assert lines[-1] == ""
        lines = lines[:-1]
        assert len(lines) == len(tags) * count
        expected = {f"{tag} {i:06d} " + tag[0] * (i * 131 % 700) for tag in tags for i in range(count)}
        assert set(lines) == expected and len(set(lines)) == len(lines)
        for tag in tags:  # each writer's lines in its own order
            mine = [l for l in lines if l.startswith(tag)]
            assert mine == sorted(mine)

    check(path.read_text())
    mounted.remount()
    check(path.read_text())
