"""`proxy serve --workers N`: re-encryption in worker processes gives the same answers, the
same refusals and the same record; a worker that dies is replaced by in-process work; the
workers end with the proxy."""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.client import grant, new_grant_id, open_capsule
from proxy.envelope import seal
from proxy.keyring import Identity
from proxy.service.store import verify_records
from tests.conftest import process_gone
from tests.proxy.conftest import ProxyProc, check_log, make_identity
from tests.proxy.test_server import expect_status


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProc, dict[str, Identity]]]:
    root = tmp_path_factory.mktemp("workers")
    ids = {n: make_identity(root / "home", n) for n in ("admin", "alice", "bob")}
    admin_file = root / "admin.pub"
    admin_file.write_text(ids["admin"].public.to_text())
    p = ProxyProc(root / "proxy", admin_file, workers=2).start()
    try:
        from proxy.client import ProxyClient

        with ProxyClient(p.url, ids["admin"]) as c:
            c.register(ids["alice"].public, "owner")
            c.register(ids["bob"].public, "reader")
        yield p, ids
    finally:
        workers = _children(p.pid) if p.running else []
        assert p.stop() == 0 if p.running else True
        for pid in workers:  # EOF on their stdin ends them with the proxy
            deadline = time.monotonic() + 10
            while not process_gone(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert process_gone(pid), pid
        check_log(p.log.read_text())


def test_workers_reencrypt_like_the_main_process(proxy: tuple[ProxyProc, dict[str, Identity]]) -> None:
    p, ids = proxy
    assert len(_children(p.pid)) == 2
    opened = []
    for _ in range(4):
        key = os.urandom(32)
        sealed, delegation = seal(key)
        grant_id = new_grant_id()
        grant([p.url], ids["alice"], ids["bob"].public, 1, grant_id, delegation)
        assert open_capsule([p.url], ids["bob"], ids["alice"].public, sealed.capsule, sealed.ciphertext, 1, grant_id,
                            sealed.delegating_pk) == key
        opened.append((grant_id, sealed))
    from proxy.client import ProxyClient

    with ProxyClient(p.url, ids["bob"]) as c:
        results = c.reencrypt_many([(g, s.capsule) for g, s in opened] + [(opened[0][0], b"\x01" * 105)])
        assert [isinstance(r, bytes) for r in results] == [True] * 4 + [False]
        assert results[-1].status == 400  # type: ignore[union-attr]
        expect_status(400, c.reencrypt, opened[0][0], b"\x02" * 105)  # refused by the worker's parse
    with ProxyClient(p.url, ids["alice"]) as c:
        c.revoke(opened[1][0])
    with ProxyClient(p.url, ids["bob"]) as c:
        expect_status(410, c.reencrypt, opened[1][0], opened[1][1].capsule)
    conn = sqlite3.connect(f"file:{p.db}?mode=ro", uri=True)
    rows = conn.execute("SELECT count(*) FROM records WHERE op = 'reencrypt'").fetchone()[0]
    conn.close()
    assert rows == 4 + 4  # one per cfrag handed out: the four opens and the four of the batch
    assert verify_records(p.db).rows > rows


def test_a_dead_worker_is_replaced_by_in_process_work(proxy: tuple[ProxyProc, dict[str, Identity]]) -> None:
    p, ids = proxy
    for pid in _children(p.pid):
        os.kill(pid, signal.SIGKILL)
    key = os.urandom(32)
    sealed, delegation = seal(key)
    grant_id = new_grant_id()
    grant([p.url], ids["alice"], ids["bob"].public, 1, grant_id, delegation)
    for _ in range(3):
        assert open_capsule([p.url], ids["bob"], ids["alice"].public, sealed.capsule, sealed.ciphertext, 1, grant_id,
                            sealed.delegating_pk) == key
    assert "re-encryption worker" in p.log.read_text() and "0 left" in p.log.read_text()
