"""Test-only ComfyUI custom nodes: behaviours stock nodes cannot produce on demand.

Copied into the test ComfyUI's custom_nodes/ folder by tests/comfy_env.py.
"""

import os
import time

import folder_paths
import comfy.model_management


class TestRaise:
    """Raises, to produce an execution_error."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"message": ("STRING", {"default": "boom"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, message):
        raise ValueError(message)


class TestSleep:
    """Passes an image through after sleeping, checking for interrupts like a sampler does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(0.02)
        return (image,)


class TestProgress:
    """Reports progress steps like a sampler, then passes the image through."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "steps": ("INT", {"default": 5, "min": 1, "max": 1000})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image, steps):
        import comfy.utils

        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            time.sleep(0.05)
            bar.update(1)
        return (image,)


class TestGifOutput:
    """Writes a small file and reports it under `gifs`, as VideoHelperSuite's VHS_VideoCombine does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "vhs_like"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, images, filename_prefix):
        from PIL import Image

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), images.shape[2], images.shape[1]
        )
        frames = [Image.fromarray((255.0 * img.cpu().numpy()).clip(0, 255).astype("uint8")) for img in images]
        filename = f"{name}_{counter:05}_.gif"
        frames[0].save(os.path.join(folder, filename), save_all=True, append_images=frames[1:], duration=100, loop=0)
        return {"ui": {"gifs": [{"filename": filename, "subfolder": subfolder, "type": "output", "format": "image/gif"}]}}


class TestTextOutput:
    """Returns text to the UI, as captioning and LLM nodes do."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hello"})},
                "optional": {"repeat": ("INT", {"default": 1, "min": 1, "max": 100_000_000})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, text, repeat=1):
        text = text * repeat  # large texts, as a long transcript or an LLM's answer would be
        return {"ui": {"text": [text, text.upper()]}}


class TestLoadLora:
    """Loads a file from the loras folder the way ComfyUI's LoraLoader does, and reports its tensors.

    The combo input is ComfyUI's own file list (so a file the worker's model cache has not
    made visible fails validation), and the file goes through folder_paths and
    comfy.utils.load_torch_file, the loader every model node uses.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora_name": (folder_paths.get_filename_list("loras"),)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, lora_name):
        import comfy.utils

        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        tensors = comfy.utils.load_torch_file(path, safe_load=True)
        described = [f"{name}:{list(t.shape)}:{float(t.float().sum()):.4f}" for name, t in sorted(tensors.items())]
        return {"ui": {"text": described}}


class TestLoadWeights:
    """A loader like CheckpointLoaderSimple: not an output node, so ComfyUI keeps what it loaded for the next prompt."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora_name": (folder_paths.get_filename_list("loras"),)}}

    RETURN_TYPES = ("WEIGHTS",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, lora_name):
        import comfy.utils

        tensors = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("loras", lora_name), safe_load=True)
        return ({name: t.float().clone() for name, t in tensors.items()},)  # in memory, as a loaded model is


class TestDescribeWeights:
    """Uses loaded weights (a sum over every value, like a forward pass touches them) and reports them."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"weights": ("WEIGHTS",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, weights):
        return {"ui": {"text": [f"{name}:{list(t.shape)}:{float(t.sum()):.4f}" for name, t in sorted(weights.items())]}}


class TestIgnoreInterrupt:
    """Passes an image through after sleeping without ever checking for interrupts, like a
    node stuck in a long native call."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image, seconds):
        time.sleep(seconds)
        return (image,)


class TestReportFile:
    """Reports whatever file entry it is given as its output, as a buggy or hostile node could."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"filename": ("STRING", {"default": "x.png"}), "subfolder": ("STRING", {"default": ""}),
                             "folder_type": ("STRING", {"default": "output"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, filename, subfolder, folder_type):
        return {"ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": folder_type}]}}


class TestRegisterClass:
    """Adds a node class (a copy of TestTextOutput) to the running ComfyUI, as a restart with
    a new custom node would: /object_info lists it from then on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "TestLateNode"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, name):
        import nodes

        nodes.NODE_CLASS_MAPPINGS[name] = type(name, (TestTextOutput,), {})
        return {"ui": {"text": [name]}}


class TestStallAfterPrompt:
    """Passes an image through; once its prompt has sent `execution_success`, holds ComfyUI's prompt
    worker thread for `seconds` before it writes the history entry and sends `executing` None, as a
    slow post-prompt gc.collect() does (a full collection holds ComfyUI's GIL)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 600.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image, seconds):
        from server import PromptServer

        server = PromptServer.instance
        prompt_id = server.last_prompt_id  # the prompt running this node
        original = server.send_sync

        def send_sync(event, data, sid=None):
            original(event, data, sid)
            if isinstance(data, dict) and data.get("prompt_id") == prompt_id and event.startswith("execution_") \
                    and event != "execution_start" and event != "execution_cached":
                del server.send_sync  # once: the class's own method again
                if event == "execution_success":
                    time.sleep(seconds)

        server.send_sync = send_sync
        return (image,)


class TestFixedNameImage:
    """Saves its image under one fixed name in output/, replacing what is there, as some custom
    nodes do (no counter): two prompts in a row write the same file."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "name": ("STRING", {"default": "fixed.png"}),
                             "subfolder": ("STRING", {"default": "fixed"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, images, name, subfolder):
        from PIL import Image

        folder = os.path.join(folder_paths.get_output_directory(), subfolder)
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((255.0 * images[0].cpu().numpy()).clip(0, 255).astype("uint8")).save(os.path.join(folder, name))
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


class TestCrash:
    """Kills the ComfyUI process it runs in (SIGKILL) after passing `seconds`, like a driver crash."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, image, seconds):
        import signal

        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
        return (image,)


class TestReadInput:
    """Reads a file of ComfyUI's input folder to the end and reports its size and first byte, as a
    loader of a large video would read it; an input field named `file` like core LoadVideo's."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": ("STRING", {"default": "input.bin"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, file):
        path = folder_paths.get_annotated_filepath(file)
        size, first = 0, None
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                first = chunk[0] if first is None else first
                size += len(chunk)
        return {"ui": {"text": [f"{file}:{size}:{first}"]}}


NODE_CLASS_MAPPINGS = {
    "TestFixedNameImage": TestFixedNameImage,
    "TestCrash": TestCrash,
    "TestReadInput": TestReadInput,
    "TestStallAfterPrompt": TestStallAfterPrompt,
    "TestIgnoreInterrupt": TestIgnoreInterrupt,
    "TestReportFile": TestReportFile,
    "TestRegisterClass": TestRegisterClass,
    "TestRaise": TestRaise,
    "TestSleep": TestSleep,
    "TestProgress": TestProgress,
    "TestGifOutput": TestGifOutput,
    "TestTextOutput": TestTextOutput,
    "TestLoadLora": TestLoadLora,
    "TestLoadWeights": TestLoadWeights,
    "TestDescribeWeights": TestDescribeWeights,
}
