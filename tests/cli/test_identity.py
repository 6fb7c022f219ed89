"""`umbrafs identity …` through the real command line: round trips and one-line errors."""
from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from cli import exitcodes
from tests.conftest import FAST_KDF, Env, new_env


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("umbrafs: ") or lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def create(env: Env, name: str) -> str:
    result = env.run("identity", "create", name, "--passphrase-file", env.passfile, *FAST_KDF, check=True)
    assert result.stdout.startswith(f"created identity {name} (fingerprint ")
    return result.stdout.split("fingerprint ")[1].rstrip(")\n")


def test_create_list_export_import(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alice, bob = new_env(tmp_path / "a"), new_env(tmp_path / "b")
    fp = create(alice, "alice")
    bob_fp = create(bob, "bob")
    keyfile = alice.home / "identities" / "alice.json"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    exported = alice.run("identity", "export", "alice", check=True).stdout
    assert exported.startswith("umbrafs-public-identity v1\n") and f"fingerprint: {fp}\n" in exported
    pubfile = tmp_path / "alice.pub"
    alice.run("identity", "export", "alice", "-o", pubfile, check=True)
    assert pubfile.read_text() == exported
    result = bob.run("identity", "import", pubfile, check=True)
    assert result.stdout.strip() == f"imported contact alice (fingerprint {fp})"
    result = bob.run("identity", "import", "-", "--name", "alice2", input=exported, check=True)
    assert "imported contact alice2" in result.stdout
    listing = bob.run("identity", "list", check=True).stdout.splitlines()
    assert [line.split() for line in listing] == [["own", "bob", bob_fp], ["contact", "alice", fp], ["contact", "alice2", fp]]
    as_json = json.loads(bob.run("identity", "list", "--json", check=True).stdout)
    assert as_json["identities"] == [{"name": "bob", "fingerprint": bob_fp}]
    assert {c["name"] for c in as_json["contacts"]} == {"alice", "alice2"}


def test_passwd_and_wrong_passphrase(env: Env) -> None:
    create(env, "alice")
    wrong = env.tmp / "wrong"
    wrong.write_text("nope\n")
    new = env.tmp / "new"
    new.write_text("a new passphrase\n")
    one_line_error(env.run("identity", "passwd", "alice", "--passphrase-file", wrong, "--new-passphrase-file", new),
                   exitcodes.WRONG_PASSPHRASE, "wrong passphrase for identity 'alice'")
    env.run("identity", "passwd", "alice", "--passphrase-file", env.passfile, "--new-passphrase-file", new, check=True)
    one_line_error(env.run("identity", "passwd", "alice", "--passphrase-file", env.passfile, "--new-passphrase-file", new),
                   exitcodes.WRONG_PASSPHRASE, "wrong passphrase")
    # The environment variable works as well as the file.
    result = env.run("identity", "passwd", "alice", "--new-passphrase-file", env.passfile,
                     env={"UMBRAFS_IDENTITY_PASSPHRASE": "a new passphrase"})
    assert result.returncode == 0, result.stderr


def test_mistakes_are_one_line(env: Env, tmp_path: Path) -> None:
    create(env, "alice")
    one_line_error(env.run("identity", "create", "alice", "--passphrase-file", env.passfile, *FAST_KDF),
                   exitcodes.IDENTITY, "already exists")
    one_line_error(env.run("identity", "export", "nobody"), exitcodes.IDENTITY, "no identity named 'nobody'")
    one_line_error(env.run("identity", "create", "../evil", "--passphrase-file", env.passfile, *FAST_KDF),
                   exitcodes.IDENTITY, "invalid identity name")
    damaged = tmp_path / "damaged.pub"
    text = env.run("identity", "export", "alice", check=True).stdout
    damaged.write_text(text.replace("fingerprint: ", "fingerprint: 00"))
    one_line_error(env.run("identity", "import", damaged), exitcodes.IDENTITY, "fingerprint")
    one_line_error(env.run("identity", "import", tmp_path / "missing.pub"), exitcodes.IDENTITY, "cannot read")
    one_line_error(env.run("identity", "import", env.passfile), exitcodes.IDENTITY, "not an umbrafs public identity")
    one_line_error(env.run("identity", "create", "bob"), exitcodes.USAGE, "no passphrase")
