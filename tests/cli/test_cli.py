"""The real `umbrafs` command line: exit codes, one-line errors, passphrase
sources, foreground mounts and signals, read-only, allow_other, two people.

User mistakes must print exactly one line on stderr (no traceback) and exit
with the code documented in cli/exitcodes.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli import exitcodes
from tests.conftest import FAST_KDF, PASSPHRASE, UMBRAFS, Env, Mount, force_unmount, is_mounted, process_gone


# -- helpers ----------------------------------------------------------------

def assert_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit *code*, and stderr is one clear line naming the problem."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_passfile(path: Path, secret: str) -> Path:
    path.write_text(secret + "\n")
    return path


def mount_pid(env: Env, mountpoint: Path) -> int:
    return int(env.mount_record(mountpoint)["pid"])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Extra:
    """Mounts a test makes outside the `mounted` fixture; all unmounted in teardown."""

    def __init__(self) -> None:
        self.mounts: list[tuple[Env, Path]] = []
        self.procs: list[subprocess.Popen[str]] = []

    def track(self, env: Env, mountpoint: Path) -> int:
        self.mounts.append((env, mountpoint))
        return mount_pid(env, mountpoint)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for env, mountpoint in self.mounts:
            record = None
            try:
                record = env.mount_record(mountpoint)
            except AssertionError:
                pass
            force_unmount(mountpoint, int(record["pid"]) if record else None)
            for log in (env.home / "logs").glob("mount-*.log"):
                text = log.read_text(errors="replace")
                assert "Traceback" not in text and "unexpected error" not in text, text


@pytest.fixture
def extra() -> Iterator[Extra]:
    tracker = Extra()
    try:
        yield tracker
    finally:
        tracker.close()


def backing_snapshot(vault: Path) -> dict[str, tuple[bytes, int]]:
    """Contents and mtimes of every backing object except vault.json."""
    snap = {}
    for path in sorted(vault.rglob("*")):
        if path.name == "vault.json" or path.is_dir():
            continue
        st = path.lstat()
        data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        snap[str(path.relative_to(vault))] = (data, st.st_mtime_ns)
    return snap


# -- wrong passphrase ---------------------------------------------------------

@pytest.mark.parametrize("command", ["mount", "passwd", "fsck"])
def test_wrong_passphrase(env: Env, vault: Path, command: str) -> None:
    wrong = write_passfile(env.tmp / "wrong", "not the passphrase")
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    args: list[str | Path] = [command, vault]
    if command == "mount":
        args.append(mnt)
    args += ["--passphrase-file", wrong]
    if command == "passwd":
        args += ["--new-passphrase-file", write_passfile(env.tmp / "new", "new secret")]
    before = (vault / "vault.json").read_bytes()
    assert_error(env.run(*args), exitcodes.WRONG_PASSPHRASE, "wrong passphrase")
    assert not is_mounted(mnt)
    assert not list((env.home / "mounts").glob("*.json"))
    assert (vault / "vault.json").read_bytes() == before  # passwd changed nothing


# -- not a vault, newer format, damaged config ---------------------------------

def test_mount_missing_vault(env: Env) -> None:
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    missing = env.tmp / "nowhere"
    assert_error(
        env.run("mount", missing, mnt, "--passphrase-file", env.passfile), exitcodes.NOT_A_VAULT, str(missing)
    )


def test_mount_directory_that_is_not_a_vault(env: Env) -> None:
    mnt, plain = env.tmp / "mnt", env.tmp / "plain"
    mnt.mkdir()
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    line = assert_error(env.run("mount", plain, mnt, "--passphrase-file", env.passfile), exitcodes.NOT_A_VAULT)
    assert "not an umbrafs vault" in line


@pytest.mark.parametrize("command", ["mount", "fsck"])
def test_newer_vault_format(env: Env, vault: Path, command: str) -> None:
    config = json.loads((vault / "vault.json").read_text())
    config["version"] = 99
    (vault / "vault.json").write_text(json.dumps(config))
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    args = ["mount", vault, mnt] if command == "mount" else ["fsck", vault]
    line = assert_error(env.run(*args, "--passphrase-file", env.passfile), exitcodes.UNSUPPORTED_FORMAT, "99")
    assert exitcodes.UNSUPPORTED_FORMAT == 13
    assert "newer" in line and "upgrade" in line
    assert not is_mounted(mnt)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
        pytest.param(lambda text: "\x00\xff garbage", id="garbage"),
        pytest.param(lambda text: text.replace('"wrapped_key": "', '"wrapped_key": "!!'), id="bad-key-field"),
    ],
)
def test_damaged_vault_json(env: Env, vault: Path, damage: Callable[[str], str]) -> None:
    cfg = vault / "vault.json"
    cfg.write_text(damage(cfg.read_text()))
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    line = assert_error(env.run("mount", vault, mnt, "--passphrase-file", env.passfile), exitcodes.NOT_A_VAULT)
    assert "damaged" in line and "vault.json" in line
    assert not is_mounted(mnt)


def test_init_into_non_empty_directory(env: Env) -> None:
    target = env.tmp / "full"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    assert_error(
        env.run("init", target, "--passphrase-file", env.passfile, *FAST_KDF), exitcodes.VAULT_EXISTS, "not empty"
    )
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


# -- mountpoints ---------------------------------------------------------------

def test_missing_mountpoint(env: Env, vault: Path) -> None:
    assert_error(
        env.run("mount", vault, env.tmp / "nomnt", "--passphrase-file", env.passfile),
        exitcodes.MOUNTPOINT, "does not exist",
    )


def test_mountpoint_is_a_file(env: Env, vault: Path) -> None:
    target = env.tmp / "afile"
    target.write_text("x")
    assert_error(
        env.run("mount", vault, target, "--passphrase-file", env.passfile), exitcodes.MOUNTPOINT, "not a directory"
    )


def test_non_empty_mountpoint(env: Env, vault: Path) -> None:
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    (mnt / "there").write_text("x")
    assert_error(env.run("mount", vault, mnt, "--passphrase-file", env.passfile), exitcodes.MOUNTPOINT, "not empty")
    assert not is_mounted(mnt)


def test_already_mounted(mounted: Mount) -> None:
    env = mounted.env
    assert_error(
        env.run("mount", mounted.vault, mounted.path, "--passphrase-file", env.passfile),
        exitcodes.MOUNTPOINT, "already mounted",
    )
    (mounted.path / "still").write_text("works")
    assert (mounted.path / "still").read_text() == "works"


@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "missing"])
def test_unmount_not_mounted(env: Env, exists: bool) -> None:
    target = env.tmp / "mnt"
    if exists:
        target.mkdir()
    assert_error(env.run("unmount", target), exitcodes.MOUNTPOINT, "not mounted")


def test_unmount_busy_then_lazy(mounted: Mount) -> None:
    env = mounted.env
    (mounted.path / "open-me").write_bytes(b"held open")
    with open(mounted.path / "open-me", "rb") as held:
        line = assert_error(env.run("unmount", mounted.path), exitcodes.MOUNTPOINT, "busy")
        assert "--lazy" in line
        assert exitcodes.MOUNTPOINT == 14
        assert is_mounted(mounted.path)
        result = env.run("unmount", "--lazy", mounted.path)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mounted.path)
        assert held.read() == b"held open"  # the open file keeps working after the detach
        assert not process_gone(mounted.pid)
    assert wait_until(lambda: process_gone(mounted.pid)), "mount process did not exit after the last close"


def test_dev_fuse_missing(env: Env, vault: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True
    ).returncode != 0:
        pytest.skip("unshare --mount is not permitted here")
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    cli = " ".join([*UMBRAFS, "--home", str(env.home), "mount", str(vault), str(mnt), "--passphrase-file", str(env.passfile)])
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none /dev && exec {cli}"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert_error(result, exitcodes.FUSE_UNAVAILABLE, "/dev/fuse")
    assert exitcodes.FUSE_UNAVAILABLE == 15
    assert not is_mounted(mnt)


def test_no_passphrase_source_and_stdin_not_a_tty(env: Env, vault: Path) -> None:
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    line = assert_error(env.run("mount", vault, mnt), exitcodes.USAGE, "passphrase")
    assert "--passphrase-file" in line
    assert not is_mounted(mnt)
    assert_error(env.run("fsck", vault), exitcodes.USAGE, "passphrase")


# -- passphrases ----------------------------------------------------------------

def test_passwd_changes_passphrase_without_reencrypting(mounted: Mount) -> None:
    env = mounted.env
    (mounted.path / "doc.txt").write_bytes(b"contents " * 5000)
    (mounted.path / "d").mkdir()
    (mounted.path / "d" / "inner").write_bytes(os.urandom(70_000))
    os.symlink("d/inner", mounted.path / "link")
    inner = (mounted.path / "d" / "inner").read_bytes()
    mounted.unmount()
    before = backing_snapshot(mounted.vault)
    config_before = (mounted.vault / "vault.json").read_bytes()
    new = write_passfile(env.tmp / "new", "a brand new passphrase")
    result = env.run("passwd", mounted.vault, "--passphrase-file", env.passfile, "--new-passphrase-file", new)
    assert result.returncode == 0, result.stderr
    assert backing_snapshot(mounted.vault) == before  # only vault.json changed
    assert (mounted.vault / "vault.json").read_bytes() != config_before
    assert_error(
        env.run("mount", mounted.vault, mounted.path, "--passphrase-file", env.passfile),
        exitcodes.WRONG_PASSPHRASE, "wrong passphrase",
    )
    result = env.run("mount", mounted.vault, mounted.path, "--passphrase-file", new)
    assert result.returncode == 0, result.stderr
    mounted.pid = mount_pid(env, mounted.path)
    assert (mounted.path / "doc.txt").read_bytes() == b"contents " * 5000
    assert (mounted.path / "d" / "inner").read_bytes() == inner
    assert os.readlink(mounted.path / "link") == "d/inner"
    assert env.run("fsck", mounted.vault, "--passphrase-file", new).returncode == 0


def assert_secret_not_exposed(env: Env, pid: int, secret: str) -> None:
    """Not in the mount process's argv, environment or log."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read()
    assert argv and secret.encode() not in argv, argv
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert secret.encode() not in f.read()
    logs = "".join(p.read_text(errors="replace") for p in (env.home / "logs").glob("*"))
    assert secret not in logs


def test_passphrase_from_environment(env: Env, vault: Path, extra: Extra) -> None:
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    result = env.run("mount", vault, mnt, env={"UMBRAFS_PASSPHRASE": PASSPHRASE})
    assert result.returncode == 0, result.stderr
    pid = extra.track(env, mnt)
    (mnt / "f").write_text("via env")
    assert (mnt / "f").read_text() == "via env"
    assert_secret_not_exposed(env, pid, PASSPHRASE)
    wrong = env.run("fsck", vault, env={"UMBRAFS_PASSPHRASE": "nope"})
    assert_error(wrong, exitcodes.WRONG_PASSPHRASE, "wrong passphrase")


def test_passphrase_from_fd(env: Env, vault: Path, extra: Extra) -> None:
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    r, w = os.pipe()
    os.write(w, PASSPHRASE.encode())
    os.close(w)
    try:
        result = subprocess.run(
            [*UMBRAFS, "--home", str(env.home), "mount", str(vault), str(mnt), "--passphrase-fd", str(r)],
            pass_fds=(r,), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        )
    finally:
        os.close(r)
    assert result.returncode == 0, result.stderr
    pid = extra.track(env, mnt)
    (mnt / "f").write_text("via fd")
    assert (mnt / "f").read_text() == "via fd"
    assert_secret_not_exposed(env, pid, PASSPHRASE)


def test_passphrase_not_in_argv_or_log(mounted: Mount) -> None:
    (mounted.path / "f").write_text("x")
    with pytest.raises(FileNotFoundError):
        (mounted.path / "missing").read_text()
    assert_secret_not_exposed(mounted.env, mounted.pid, PASSPHRASE)


# -- foreground and signals ------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_foreground_mount_unmounts_on_signal(env: Env, vault: Path, extra: Extra, signum: int) -> None:
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*UMBRAFS, "--home", str(env.home), "mount", "-f", str(vault), str(mnt), "--passphrase-file", str(env.passfile)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    extra.procs.append(proc)
    extra.mounts.append((env, mnt))
    assert wait_until(lambda: is_mounted(mnt) or proc.poll() is not None), "mount did not appear"
    assert proc.poll() is None, proc.communicate()
    (mnt / "f").write_text("foreground")  # served: the loop (and its signal handler) runs
    assert proc.poll() is None  # still in the foreground
    assert mount_pid(env, mnt) == proc.pid
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert not is_mounted(mnt)
    assert not list((env.home / "mounts").glob("*.json"))
    remount = env.mount(vault, mnt)
    extra.track(env, mnt)
    assert (remount.path / "f").read_text() == "foreground"


# -- read-only, allow_other, two people -----------------------------------------------

def test_read_only_mount(env: Env, vault: Path) -> None:
    m = env.mount(vault, env.tmp / "mnt")
    (m.path / "f").write_text("before")
    m.remount("--read-only")
    try:
        before = backing_snapshot(vault)
        assert (m.path / "f").read_text() == "before"
        for action in (
            lambda: (m.path / "f").write_text("after"),
            lambda: (m.path / "new").write_text("x"),
            lambda: (m.path / "dir").mkdir(),
            lambda: (m.path / "f").unlink(),
            lambda: os.chmod(m.path / "f", 0o600),
        ):
            with pytest.raises(OSError) as info:
                action()
            assert info.value.errno == errno.EROFS
        assert env.mount_record(m.path)["read_only"] is True
        assert backing_snapshot(vault) == before
    finally:
        force_unmount(m.path, m.pid)


def run_as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd],
        capture_output=True, text=True, timeout=30,
    )


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_allow_other(env: Env, vault: Path) -> None:
    # A mountpoint other users can reach (pytest's tmp dirs are 0700).
    top = Path(tempfile.mkdtemp(prefix="umbrafs-allow-other-"))
    os.chmod(top, 0o755)
    mnt = top / "mnt"
    m = env.mount(vault, mnt)
    try:
        assert stat.S_IMODE(os.stat(mnt).st_mode) & 0o005 == 0o005, oct(os.stat(mnt).st_mode)
        (mnt / "public").write_text("for everyone")
        (mnt / "private").write_text("for root only")
        os.chmod(mnt / "public", 0o644)
        os.chmod(mnt / "private", 0o600)
        denied = run_as_nobody("cat", str(mnt / "public"))
        assert denied.returncode != 0  # without allow_other, other users see nothing
        m.remount("--allow-other")
        public = run_as_nobody("cat", str(mnt / "public"))
        assert public.returncode == 0 and public.stdout == "for everyone", public.stderr
        private = run_as_nobody("cat", str(mnt / "private"))
        assert private.returncode != 0 and "Permission denied" in private.stderr, private
        created = run_as_nobody("touch", str(mnt / "nobody-was-here"))
        assert created.returncode != 0  # the root dir is 0755 root's
    finally:
        force_unmount(mnt, m.pid)
        shutil.rmtree(top)


def test_two_people_two_vaults(env: Env, vault: Path, extra: Extra) -> None:
    bob = Env(env.tmp / "bob", env.tmp / "bob" / "home", env.tmp / "bob-pass")
    bob.tmp.mkdir()
    write_passfile(bob.passfile, "bob's own secret")
    bob_vault = bob.init(bob.tmp / "vault")
    alice_mnt, bob_mnt = env.tmp / "alice-mnt", bob.tmp / "mnt"
    env.mount(vault, alice_mnt)
    extra.track(env, alice_mnt)
    bob.mount(bob_vault, bob_mnt)
    extra.track(bob, bob_mnt)
    (alice_mnt / "a").write_text("alice")
    (bob_mnt / "b").write_text("bob")
    assert os.listdir(alice_mnt) == ["a"] and os.listdir(bob_mnt) == ["b"]
    # Each home records only its own mount.
    assert [json.loads(p.read_text())["mountpoint"] for p in (env.home / "mounts").glob("*.json")] == [str(alice_mnt)]
    assert [json.loads(p.read_text())["mountpoint"] for p in (bob.home / "mounts").glob("*.json")] == [str(bob_mnt)]
    # Bob's passphrase does not open Alice's vault.
    assert_error(env.run("fsck", vault, "--passphrase-file", bob.passfile), exitcodes.WRONG_PASSPHRASE)
    assert bob.run("unmount", bob_mnt).returncode == 0
    assert not is_mounted(bob_mnt) and is_mounted(alice_mnt)
    assert (alice_mnt / "a").read_text() == "alice"
    assert env.run("unmount", alice_mnt).returncode == 0
    assert not is_mounted(alice_mnt)
