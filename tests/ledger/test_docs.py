"""docs/ledger.md's stand-alone proof checker is run against real proofs: the documented procedure works."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.read import inclusion_proof, open_readonly
from tests.ledger.conftest import KEY, build

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger.md"


def checker_source() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- proof-check[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "docs/ledger.md lost its proof-check block"
    code = m.group(1)
    assert len(code.strip().splitlines()) <= 40
    assert "import ledger" not in code and "from ledger" not in code  # stand-alone
    return code


def test_documented_procedure_accepts_real_proofs_and_refuses_altered_ones(tmp_path: Path) -> None:
    script = tmp_path / "check_proof.py"
    script.write_text(checker_source())
    built = build(tmp_path, 45, every=10, batch=5)
    conn = open_readonly(built.db)
    pub = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def run(doc: dict) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "proof.json"
        path.write_text(json.dumps(doc))
        return subprocess.run([sys.executable, "-I", str(script), str(path), pub],
                              capture_output=True, text=True, timeout=60)

    for idx, size in ((0, 10), (9, 10), (13, 30), (44, 45), (31, 45)):
        doc = inclusion_proof(conn, idx, size)
        result = run(doc)
        assert result.returncode == 0 and result.stdout.startswith(f"OK: entry {idx}"), result.stderr
    doc = inclusion_proof(conn, 13, 30)
    bad_sig = dict(doc["checkpoint"], signature="11" * 64)
    for altered in (
        dict(doc, leaf=doc["leaf"].replace("/docs", "/tmp")),
        dict(doc, idx=12),
        dict(doc, proof=list(reversed(doc["proof"]))),
        dict(doc, checkpoint=bad_sig),
        dict(doc, checkpoint=inclusion_proof(conn, 13, 40)["checkpoint"]),
        dict(doc, checkpoint=None),
    ):
        result = run(altered)
        assert result.returncode != 0 and "FAIL" in result.stderr, altered
