"""comfy/models/cache.py on its own (no ComfyUI): the cap, conflicts, adoption, the token, requests."""

from __future__ import annotations

import os

import pytest

from comfy.errors import InvalidJobInput
from comfy.job.input import parse_job_input
from comfy.media.downloads import download_to_file
from comfy.media.settings import MediaSettings
from comfy.models.cache import ModelCache, ModelCacheFull, ModelConflict, ModelURLRefused, hf_auth_headers
from comfy.models.request import ModelRequest
from tests.comfy.models.tiny_models import sha256, tiny_safetensors

MEDIA = MediaSettings(allow_private_urls=True, retry_backoff_s=0.01)


def request_for(media_server, name: str, data: bytes, folder: str = "loras") -> ModelRequest:
    url = media_server.add(f"/m/{folder}/{name}", body=data)
    return ModelRequest(url=url, sha256=sha256(data), folder=folder, name=name)


def fetch(cache: ModelCache, request: ModelRequest, lease=None):
    lease = lease or cache.lease()
    try:
        return cache.ensure(request, lease, MEDIA)
    finally:
        if lease is not None:
            lease.release()


def test_a_model_that_only_fits_by_evicting_files_in_use_fails_and_evicts_nothing(tmp_path, media_server):
    cache = ModelCache(tmp_path, max_bytes=2500)
    one, two = (tiny_safetensors({"w": [float(i)]}, pad_to=1000) for i in (1, 2))
    fetch(cache, request_for(media_server, "one.safetensors", one))
    fetch(cache, request_for(media_server, "two.safetensors", two))
    running = cache.lease(["loras/one.safetensors", "loras/two.safetensors"])  # another job uses both
    try:
        third = tiny_safetensors({"w": [3.0]}, pad_to=1000)
        with pytest.raises(ModelCacheFull) as caught:
            fetch(cache, request_for(media_server, "three.safetensors", third))
    finally:
        running.release()
    assert caught.value.error_type == "model_cache_full"
    assert "loras/one.safetensors, loras/two.safetensors" in caught.value.message
    assert sorted(p.name for p in (tmp_path / "loras").iterdir()) == ["one.safetensors", "two.safetensors"]
    assert [p for p in (tmp_path / ".comfy-worker" / "tmp").rglob("*") if p.is_file()] == []


def test_a_model_larger_than_the_cap_is_refused_while_downloading(tmp_path, media_server):
    cache = ModelCache(tmp_path, max_bytes=500)
    big = tiny_safetensors({"w": [1.0]}, pad_to=2000)
    with pytest.raises(ModelCacheFull, match="larger than MODEL_CACHE_MAX_BYTES"):
        fetch(cache, request_for(media_server, "big.safetensors", big))
    assert not (tmp_path / "loras" / "big.safetensors").exists()


def test_least_recently_used_goes_first(tmp_path, media_server):
    cache = ModelCache(tmp_path, max_bytes=2500)
    for name, used_at in (("old", 1_000_000), ("newer", 2_000_000)):
        fetch(cache, request_for(media_server, f"{name}.safetensors", tiny_safetensors({"w": [1.0]}, pad_to=1000)))
        entry = tmp_path / ".comfy-worker" / "entries" / "loras" / f"{name}.safetensors.json"
        os.utime(entry, (used_at, used_at))  # used long ago, "old" before "newer"
    fetch(cache, request_for(media_server, "newest.safetensors", tiny_safetensors({"w": [2.0]}, pad_to=1000)))
    assert sorted(p.name for p in (tmp_path / "loras").iterdir()) == ["newer.safetensors", "newest.safetensors"]


def test_a_new_version_under_a_used_name_replaces_it_only_when_no_job_uses_it(tmp_path, media_server):
    cache = ModelCache(tmp_path)
    first = tiny_safetensors({"w": [1.0]})
    fetch(cache, request_for(media_server, "style.safetensors", first))
    second = tiny_safetensors({"w": [2.0]})
    url = media_server.add("/m/v2/style.safetensors", body=second)
    newer = ModelRequest(url=url, sha256=sha256(second), folder="loras", name="style.safetensors")
    running = cache.lease(["loras/style.safetensors"])
    try:
        with pytest.raises(ModelConflict, match="another job is using it"):
            fetch(cache, newer)
    finally:
        running.release()
    assert (tmp_path / "loras" / "style.safetensors").read_bytes() == first
    assert fetch(cache, newer).source == "download"
    assert (tmp_path / "loras" / "style.safetensors").read_bytes() == second


def test_a_file_put_under_the_name_by_hand_is_used_if_its_hash_matches(tmp_path, media_server):
    cache = ModelCache(tmp_path)
    data = tiny_safetensors({"w": [5.0]})
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "ae.safetensors").write_bytes(data)
    assert fetch(cache, request_for(media_server, "ae.safetensors", data, folder="vae")).source == "cache"
    assert media_server.hits("/m/vae/ae.safetensors") == 0
    # another file under a name the cache did not download: left alone, the job is told
    (tmp_path / "vae" / "mine.safetensors").write_bytes(b"someone's own file")
    with pytest.raises(ModelConflict, match="the cache did not download it"):
        fetch(cache, request_for(media_server, "mine.safetensors", data, folder="vae"))
    assert (tmp_path / "vae" / "mine.safetensors").read_bytes() == b"someone's own file"


def test_cached_files_a_workflow_names_are_found_for_its_lease(tmp_path, media_server):
    cache = ModelCache(tmp_path)
    fetch(cache, request_for(media_server, "detail.safetensors", tiny_safetensors({"w": [1.0]})))
    workflow = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "strength_model": 1.0}},
                "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "not-cached.safetensors"}}}
    assert cache.cached_keys_named_in(workflow) == {"loras/detail.safetensors"}


def test_a_model_url_on_a_private_address_is_refused_before_any_request(tmp_path, media_server):
    request = request_for(media_server, "local.safetensors", b"x")
    cache = ModelCache(tmp_path)
    lease = cache.lease()
    with pytest.raises(ModelURLRefused, match="model loras/local.safetensors: host 127.0.0.1 is a loopback address"):
        cache.ensure(request, lease, MediaSettings())  # the default: private URLs refused
    lease.release()
    assert media_server.hits("/m/loras/local.safetensors") == 0


def test_the_hugging_face_token_goes_to_hugging_face_hosts_only():
    headers = hf_auth_headers("hf_secret")
    assert headers("huggingface.co") == {"Authorization": "Bearer hf_secret"}
    assert headers("hf.co") == {"Authorization": "Bearer hf_secret"}
    for elsewhere in ("cdn-lfs.huggingface.co", "cas-bridge.xethub.hf.co", "huggingface.co.evil.example", "civitai.com"):
        assert headers(elsewhere) == {}
    assert hf_auth_headers(None) is None


def test_per_host_headers_are_asked_for_again_on_every_redirect(tmp_path, media_server):
    # 127.0.0.1 redirects to localhost: a header meant for the first host must not follow.
    data = b"payload"
    target = media_server.add("/final.bin", body=data).replace("127.0.0.1", "localhost")
    start = media_server.add("/start.bin", status=302, location=target)
    download_to_file(start, tmp_path / "out.bin", MEDIA,
                     headers_for_host=lambda host: {"Authorization": "Bearer t"} if host == "127.0.0.1" else {})
    assert media_server.headers_seen["/start.bin"][0].get("Authorization") == "Bearer t"
    assert "Authorization" not in media_server.headers_seen["/final.bin"][0]


@pytest.mark.parametrize("model,message", [
    ({"url": "ftp://x/a.safetensors", "sha256": "0" * 64, "folder": "loras"}, "http or https"),
    ({"url": "https://x/a.safetensors", "sha256": "abc", "folder": "loras"}, "64 hex characters"),
    ({"url": "https://x/a.safetensors", "sha256": "0" * 64, "folder": "weights"}, "unknown model folder 'weights'"),
    ({"url": "https://x/a.safetensors", "sha256": "0" * 64, "folder": "loras", "name": "../a.safetensors"}, "'..'"),
    ({"url": "https://x/", "sha256": "0" * 64, "folder": "loras"}, "has no file name"),
])
def test_a_bad_model_request_is_refused_naming_the_field(model, message):
    with pytest.raises(InvalidJobInput) as caught:
        parse_job_input({"workflow": {"1": {"class_type": "X", "inputs": {}}}, "models": [model]})
    assert caught.value.details[0]["field"].startswith("models.0") and message in caught.value.message


def test_one_name_given_twice_with_different_files_is_refused():
    models = [{"url": "https://x/a.safetensors", "sha256": "0" * 64, "folder": "loras"},
              {"url": "https://y/a.safetensors", "sha256": "1" * 64, "folder": "loras"}]
    with pytest.raises(InvalidJobInput, match="loras/a.safetensors is given twice with different sha256"):
        parse_job_input({"workflow": {"1": {"class_type": "X", "inputs": {}}}, "models": models})


def test_a_hugging_face_snapshot_is_linked_as_org_repo_file(tmp_path):
    from comfy.models.paths import link_hf_snapshots

    repo = tmp_path / "hub" / "models--org--model"
    for revision, text in (("a" * 40, "main's"), ("b" * 40, "newer, not main")):
        (repo / "snapshots" / revision / "sub").mkdir(parents=True)
        (repo / "snapshots" / revision / "sub" / "w.safetensors").write_text(text)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (tmp_path / "hub" / "datasets--org--data" / "snapshots" / "x").mkdir(parents=True)  # not a model: left out
    assert link_hf_snapshots(tmp_path / "hub", tmp_path / "links") == 1
    assert (tmp_path / "links" / "org" / "model" / "sub" / "w.safetensors").read_text() == "main's"
    assert link_hf_snapshots(tmp_path / "no-hub", tmp_path / "links2") == 0
