"""Hub access that never waits on the network.

Before transformers, datasets or huggingface_hub are imported, `ensure_offline_if_unreachable` checks in
a couple of seconds whether the Hub answers; if it does not, it switches the libraries to offline mode
(HF_HUB_OFFLINE=1), so cached ids still load and an uncached one fails at once with a useful message
instead of retrying for most of a minute.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ftune.errors import UsageError

_checked = False


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    """The Hub ftune talks to: HF_ENDPOINT, read when needed (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def ensure_offline_if_unreachable(timeout: float = 2.0) -> bool:
    """Set HF_HUB_OFFLINE=1 when the Hub cannot be reached; returns whether ftune is offline."""
    global _checked
    if hub_offline() or _checked:
        return hub_offline()
    _checked = True
    parsed = urlparse(hub_endpoint())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return False
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        _sync_loaded_libraries()
        return True


def _sync_loaded_libraries() -> None:
    """Libraries read HF_HUB_OFFLINE at import; tell any already imported (tests run in one process)."""
    import importlib
    import sys

    # Submodules imported by name: huggingface_hub loads its attributes lazily, so `huggingface_hub.constants` is
    # not an attribute of the package until something imports it.
    for library, module in (("huggingface_hub", "huggingface_hub.constants"), ("datasets", "datasets.config")):
        if library in sys.modules:
            importlib.import_module(module).HF_HUB_OFFLINE = True


def is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def require_model(name: str, what: str = "model") -> None:
    """Fail fast when `name` is neither a local path nor usable from the Hub (cached, or Hub reachable)."""
    if is_local(name):
        return
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise UsageError(f"{what} {name} does not exist; check the path given to --model")
    if not ensure_offline_if_unreachable():
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
        raise UsageError(f"{what} '{name}' is not in the local cache and the Hugging Face Hub is offline or "
                         f"unreachable; pass a local model folder to --model (or download it first)")


def require_hub_dataset(name: str) -> None:
    """Fail fast for a Hub dataset id while offline; a cached dataset still loads through `datasets`."""
    if not ensure_offline_if_unreachable():
        return
    from huggingface_hub import constants

    cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    hub_cache = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    local_name = name.replace("/", "___")
    if hub_cache.exists() or any(cache.glob(f"{local_name}*")):
        return
    raise UsageError(f"dataset '{name}' is not in the local cache and the Hugging Face Hub is offline or "
                     "unreachable; pass a local file or folder to --data")
