"""What each activity does, run inside a child process that has become the activity's user.

Every function takes a :class:`Ctx` and returns a dict of counts.  Attacks stop at the first
refused request (EACCES/EPERM/EIO/ENOTCONN/ENOENT: the mount was locked, unmounted or the
share revoked) and report what they got done before it: that is the defence's response as the
attacker sees it.  Content is generated from a seed: text-like documents (~4.5 bits/byte),
and compressed-looking media (random bytes, ~8 bits/byte) for PDFs, images and archives.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIB, MIB = 1024, 1024 * 1024
# What a defence looks like from the attacker's side.
RESPONSE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTCONN, errno.ENOENT, errno.EROFS})

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no what up "
         "report budget quarter meeting project client invoice draft review summary figures team plan "
         "contract deadline schedule risk design release customer feature revenue analysis proposal").split()


class Ctx:
    """The child's view: the mount root, the user's home in it, its own random source."""

    def __init__(self, root: Path, home: Path, seed: int, params: dict[str, Any]) -> None:
        self.root = root
        self.home = home
        self.rng = random.Random(seed)
        self.params = params


class Responded(Exception):
    """The defence answered: a request was refused."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.errno = exc.errno
        self.t_real = time.monotonic()


# ------------------------------------------------------------------ content


def text_bytes(rng: random.Random, size: int) -> bytes:
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + ".\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def media_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


_CODE_POOL: bytes = b""


def _code_pool() -> bytes:
    """Machine-code-like bytes: a skewed byte distribution (~6 bits/byte, as x86 .text measures)."""
    global _CODE_POOL
    if not _CODE_POOL:
        rng = random.Random(99)
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(256)]
        order = list(range(256))
        rng.shuffle(order)
        _CODE_POOL = bytes(rng.choices(order, weights, k=1 << 16))
    return _CODE_POOL


def object_bytes(rng: random.Random, size: int) -> bytes:
    """Compiler output: an ELF-ish header, code, a symbol string table, zero padding (~5-6 bits/byte)."""
    pool = _code_pool()
    out = [b"\x7fELF\x02\x01\x01" + bytes(57)]
    n = 64
    while n < size:
        k = rng.randint(64, 2048)
        r = rng.random()
        if r < 0.6:
            start = rng.randint(0, len(pool) - k)
            chunk = pool[start:start + k]
        elif r < 0.85:
            chunk = " ".join(f"f_{rng.randint(0, 999)}_{rng.choice(WORDS)}" for _ in range(k // 12)).encode()[:k]
        else:
            chunk = bytes(k)
        out.append(chunk)
        n += len(chunk)
    return b"".join(out)[:size]


def source_bytes(rng: random.Random, size: int) -> bytes:
    body = []
    n = 0
    i = 0
    while n < size:
        line = f"static int f_{i}_{rng.randint(0, 999)}(int x) {{ return x * {rng.randint(1, 99)} + {rng.choice(WORDS)}_k; }}\n"
        body.append(line)
        n += len(line)
        i += 1
    return ("#include <stdio.h>\n" + "".join(body)).encode()[:size]


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


# ------------------------------------------------------------------ layout (populate)


def populate_home(home: Path, index: int, seed: int, *, archive_mib: int, scale: float = 1.0) -> int:
    """Create one user's files (before auditing starts).  Returns bytes written."""
    rng = random.Random(seed)
    total = 0
    kind = index % 3  # 0 writer, 1 developer, 2 designer
    n_docs = int((60, 30, 20)[kind] * scale) + 3
    n_pdf = int((15, 6, 8)[kind] * scale) + 1
    n_pics = int((6, 3, 40)[kind] * scale) + 1
    for sub in ("docs", "pdf", "pics", "copies", "src", "build", "tmp"):
        (home / sub).mkdir(exist_ok=True)
    for i in range(n_docs):
        data = text_bytes(rng, rng.randint(4 * KIB, 120 * KIB))
        write_file(home / "docs" / f"doc{i:03d}.{rng.choice(('txt', 'md', 'odt', 'tex'))}", data)
        total += len(data)
    for i in range(n_pdf):
        data = media_bytes(rng, rng.randint(80 * KIB, 1500 * KIB))
        write_file(home / "pdf" / f"paper{i:03d}.pdf", data)
        total += len(data)
    for i in range(n_pics):
        data = media_bytes(rng, rng.randint(150 * KIB, 1200 * KIB))
        write_file(home / "pics" / f"img{i:04d}.jpg", data)
        total += len(data)
    n_src = int((10, 120, 5)[kind] * scale) + 2
    for i in range(n_src):
        d = home / "src" / f"mod{i % 8}"
        d.mkdir(exist_ok=True)
        data = source_bytes(rng, rng.randint(1 * KIB, 24 * KIB))
        write_file(d / f"unit{i:03d}.{'h' if i % 5 == 0 else 'c'}", data)
        total += len(data)
    if archive_mib:
        (home / "archive").mkdir(exist_ok=True)
        per = 5 * MIB
        for i in range(max(1, archive_mib * MIB // per)):
            data = media_bytes(rng, per)
            write_file(home / "archive" / f"backup-{i:03d}.tar.zst", data)
            total += len(data)
    return total


def populate_team(team: Path, seed: int, scale: float = 1.0) -> int:
    rng = random.Random(seed)
    total = 0
    for sub in ("minutes", "specs", "slides"):
        (team / sub).mkdir(exist_ok=True)
    for i in range(int(60 * scale) + 5):
        data = text_bytes(rng, rng.randint(3 * KIB, 60 * KIB))
        write_file(team / "minutes" / f"meeting-{i:03d}.md", data)
        total += len(data)
    for i in range(int(40 * scale) + 3):
        data = text_bytes(rng, rng.randint(10 * KIB, 200 * KIB))
        write_file(team / "specs" / f"spec-{i:03d}.txt", data)
        total += len(data)
    for i in range(int(25 * scale) + 2):
        data = media_bytes(rng, rng.randint(200 * KIB, 2 * MIB))
        write_file(team / "slides" / f"deck-{i:03d}.pdf", data)
        total += len(data)
    return total


# ------------------------------------------------------------------ helpers


def files_under(top: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            if not suffixes or name.endswith(suffixes):
                out.append(Path(dirpath) / name)
    return out


def read_all(path: Path, chunk: int = 128 * KIB) -> int:
    n = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return n
            n += len(block)


def pick(ctx: Ctx, top: Path, suffixes: tuple[str, ...] = ()) -> Path | None:
    files = [p for p in files_under(top, suffixes) if not p.name.startswith(".")]
    return ctx.rng.choice(files) if files else None


def save_via_rename(path: Path, data: bytes) -> None:
    """What editors do: write a temporary file next to it, fsync, rename over."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------ normal office work


def _doc_to_edit(ctx: Ctx) -> Path | None:
    developer = len(files_under(ctx.home / "src")) > 40  # developers mostly edit sources
    return pick(ctx, ctx.home / ("src" if developer and ctx.rng.random() < 0.7 else "docs"))


def open_doc(ctx: Ctx) -> dict[str, int]:
    """An editor opens a document (the save comes minutes later: save_doc, same seed)."""
    path = _doc_to_edit(ctx)
    return {"bytes_read": read_all(path)} if path else {}


def save_doc(ctx: Ctx) -> dict[str, int]:
    """The editor saves: temporary file, fsync, rename over the original."""
    path = _doc_to_edit(ctx)
    if path is None:
        return {}
    data = path.read_bytes()  # what the editor holds (the file changed only if someone else saved)
    cut = ctx.rng.randint(0, len(data))
    new = data[:cut] + text_bytes(ctx.rng, ctx.rng.randint(20, 3000)) + data[cut + ctx.rng.randint(0, 400):]
    save_via_rename(path, new)
    return {"bytes_written": len(new)}


def view(ctx: Ctx) -> dict[str, int]:
    path = pick(ctx, ctx.home / ctx.rng.choice(("pdf", "pics", "pdf", "docs")))
    return {"bytes_read": read_all(path) if path else 0}


def compile_tree(ctx: Ctx) -> dict[str, int]:
    """Read every source, write an object file per unit (rewritten in place), link."""
    n_read = n_written = 0
    build = ctx.home / "build"
    build.mkdir(exist_ok=True)
    objs = []
    for src in files_under(ctx.home / "src", (".c", ".h")):
        n_read += read_all(src)
        if src.suffix == ".c":
            obj = build / (src.stem + ".o")
            data = object_bytes(ctx.rng, max(512, src.stat().st_size // 2))
            write_file(obj, data)  # O_TRUNC over last build's object: an overwrite, like make does
            n_written += len(data)
            objs.append(obj)
    image = b"".join(o.read_bytes()[:4096] for o in objs[:50])
    write_file(build / "app", image)
    return {"bytes_read": n_read, "bytes_written": n_written + len(image)}


def grep_tree(ctx: Ctx) -> dict[str, int]:
    word = ctx.rng.choice(WORDS)
    top = ctx.home / ctx.rng.choice(("src", "docs", "src"))
    proc = subprocess.run(["grep", "-rlI", word, str(top)], capture_output=True, check=False)
    return {"exit": proc.returncode}


def copy_file(ctx: Ctx) -> dict[str, int]:
    src = pick(ctx, ctx.home / ctx.rng.choice(("docs", "pics", "pdf")))
    if src is None:
        return {}
    dst = ctx.home / "copies" / f"{src.stem}-copy{ctx.rng.randint(0, 99)}{src.suffix}"
    shutil.copyfile(src, dst)
    return {"bytes_read": src.stat().st_size}


def new_doc(ctx: Ctx) -> dict[str, int]:
    data = text_bytes(ctx.rng, ctx.rng.randint(2 * KIB, 40 * KIB))
    path = ctx.home / "docs" / f"new-{ctx.rng.getrandbits(32):08x}.md"
    save_via_rename(path, data)
    return {"bytes_written": len(data)}


def cleanup(ctx: Ctx) -> dict[str, int]:
    """Delete a few old copies or temporary files."""
    victims = files_under(ctx.home / "copies")[:ctx.rng.randint(1, 3)]
    for p in victims:
        p.unlink()
    return {"deleted": len(victims)}


def team_read(ctx: Ctx) -> dict[str, int]:
    path = pick(ctx, ctx.root / "team")
    return {"bytes_read": read_all(path) if path else 0}


def share_read(ctx: Ctx) -> dict[str, int]:
    """bob, on his share mount (ctx.root is the share's root), opens one document."""
    path = pick(ctx, ctx.root)
    return {"bytes_read": read_all(path) if path else 0}


# ------------------------------------------------------------------ benign look-alikes


def backup(ctx: Ctx) -> dict[str, int]:
    """Nightly backup (root, same process name every night): reads every file."""
    n = files = 0
    for path in files_under(ctx.root):
        try:
            n += read_all(path, 1 * MIB)
            files += 1
        except FileNotFoundError:
            pass
    return {"bytes_read": n, "files": files}


def git_clone(ctx: Ctx) -> dict[str, int]:
    repo = Path(str(ctx.params["repo"]))
    dest = ctx.home / "src" / f"clone-{ctx.rng.getrandbits(24):06x}"
    proc = subprocess.run(["git", "clone", "-q", str(repo), str(dest)], capture_output=True, check=False,
                          env={**os.environ, "HOME": str(ctx.home), "GIT_CONFIG_NOSYSTEM": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"git clone failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return {"files": sum(1 for _ in files_under(dest))}


def photo_import(ctx: Ctx) -> dict[str, int]:
    """Hundreds of already-compressed (high-entropy) new files, written as fast as the card reads."""
    dest = ctx.home / "pics" / f"import-{ctx.rng.getrandbits(24):06x}"
    dest.mkdir()
    n = 0
    for i in range(int(ctx.params.get("files", 300))):
        data = media_bytes(ctx.rng, ctx.rng.randint(60 * KIB, 600 * KIB))
        write_file(dest / f"DSC_{i:04d}.JPG", data)
        n += len(data)
    return {"bytes_written": n}


def tar_folder(ctx: Ctx) -> dict[str, int]:
    out = ctx.home / "copies" / f"docs-{ctx.rng.getrandbits(24):06x}.tar.gz"
    proc = subprocess.run(["tar", "czf", str(out), "-C", str(ctx.home), "docs", "pdf"], capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"tar failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return {"bytes_written": out.stat().st_size}


# ------------------------------------------------------------------ attacks


class Meter:
    """What the attacker got done, and when the defence stopped it (monotonic clock)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.bytes_read = 0
        self.files_changed = 0
        self.files_touched = 0
        self.responded: Responded | None = None

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes_read": self.bytes_read, "files_changed": self.files_changed,
                               "files_touched": self.files_touched, "duration_ms": (time.monotonic() - self.t0) * 1e3}
        if self.responded is not None:
            out["response_errno"] = errno.errorcode.get(self.responded.errno or 0, "?")
            out["response_ms"] = (self.responded.t_real - self.t0) * 1e3
        return out


def guarded(meter: Meter, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as exc:
        if exc.errno in RESPONSE_ERRNOS:
            raise Responded(exc) from exc
        raise


def _pace(t0: float, i: int, rate: float) -> None:
    delay = t0 + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def bulk_download(ctx: Ctx) -> dict[str, Any]:
    """Read the archive folder at rate_mib_s (a fast uplink; 0: as fast as the disk), 1 MiB at a time."""
    meter = Meter()
    rate = float(ctx.params.get("rate_mib_s", 100)) * MIB or float("inf")
    files = files_under(ctx.home / "archive") + files_under(ctx.home / "pdf")
    limit = int(ctx.params.get("mib", 500)) * MIB
    try:
        for path in files:
            fh = guarded(meter, lambda: open(path, "rb"))
            with fh:
                meter.files_touched += 1
                while meter.bytes_read < limit:
                    block = guarded(meter, lambda: fh.read(MIB))
                    if not block:
                        break
                    meter.bytes_read += len(block)
                    delay = meter.t0 + meter.bytes_read / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            if meter.bytes_read >= limit:
                break
    except Responded as r:
        meter.responded = r
    return meter.result()


def exfil_slice(ctx: Ctx) -> dict[str, Any]:
    """One hour's share of a slow exfiltration: a few MiB of files not read before."""
    meter = Meter()
    budget = int(float(ctx.params.get("mib_per_hour", 4)) * MIB)
    start = int(ctx.params.get("offset", 0))
    pool = sorted(files_under(ctx.root / "team") + files_under(ctx.home / "docs") + files_under(ctx.home / "src"))
    try:
        i = start
        while meter.bytes_read < budget and pool:
            path = pool[i % len(pool)]
            i += 1
            meter.bytes_read += guarded(meter, lambda: read_all(path))
            meter.files_touched += 1
    except Responded as r:
        meter.responded = r
    out = meter.result()
    out["next_offset"] = start + meter.files_touched
    return out


def ransomware(ctx: Ctx) -> dict[str, Any]:
    """Read each file, write random bytes (as NAME.locked + delete, or in place), leave a note."""
    meter = Meter()
    rate = float(ctx.params.get("rate", 40))
    mode = str(ctx.params.get("mode", "locked"))
    targets = [p for top in ("docs", "pdf", "pics", "src") for p in files_under(ctx.home / top)]
    try:
        guarded(meter, lambda: write_file(ctx.home / "README_RESTORE_FILES.txt",
                                          b"Your files are encrypted. Send 1 BTC to ...\n"))
        t0 = time.monotonic()
        for i, path in enumerate(targets):
            _pace(t0, i, rate)
            data = guarded(meter, path.read_bytes)
            meter.bytes_read += len(data)
            meter.files_touched += 1
            junk = ctx.rng.randbytes(len(data) + 16)
            if mode == "inplace":
                def overwrite() -> None:
                    with open(path, "r+b") as fh:
                        fh.write(junk)
                guarded(meter, overwrite)
                meter.files_changed += 1
            else:
                guarded(meter, lambda: write_file(path.with_name(path.name + ".locked"), junk))
                guarded(meter, path.unlink)
                meter.files_changed += 1
    except Responded as r:
        meter.responded = r
    return meter.result()


def mass_delete(ctx: Ctx) -> dict[str, Any]:
    """rm -rf of the user's home, file by file, as fast as it goes."""
    meter = Meter()
    try:
        for dirpath, dirnames, filenames in os.walk(ctx.home, topdown=False):
            for name in sorted(filenames):
                guarded(meter, lambda: os.unlink(os.path.join(dirpath, name)))
                meter.files_changed += 1
            if dirpath != str(ctx.home):
                guarded(meter, lambda: os.rmdir(dirpath))
    except Responded as r:
        meter.responded = r
    return meter.result()


def share_pull(ctx: Ctx) -> dict[str, Any]:
    """bob copies everything in the share, as fast as it goes."""
    meter = Meter()
    try:
        paths = guarded(meter, lambda: files_under(ctx.root))
        if not paths:
            raise Responded(OSError(errno.ENOENT, "share is empty or gone"))
        for path in paths:
            meter.bytes_read += guarded(meter, lambda: read_all(path, MIB))
            meter.files_touched += 1
    except Responded as r:
        meter.responded = r
    return meter.result()


def populate(ctx: Ctx) -> dict[str, Any]:
    p = ctx.params
    n = populate_home(ctx.home, int(p["index"]), int(p["seed"]), archive_mib=int(p.get("archive_mib", 0)),
                      scale=float(p.get("scale", 1.0)))
    if p.get("team"):
        n += populate_team(ctx.root / "team", int(p["seed"]) + 1, float(p.get("team_scale", 1.0)))
    return {"bytes_written": n}


ACTIONS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "populate": populate,
    "open_doc": open_doc, "save_doc": save_doc, "view": view, "compile": compile_tree, "grep": grep_tree, "copy": copy_file,
    "new_doc": new_doc, "cleanup": cleanup, "team_read": team_read, "share_read": share_read,
    "backup": backup, "git_clone": git_clone, "photo_import": photo_import, "tar_folder": tar_folder,
    "bulk_download": bulk_download, "exfil_slice": exfil_slice, "ransomware": ransomware,
    "mass_delete": mass_delete, "share_pull": share_pull,
}

# Process names (/proc/PID/comm, 15 bytes max) the daemon sees; real tools name themselves.
COMM = {
    "open_doc": "soffice.bin", "save_doc": "soffice.bin", "view": "evince", "compile": "cc1", "copy": "cp", "new_doc": "soffice.bin",
    "cleanup": "rm", "team_read": "evince", "share_read": "evince", "backup": "restic", "git_clone": "git",
    "photo_import": "shotwell", "tar_folder": "bash", "grep": "bash", "bulk_download": "rclone",
    "exfil_slice": "python3", "ransomware": "svchost", "mass_delete": "rm", "share_pull": "rsync",
}
