"""The result's shape, and its size exactly as the RunPod SDK will send it.

    {"images":  [{"filename", "type", "data"}, ...],        worker-comfyui's list: every file once
     "outputs": [{..., "delivery", "images_index"}, ...],   every output; a file refers to its images[] entry
     "delivery": {"inline_files", "stored_files", "storage", "result_max_bytes"}}

`images[i].data` holds a file's base64 (`type` "base64") or its URL (`type` "s3_url" /
"supabase_url"), as worker-comfyui's clients read it. An `outputs` entry of a file says where
its bytes went (`delivery`: "inline", "s3" or "supabase") and where to find them
(`images_index`); a stored file also carries url, storage_path, bucket and sha256. Text
outputs carry `text` inline, or url/storage_path when they went to storage.

Sizes: the SDK posts `json.dumps(result, ensure_ascii=False)` as UTF-8. Base64 needs no JSON
escaping, so an inline file costs exactly its base64 length plus its entries, and the whole
result can be measured from metadata alone, before any file is read or encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from comfy.delivery.outputs import OutputFile, OutputKind
from comfy.delivery.storage import StoredFile

INLINE = "inline"
# Room left in the budget for what is added after delivery: prompt_id, timings, refresh_worker,
# and the SDK's own envelope ({"output": ..., "stopPod": true}).
RESERVE_BYTES = 1024
# Before an upload its URL is unknown: presigned S3 URLs run 500-1500 bytes, Supabase's signed
# ones about 300. Counted per appearance (outputs[].url and images[].data) until the real one is known.
URL_ALLOWANCE = 1536
BUCKET_ALLOWANCE = 64
_SHA256_PLACEHOLDER = "0" * 64


@dataclass(frozen=True)
class InlineData:
    """A file's base64 and the sha256 of its bytes."""

    data: str
    sha256: str


def b64_length(size: int) -> int:
    """Length of the base64 text of `size` bytes (padded)."""
    return 4 * ((size + 2) // 3)


def json_size(value: Any) -> int:
    """Bytes of `value` as the runpod SDK sends it: json.dumps(..., ensure_ascii=False) in UTF-8."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _entry(item: OutputFile) -> dict[str, Any]:
    return item.model_dump(mode="json", exclude_none=True)


def output_entry(item: OutputFile, images_index: int | None, inline: InlineData | None = None,
                 stored: StoredFile | None = None, mode: str | None = None,
                 poster: StoredFile | None = None) -> dict[str, Any]:
    """The `outputs` entry of one output: inline (`inline` given, or a text) or stored."""
    entry = _entry(item)
    if stored is not None:
        entry.pop("text", None)
        entry.update(stored.model_dump(mode="json"))
        entry["delivery"] = mode
    else:
        if inline is not None:
            entry["sha256"] = inline.sha256
        entry["delivery"] = INLINE
    if images_index is not None:
        entry["images_index"] = images_index
    if poster is not None:
        entry["poster"] = poster.model_dump(mode="json")
    return entry


def image_entry(item: OutputFile, inline: InlineData | None = None, stored: StoredFile | None = None,
                mode: str | None = None) -> dict[str, Any]:
    """worker-comfyui's `images` entry: base64 inline, else the stored file's URL."""
    if stored is not None:
        return {"filename": item.filename, "type": f"{mode}_url", "data": stored.url}
    assert inline is not None
    return {"filename": item.filename, "type": "base64", "data": inline.data}


def is_file(item: OutputFile) -> bool:
    return item.kind is not OutputKind.TEXT and item.path is not None


def summary(inline_files: int, stored_files: int, storage: str | None, max_bytes: int) -> dict[str, Any]:
    return {"inline_files": inline_files, "stored_files": stored_files, "storage": storage,
            "result_max_bytes": max_bytes}


def assemble(files: list[OutputFile], inline: dict[int, InlineData], stored: dict[int, StoredFile],
             mode: str | None, max_bytes: int, posters: dict[int, StoredFile] | None = None) -> dict[str, Any]:
    """The result: each file inline (`inline`, by output index) or stored (`stored`), texts inline unless stored."""
    posters = posters or {}
    images: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for index, item in enumerate(files):
        if is_file(item):
            outputs.append(output_entry(item, len(images), inline.get(index), stored.get(index), mode,
                                        posters.get(index)))
            images.append(image_entry(item, inline.get(index), stored.get(index), mode))
        else:
            outputs.append(output_entry(item, None, stored=stored.get(index), mode=mode))
    files_inline = sum(1 for index, item in enumerate(files) if is_file(item) and index not in stored)
    return {"images": images, "outputs": outputs,
            "delivery": summary(files_inline, len(stored), mode if stored else None, max_bytes)}


class SizeModel:
    """The encoded size of a result whose outputs are each inline or stored, from metadata only.

    A list of n entries encodes as `[a, b, ...]`: the entries' own sizes plus 2 bytes (", ")
    between each. Inline files count their base64 length without being read; a text larger than
    the whole budget is counted by its UTF-8 size (its JSON is at least that large) instead of
    being encoded.
    """

    def __init__(self, files: list[OutputFile], max_bytes: int, storage_keys: dict[int, str]) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self.storage_keys = storage_keys  # output index -> key it would get in storage
        self._inline_sizes: dict[int, tuple[int, int]] = {}
        self._images_index: dict[int, int] = {}  # output index -> its place in images[]
        for index, item in enumerate(files):
            if is_file(item):
                self._images_index[index] = len(self._images_index)

    def inline_size(self, index: int) -> tuple[int, int]:
        """(its images[] entry, its outputs[] entry) in bytes when it stays inline."""
        if index not in self._inline_sizes:
            item = self.files[index]
            if is_file(item):
                size = item.size_bytes or 0
                placeholder = InlineData(data="", sha256=_SHA256_PLACEHOLDER)
                self._inline_sizes[index] = (json_size(image_entry(item, placeholder)) + b64_length(size),
                                             json_size(output_entry(item, self._images_index[index], placeholder)))
            elif (item.size_bytes or 0) > self.max_bytes:
                self._inline_sizes[index] = (0, item.size_bytes or 0)
            else:
                self._inline_sizes[index] = (0, json_size(output_entry(item, None)))
        return self._inline_sizes[index]

    def stored_size(self, index: int, stored: StoredFile | None = None, mode: str = "supabase") -> tuple[int, int]:
        """(images[] entry, outputs[] entry) when stored: exact for `stored`, else with URL allowances."""
        item = self.files[index]
        extra = 0
        if stored is None:
            stored = StoredFile(url="", storage_path=self.storage_keys.get(index, ""), bucket="",
                                size_bytes=item.size_bytes or 0, sha256=_SHA256_PLACEHOLDER,
                                content_type=item.content_type or "application/octet-stream")
            extra = URL_ALLOWANCE + BUCKET_ALLOWANCE
        out = json_size(output_entry(item, self._images_index.get(index), stored=stored, mode=mode)) + extra
        if not is_file(item):
            return 0, out
        return json_size(image_entry(item, stored=stored, mode=mode)) + (URL_ALLOWANCE if extra else 0), out

    def total(self, stored: dict[int, StoredFile | None], mode: str | None = None) -> int:
        """Size of the whole result with the outputs in `stored` in storage (None: not uploaded yet)."""
        images = outputs = 0
        n_images = 0
        for index, item in enumerate(self.files):
            if index in stored:
                image, out = self.stored_size(index, stored[index], mode or "supabase")
            else:
                image, out = self.inline_size(index)
            if is_file(item):
                images += image
                n_images += 1
            outputs += out
        frame = json_size({"images": [], "outputs": [],
                           "delivery": summary(len(self.files), len(self.files), mode or "supabase", self.max_bytes)})
        return frame + images + 2 * max(n_images - 1, 0) + outputs + 2 * max(len(self.files) - 1, 0)
