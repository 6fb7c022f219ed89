"""A same-uid process on the daemon's socket (security review, finding 4): it read a mount's
source from the mount record, said hello as that source, and sent one event with seq 2^62.
The daemon stored it, signed, with any uid, pid and path, and from then on dropped every
real event of the mount as a copy: the detector never saw the ransomware that followed."""
from __future__ import annotations

import json
import subprocess
import sys

from ledger.events import Event
from tests.conftest import Env, live_mount
from tests.daemon.conftest import Daemon, wait_for

ATTACKER = r"""
import json, socket, sys
home, source = sys.argv[1], sys.argv[2]
def ask(*messages):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(home + "/daemon.sock")
        f = s.makefile("rb")
        out = []
        for m in messages:
            s.sendall(json.dumps(m).encode() + b"\n")
            out.append(json.loads(f.readline()))
        return out
forged = {"source": source, "seq": 2**62, "time_ns": 1, "op": "create", "uid": 1000, "pid": 4242,
          "comm": "bob-did-it", "path": "/forged/evidence.txt"}
mine = "00000000000000ee"
print(json.dumps({
    "as_the_mount": ask({"type": "hello", "source": source}, {"type": "events", "events": [forged]}),
    "daemon_ops": ask({"type": "hello", "source": mine}, {"type": "events", "events": [
        {"source": mine, "seq": 1, "time_ns": 1, "op": "spool-gap", "detail": {"source": source}}]}),
    "seq_jump": ask({"type": "hello", "source": mine}, {"type": "events", "events": [
        {"source": mine, "seq": 2**62, "time_ns": 1, "op": "create", "path": "/x"}]}),
}))
"""


def _events(daemon: Daemon, source: str) -> list[Event]:
    return [e for _, e in daemon.events() if e.source == source]


def test_a_same_uid_process_cannot_speak_for_a_mount_or_silence_it(aenv: Env, daemon: Daemon) -> None:
    vault = aenv.init(aenv.tmp / "vault")
    with live_mount(aenv, vault, aenv.tmp / "mnt", "--audit", "required") as m:
        source = aenv.mount_record(m.path)["source"]
        (m.path / "before.txt").write_text("before\n")
        wait_for(lambda: any(e.path == "/before.txt" for e in _events(daemon, source)), "the first event")
        attack = subprocess.run([sys.executable, "-c", ATTACKER, str(aenv.home), source],
                                capture_output=True, text=True, timeout=30, check=True)
        replies = json.loads(attack.stdout)
        for name in ("after-1.txt", "after-2.txt", "after-3.txt"):  # what the ransomware would do next
            (m.path / name).write_text("x\n")
        (m.path / "before.txt").unlink()
    wait_for(lambda: any(e.op == "unmount" for e in _events(daemon, source)), "the unmount event", timeout=60)
    assert [r["type"] for r in replies["as_the_mount"]] == ["error", "error"], replies
    assert "belongs to" in replies["as_the_mount"][0]["message"] or "in use by" in replies["as_the_mount"][0]["message"]
    assert [r["type"] for r in replies["daemon_ops"]] == ["welcome", "error"], replies
    assert [r["type"] for r in replies["seq_jump"]] == ["welcome", "error"], replies
    events = [e for _, e in daemon.events()]
    assert not any(e.path.startswith("/forged") or e.comm == "bob-did-it" for e in events)
    assert not any(e.op == "spool-gap" for e in events)
    mine = _events(daemon, source)
    assert {"/after-1.txt", "/after-2.txt", "/after-3.txt"} <= {e.path for e in mine if e.op == "create"}
    assert any(e.op == "unlink" and e.path == "/before.txt" for e in mine)
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))  # gap-free, nothing dropped
