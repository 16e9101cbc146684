"""The ComfyUI side of the worker: the process, its client, and running one job."""
