"""Model files: the ComfyUI folders they may go in (`checkpoints`, `loras`, ...), and their sha256.

MODEL_FOLDERS are ComfyUI 0.3.75's folders (folder_paths.py), plus the legacy names it maps
(unet -> diffusion_models, clip -> text_encoders); tests/builder checks this list against
the real folder_paths.py. Standard library only: the image build (builder/fetch_models.py)
and the worker's boot both use it before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

HASH_CHUNK = 1 << 20

MODEL_FOLDERS = frozenset({
    "audio_encoders", "checkpoints", "classifiers", "clip", "clip_vision", "configs", "controlnet",
    "diffusers", "diffusion_models", "embeddings", "gligen", "hypernetworks", "latent_upscale_models",
    "loras", "model_patches", "photomaker", "style_models", "text_encoders", "unet", "upscale_models",
    "vae", "vae_approx",
})
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}
# What model files end with: ComfyUI's supported_pt_extensions, and formats custom nodes load
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf", ".onnx"})


def bad_relative(path: str) -> bool:
    """True for a path that is absolute, empty, or climbs out (`..`) of where it is put."""
    parts = PurePosixPath(path).parts
    return path.startswith("/") or not parts or any(part in ("..", ".") for part in parts) or "\\" in path


def valid_folder(folder: str) -> bool:
    """A model folder, optionally with subfolders (`loras/styles`)."""
    return not bad_relative(folder) and PurePosixPath(folder).parts[0] in MODEL_FOLDERS


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
