"""docs/deploy.md lists every environment variable the code reads (a new setting needs a row)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READ_PATTERNS = [
    r'(?:env|environ)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"',  # env.get("X"), os.environ["X"]
    r'getenv\(\s*"([A-Z][A-Z0-9_]+)"',
    r'"[a-z_0-9]+":\s*\(?\s*"([A-Z][A-Z0-9_]{2,})"',          # settings tables: "attr": ("VAR", parse) / "attr": "VAR"
    r'"([A-Z][A-Z0-9_]{2,})":\s*"[a-z_0-9]+"',                # "VAR": "attr"
]


def variables_read_by_the_code() -> set[str]:
    sources = [ROOT / "handler.py", *(ROOT / "comfy").rglob("*.py"), *(ROOT / "supabase_sync").rglob("*.py")]
    found: set[str] = set()
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for pattern in READ_PATTERNS:
            found.update(re.findall(pattern, text))
    return found


def test_the_scan_finds_the_known_settings():
    found = variables_read_by_the_code()
    assert {"COMFY_PATH", "PROGRESS_INTERVAL_S", "DISPATCHER_ROUTES", "SCALER_MAX_WORKERS"} <= found


def test_every_variable_has_a_row_in_docs_deploy_md():
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert sorted(name for name in variables_read_by_the_code() if f"`{name}`" not in doc) == []


def test_readme_points_to_docs_deploy_md():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- section: deploy -->" not in readme and "(docs/deploy.md)" in readme
