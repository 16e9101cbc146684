"""Every output a workflow produces comes back: images, batches, videos, gifs, text."""

from __future__ import annotations

import base64

from tests.conftest import b64, empty_image_graph, file_bytes, png_bytes, run_handler, unique_color


def test_one_image_in_one_image_out(worker):
    source = png_bytes(32, 24, (10, 200, 40))
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "one.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "one/inverted"}},
    }
    result = run_handler(worker, {"workflow": workflow, "images": [{"name": "one.png", "image": b64(source)}]})

    assert "error" not in result, result
    assert len(result["images"]) == 1
    from PIL import Image
    import io

    out = Image.open(io.BytesIO(base64.b64decode(result["images"][0]["data"])))
    assert out.size == (32, 24)
    pixel = out.convert("RGB").getpixel((0, 0))
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, (245, 55, 215))), pixel  # inverted (10, 200, 40)
    [entry] = result["outputs"]
    assert entry["node_id"] == "3" and entry["class_type"] == "SaveImage"
    assert entry["kind"] == "image" and entry["content_type"] == "image/png"
    assert entry["size_bytes"] == len(file_bytes(result, entry))
    assert entry["delivery"] == "inline" and "data" not in entry  # the bytes travel once, in images[]
    assert entry["subfolder"] == "one"


def test_several_save_nodes_and_batches_return_every_file_in_node_order(worker):
    color = unique_color()
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": color}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "multi/ten"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "multi/nine"}},
    }
    result = run_handler(worker, {"workflow": workflow})

    assert "error" not in result, result
    assert [o["node_id"] for o in result["outputs"]] == ["9", "9", "9", "10", "10", "10"]
    names = [o["filename"] for o in result["outputs"]]
    assert len(set(names)) == 6
    assert [i["filename"] for i in result["images"]] == names
    assert all(i["type"] == "base64" and i["data"] for i in result["images"])


def test_video_from_create_video_and_save_video(worker):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": unique_color()}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "vid/clip", "format": "mp4", "codec": "h264"}},
    }
    result = run_handler(worker, {"workflow": workflow})

    assert "error" not in result, result
    [video] = result["outputs"]
    assert video["kind"] == "video" and video["content_type"] == "video/mp4"
    assert video["filename"].endswith(".mp4")
    data = file_bytes(result, video)
    assert data[4:8] == b"ftyp"  # an MP4 container
    assert result["images"][0]["filename"] == video["filename"]


def test_preview_images_left_out_unless_include_temp(worker):
    color = unique_color()
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "preview/saved"}},
    }
    without = run_handler(worker, {"workflow": workflow})
    assert "error" not in without, without
    assert [o["node_id"] for o in without["outputs"]] == ["3"]

    workflow["1"]["inputs"]["color"] = (color + 1) % 0xFFFFFF
    with_temp = run_handler(worker, {"workflow": workflow, "include_temp": True})
    assert "error" not in with_temp, with_temp
    assert [o["node_id"] for o in with_temp["outputs"]] == ["2", "3"]
    assert with_temp["outputs"][0]["folder_type"] == "temp"


def test_gifs_key_like_video_helper_suite_is_returned(worker):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": unique_color()}},
        "2": {"class_type": "TestGifOutput", "inputs": {"images": ["1", 0], "filename_prefix": "gif/anim"}},
    }
    result = run_handler(worker, {"workflow": workflow})

    assert "error" not in result, result
    [gif] = result["outputs"]
    assert gif["key"] == "gifs" and gif["kind"] == "image" and gif["content_type"] == "image/gif"
    assert file_bytes(result, gif).startswith(b"GIF8")


def test_text_outputs_come_back_as_text(worker):
    workflow = {"1": {"class_type": "TestTextOutput", "inputs": {"text": "a cat on a mat"}}}
    result = run_handler(worker, {"workflow": workflow})

    assert "error" not in result, result
    assert [(o["kind"], o["text"]) for o in result["outputs"]] == [("text", "a cat on a mat"), ("text", "A CAT ON A MAT")]
    assert result["images"] == []


def test_timings_and_prompt_id_are_reported(worker):
    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})

    assert "error" not in result, result
    assert result["prompt_id"]
    timings = result["timings"]
    assert timings["execution_ms"] is not None and timings["execution_ms"] >= 0
    assert timings["total_ms"] >= timings["fetch_ms"] >= 0
