"""Reaching the Hugging Face hub, or failing fast with one clear error when it cannot be reached
(instead of huggingface_hub's five retries and a stack trace)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from twossp.errors import DataUnavailable

if TYPE_CHECKING:
    from twossp.spec import TaskSpec


@lru_cache(maxsize=1)
def unreachable_reason() -> str | None:
    """Why the hub cannot be reached from here, or None if it can (checked once per process)."""
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    return None


def unavailable(what: str, reason: str, hint: str) -> DataUnavailable:
    return DataUnavailable(f"could not fetch {what} from the Hugging Face hub ({reason}). {hint}")


def unreachable_tasks(tasks: "list[TaskSpec]", task_data: str | None) -> str | None:
    """Why the tasks that read the harness's hub datasets cannot run here (None when the hub is
    reachable or every task's data is local)."""
    from twossp.tasks import hub_unreachable

    hub = [t.task for t in tasks if t.folder(task_data) is None]
    reason = unreachable_reason() if hub else None
    return hub_unreachable(hub, reason) if reason else None
