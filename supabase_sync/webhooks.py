"""Per-task webhook URLs for RunPod, signed with HMAC, and their verification.

RunPod's webhooks carry no signature of their own, so the URL does: it names the task and
the claim's lease token, and an HMAC-SHA256 of both under WEBHOOK_SECRET. A forged or
altered URL fails verification; a URL from an older claim verifies but its write-back is
refused by the database as stale.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode
from uuid import UUID

RUNPOD_HOOK_PATH = "/hooks/runpod"


def sign(secret: str, task_id: UUID | str, lease_token: UUID | str) -> str:
    message = f"{task_id}:{lease_token}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def webhook_url(public_url: str, secret: str, task_id: UUID, lease_token: UUID) -> str:
    query = urlencode({"task_id": str(task_id), "lease": str(lease_token), "sig": sign(secret, task_id, lease_token)})
    return f"{public_url.rstrip('/')}{RUNPOD_HOOK_PATH}?{query}"


def verify(secret: str, task_id: str, lease_token: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, task_id, lease_token), signature or "")
