"""Where output files go when they do not travel inline: S3 buckets and Supabase Storage.

Every uploader takes a file on disk and returns a `StoredFile` (url, storage path, size,
sha256, content type); files are streamed from disk, never read whole into memory.
`comfy.delivery.deliver` picks the uploader from the job's `output` and the environment.
"""

from comfy.delivery.storage.base import StoredFile, UploadFailed, Uploader
from comfy.delivery.storage.s3 import S3Uploader, S3Target
from comfy.delivery.storage.supabase import SupabaseUploader

__all__ = ["StoredFile", "UploadFailed", "Uploader", "S3Uploader", "S3Target", "SupabaseUploader"]
