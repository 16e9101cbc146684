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


# --- defaults: each table row's default is the one the code really uses -----------------------

SIZE = re.compile(r"^(\d+) (KiB|MiB|GiB)\b")
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def table_rows(section_title: str) -> dict[str, str]:
    """{variable: its default cell} for every row of the table under a `### <title>` heading.

    A row naming several variables (`A`, `B`) has as many defaults, separated by ", ", or one
    default that all of them share.
    """
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc.split(f"### {section_title}", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        defaults = cells[1].split(", ") if len(names) > 1 else [cells[1]]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"{line}: {len(names)} variables but {len(defaults)} defaults"
        rows.update(zip(names, defaults))
    return rows


def documented_value(cell: str) -> object:
    """What a default cell says, as a value: None for unset/blank/a computed `<...>` default."""
    cell = cell.strip()
    if cell in ("", "unset") or re.match(r"^`[^`]*<", cell):
        return None
    if cell == "empty":
        return ""
    if size := SIZE.match(cell):
        return int(size.group(1)) * UNITS[size.group(2)]
    if literal := re.match(r"^`([^`]*)`", cell):
        return literal.group(1)
    if number := re.match(r"^(\d+(?:\.\d+)?)\b", cell):
        return number.group(1)
    raise AssertionError(f"cannot read the default {cell!r}: write a `literal`, a number, N MiB/GiB, unset or empty")


def same(documented: object, actual: object) -> bool:
    if hasattr(actual, "value"):  # an Enum
        actual = actual.value
    if isinstance(actual, tuple):
        actual = " ".join(actual)
    if actual is None or documented is None:
        return documented is None and actual is None
    if isinstance(actual, bool):
        return documented == str(actual).lower()
    if isinstance(actual, (int, float)):
        return float(documented) == float(actual)
    return documented == str(actual)


def image_env() -> dict[str, str]:
    """The ENV the Dockerfile's final image sets (KEY=value pairs of ENV instructions)."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    return dict(re.findall(r"([A-Z][A-Z0-9_]+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", final, flags=re.M))))


def check_defaults(rows: dict[str, str], defaults: dict[str, object]) -> list[str]:
    """Rows whose default differs from the code's; a value the image sets is checked against it."""
    wrong = []
    in_image = image_env()
    for name, actual in defaults.items():
        assert name in rows, f"{name} has no row in this table"
        cell = rows[name]
        if name in in_image:
            # e.g. "`/comfyui` in the image (`/workspace/ComfyUI` outside it)"
            image_value = re.match(r"^`([^`]*)` in the image", cell)
            if not image_value or image_value.group(1) != in_image[name]:
                wrong.append(f"{name}: the image sets {in_image[name]!r}; the doc says {cell!r}")
            outside = re.search(r"\(`([^`]*)` outside it\)", cell)
            if outside and not same(outside.group(1), actual):
                wrong.append(f"{name}: outside the image the code uses {actual!r}; the doc says {cell!r}")
        elif not same(documented_value(cell), actual):
            wrong.append(f"{name}: the code uses {actual!r}; the doc says {cell!r}")
    return wrong


def test_worker_settings_defaults_match_comfy_settings():
    from comfy.settings import _ENV_VARS, WorkerSettings

    defaults = {var: getattr(WorkerSettings(), attr) for attr, (var, _) in _ENV_VARS.items()}
    assert check_defaults(table_rows("The worker: ComfyUI and jobs"), defaults) == []


def test_media_settings_defaults_match_comfy_media_settings():
    from comfy.media.settings import ENV_VARS, MediaSettings
    from comfy.worker.heartbeat import DEFAULT_INTERVAL_S

    defaults = {var: MediaSettings.model_fields[attr].default for attr, var in ENV_VARS.items()}
    defaults["HEARTBEAT_INTERVAL"] = DEFAULT_INTERVAL_S
    assert check_defaults(table_rows("The worker: inputs and outputs"), defaults) == []


def test_model_cache_defaults_match_comfy_models_settings():
    from comfy.models.settings import ENV_VARS, ModelSettings

    defaults = {var: ModelSettings.model_fields[attr].default for attr, var in ENV_VARS.items()}
    assert check_defaults(table_rows("The worker: ComfyUI and jobs"), defaults) == []


def test_dispatcher_and_scaler_defaults_match_supabase_sync():
    from supabase_sync.config import Settings
    from supabase_sync.scaler.rule import ScalingRule
    from supabase_sync.scaler.config import RULE_ENV, ScalerSettings

    # config.py maps its optional variables to fields in a literal table: "VAR": "field".
    source = (ROOT / "supabase_sync" / "config.py").read_text()
    optional = dict(re.findall(r'"([A-Z][A-Z0-9_]{2,})":\s*"([a-z_0-9]+)"', source))
    assert {"POLL_INTERVAL", "DISPATCHER_PORT", "RETRY_BACKOFF_MAX_S"} <= set(optional)
    defaults: dict[str, object] = {var: Settings.model_fields[field].default for var, field in optional.items()}
    defaults.update({var: ScalingRule.model_fields[field].default for var, field in RULE_ENV.items()})
    defaults["SCALER_INTERVAL_S"] = ScalerSettings.model_fields["interval_s"].default
    defaults["RUNPOD_MANAGEMENT_URL"] = ScalerSettings.model_fields["management_url"].default
    assert check_defaults(table_rows("The dispatcher and the scaler"), defaults) == []


def test_a_wrong_default_is_caught():
    rows = {"COMFY_PORT": "`8189`", "MAX_INPUT_BYTES": "1 GiB", "REFRESH_WORKER": "`true`", "OUTPUT_MODE": "`inline`",
            "COMFY_PATH": "`/workspace/ComfyUI`"}
    assert check_defaults(rows, {"COMFY_PORT": 8188, "MAX_INPUT_BYTES": 2 * 1024**3, "REFRESH_WORKER": False,
                                 "OUTPUT_MODE": None, "COMFY_PATH": "/workspace/ComfyUI"}) == [
        "COMFY_PORT: the code uses 8188; the doc says '`8189`'",
        "MAX_INPUT_BYTES: the code uses 2147483648; the doc says '1 GiB'",
        "REFRESH_WORKER: the code uses False; the doc says '`true`'",
        "OUTPUT_MODE: the code uses None; the doc says '`inline`'",
        "COMFY_PATH: the image sets '/comfyui'; the doc says '`/workspace/ComfyUI`'",
    ]


def test_the_custom_node_lines_shown_are_the_default_list():
    from builder.install_custom_nodes import parse_list

    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    shown = re.findall(r"^(https://github\.com/\S+ [0-9a-f]{40})$", doc, flags=re.M)
    listed = {f"{node.url} {node.commit}" for node in parse_list((ROOT / "builder" / "custom_nodes.txt").read_text())}
    assert shown and set(shown) <= listed
