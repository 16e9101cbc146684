"""Where templates come from, and which one a reference means.

Two kinds of source:
- folders (`WORKFLOW_TEMPLATE_DIRS`, searched in the order given): one template version
  per file, `.yaml`, `.yml` or `.json`, anywhere below the folder (hidden files and
  folders are skipped). Files are re-read when they change, so a mounted volume can be
  updated without restarting the dispatcher.
- the `workflow_templates` table (0081_workflow_templates.sql), through RPCs.

Precedence: `name@version` is taken from the first folder that has it, else from the
table. `name` alone means the highest version any source has; when a folder and the table
both have that version, the folder's copy is used. A shadowed table row is shown as such
by `templates list`. A newest version that is invalid is an error, not a reason to fall
back silently to an older one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import yaml

from supabase_sync.templates.spec import Template, TemplateError, TemplateRef, load_template

if TYPE_CHECKING:  # the store imports the supabase client, which folder-only use does not need
    from supabase_sync.store import TaskStore, TemplateRow

log = logging.getLogger("supabase_sync.templates")

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 8 * 1024 * 1024
TABLE = "table workflow_templates"


@dataclass(frozen=True)
class Found:
    """One template version a source has: the template, or the problems that make it unusable."""

    name: str
    version: int
    source: str
    template: Template | None = None
    problems: tuple[str, ...] = ()
    description: str = ""

    def usable(self) -> Template:
        """The template, or TemplateError saying why this version cannot be used."""
        if self.template is None:
            raise TemplateError(f"template {self.name}@{self.version} ({self.source}) is invalid", list(self.problems))
        return self.template


@dataclass
class FolderScan:
    """What one scan of a folder found: usable or invalid versions, and files that are no template at all."""

    found: list[Found] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


class FolderSource:
    """Template files below one folder; each file is parsed again only when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._files: dict[Path, tuple[tuple[int, int], Found | str]] = {}
        self._fingerprints: dict[tuple[str, int], tuple[str, Path]] = {}

    def scan(self) -> FolderScan:
        scan = FolderScan()
        if not self.path.is_dir():
            scan.unreadable.append(f"{self.path}: not a folder")
            return scan
        seen: dict[tuple[str, int], Found] = {}
        current: dict[Path, tuple[tuple[int, int], Found | str]] = {}
        for path in sorted(_template_files(self.path)):
            try:
                stat = path.stat()
            except OSError as exc:
                scan.unreadable.append(f"{path}: {exc.strerror}")
                continue
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._files.get(path)
            entry = cached[1] if cached and cached[0] == key else self._read(path, stat.st_size)
            current[path] = (key, entry)
            if isinstance(entry, str):
                scan.unreadable.append(entry)
                continue
            other = seen.get((entry.name, entry.version))
            if other is not None:
                problem = f"{entry.name}@{entry.version} is defined twice, in {other.source} and {entry.source}"
                seen[(entry.name, entry.version)] = Found(entry.name, entry.version, other.source, None,
                                                         other.problems + (problem,), other.description)
                continue
            seen[(entry.name, entry.version)] = entry
        self._files = current
        scan.found = list(seen.values())
        return scan

    def _read(self, path: Path, size: int) -> Found | str:
        source = f"folder {self.path} ({path.relative_to(self.path)})"
        if size > MAX_FILE_BYTES:
            return f"{path}: {size} bytes, more than a template file may have ({MAX_FILE_BYTES})"
        try:
            data = parse_template_file(path)
        except TemplateError as exc:
            return f"{path}: {exc.problems[0]}"
        found = _found(data, source)
        if found is None:
            return f"{path}: not a template (it needs a name and a whole-number version)"
        if found.template is not None:
            self._note_fingerprint(found.template, path)
        return found

    def _note_fingerprint(self, template: Template, path: Path) -> None:
        # A version must not change once tasks may have named it; say so when a file does.
        key = (template.name, template.version)
        digest = _fingerprint(template)
        before = self._fingerprints.get(key)
        if before is not None and before[0] != digest:
            log.warning("template %s@%s changed in %s: a version should never change once used; publish version %s instead",
                        template.name, template.version, path, template.version + 1)
        self._fingerprints[key] = (digest, path)


class TableSource:
    """The workflow_templates table. Versions never change, so each is fetched once."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self._versions: dict[tuple[str, int], Found] = {}

    async def lookup(self, refs: Iterable[TemplateRef]) -> dict[TemplateRef, Found]:
        """The table's answer for each reference it has (pinned ones from memory once fetched)."""
        refs = set(refs)
        answer = {ref: self._versions[(ref.name, ref.version)] for ref in refs
                  if ref.version is not None and (ref.name, ref.version) in self._versions}
        wanted = sorted(str(ref) for ref in refs if ref not in answer)
        if wanted:
            for row in await self.store.get_workflow_templates(wanted):
                found = self._remember(row)
                answer[TemplateRef.parse(row.ref)] = found
        return answer

    async def everything(self) -> list[Found]:
        """Every version in the table (for `templates list`)."""
        rows = await self.store.list_workflow_templates()
        refs = [TemplateRef(row.name, row.version) for row in rows]
        found = await self.lookup(refs)
        return [found[ref] for ref in refs if ref in found]

    def _remember(self, row: TemplateRow) -> Found:
        data = {"name": row.name, "version": row.version, "description": row.description,
                "parameters": row.parameters if row.parameters is not None else {}, "workflow": row.workflow}
        found = _found(data, TABLE) or Found(row.name, row.version, TABLE, None, ("row cannot be read",))
        self._versions[(row.name, row.version)] = found
        return found


class TemplateCatalog:
    """Every template source, in precedence order: the folders, then the table."""

    def __init__(self, folders: Sequence[Path], table: TableSource | None) -> None:
        self.folders = [FolderSource(Path(p)) for p in folders]
        self.table = table

    def describe(self) -> str:
        names = [str(f.path) for f in self.folders] + ([TABLE] if self.table else [])
        return ", then ".join(names) if names else "no template source"

    def scan_folders(self) -> tuple[dict[str, dict[int, Found]], list[FolderScan]]:
        """Folder templates by name and version (the first folder wins), and each folder's scan."""
        scans = [folder.scan() for folder in self.folders]
        index: dict[str, dict[int, Found]] = {}
        for scan in scans:
            for found in scan.found:
                index.setdefault(found.name, {}).setdefault(found.version, found)
        return index, scans

    async def resolve(self, texts: Iterable[str]) -> dict[str, Found | TemplateError]:
        """What each reference ('name' or 'name@version') means now: a Found, or why there is none."""
        texts = set(texts)
        answers: dict[str, Found | TemplateError] = {}
        refs: dict[str, TemplateRef] = {}
        for text in texts:
            try:
                refs[text] = TemplateRef.parse(text)
            except TemplateError as exc:
                answers[text] = exc
        if not refs:
            return answers
        index, _ = self.scan_folders()
        # the table is asked only what the folders cannot answer for certain
        ask = {ref for ref in refs.values() if ref.version is None or ref.version not in index.get(ref.name, {})}
        from_table = await self.table.lookup(ask) if self.table is not None and ask else {}
        for text, ref in refs.items():
            versions = index.get(ref.name, {})
            if ref.version is not None:
                found = versions.get(ref.version) or from_table.get(ref)
            else:
                candidates = [versions[max(versions)]] if versions else []
                if ref in from_table:
                    candidates.append(from_table[ref])
                # highest version wins; on a tie the folder's (listed first)
                found = max(candidates, key=lambda f: f.version) if candidates else None
            answers[text] = found if found is not None else self._not_found(ref, versions, from_table)
        return answers

    async def get(self, text: str) -> Template:
        """One usable template, or TemplateError."""
        answer = (await self.resolve([text]))[text]
        if isinstance(answer, TemplateError):
            raise answer
        return answer.usable()

    async def everything(self) -> tuple[list[tuple[Found, str | None]], list[str]]:
        """Every version of every source with what shadows it (None: it is the one used), and unreadable files."""
        index, scans = self.scan_folders()
        listed: list[tuple[Found, str | None]] = []
        for scan in scans:
            for found in scan.found:
                winner = index[found.name][found.version]
                listed.append((found, None if winner.source == found.source else winner.source))
        if self.table is not None:
            for found in await self.table.everything():
                winner = index.get(found.name, {}).get(found.version)
                listed.append((found, winner.source if winner else None))
        listed.sort(key=lambda item: (item[0].name, item[0].version, item[1] is not None))
        return listed, [problem for scan in scans for problem in scan.unreadable]

    def _not_found(self, ref: TemplateRef, versions: dict[int, Found], from_table: dict[TemplateRef, Found]) -> TemplateError:
        known = sorted(set(versions) | {f.version for r, f in from_table.items() if r.name == ref.name})
        where = self.describe()
        if known:
            return TemplateError(f"template {str(ref)!r}", [f"no such version (versions found: {', '.join(map(str, known))})"])
        return TemplateError(f"template {str(ref)!r}", [f"not found (looked in: {where})"])


class _TemplateYamlLoader(yaml.SafeLoader):
    """YAML without aliases: `*name` repeats a node by reference, and a few nested ones
    expand to billions of values once the template is copied or rendered."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in template files",
                                              event.start_mark)
        return super().compose_node(parent, index)


def parse_template_file(path: Path) -> Any:
    """A template file's data (YAML, or JSON for .json); TemplateError when it cannot be parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text) if Path(path).suffix == ".json" else yaml.load(text, Loader=_TemplateYamlLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(str(path), [f"cannot be read ({exc})"]) from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TemplateError(str(path), [f"not valid {'JSON' if Path(path).suffix == '.json' else 'YAML'} ({_one_line(exc)})"]) from None


def read_template_file(path: Path) -> Template:
    """One template file, checked; TemplateError lists every problem."""
    return load_template(parse_template_file(path), str(path))


def _template_files(root: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.endswith(SUFFIXES):
                yield Path(folder) / name


def _found(data: Any, source: str) -> Found | None:
    """A Found from parsed data, or None when not even its name and version can be read."""
    if not isinstance(data, dict):
        return None
    name, version = data.get("name"), data.get("version")
    description = data.get("description") if isinstance(data.get("description"), str) else ""
    try:
        template = load_template(data, source)
    except TemplateError as exc:
        if not isinstance(name, str) or isinstance(version, bool) or not isinstance(version, int):
            return None
        return Found(name, version, source, None, tuple(exc.problems), description)
    return Found(template.name, template.version, source, template, (), template.description)


def _fingerprint(template: Template) -> str:
    body = json.dumps({"workflow": template.workflow, "parameters": template.model_dump(mode="json")["parameters"]},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
