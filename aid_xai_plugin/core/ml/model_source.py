"""Model files given by URL (http:// or https://), for machines that share no disk.

A URL is downloaded into a per-user cache folder under the name of its content's SHA-256, written
under a temporary name, flushed and renamed, so a killed download never leaves a file there that looks
complete. The process that starts a run downloads and hashes the file; a Dask worker is given that
SHA-256 and uses its cached copy when one with that content is there (one download per machine, not
per task), else downloads it and refuses a file whose SHA-256 differs (the URL now serves another
file, or something between altered it). Loading stays `model_file.load_model`'s, with
`torch.load(weights_only=True)`.
"""

import hashlib
import os
import re
import tempfile
import threading
import uuid

from ..common.errors import AidXaiError

CACHE_VARIABLE = "AID_XAI_MODEL_CACHE"  # a folder to cache downloaded models in, instead of the default
DOWNLOAD_TIMEOUT_S = 60  # longest wait for the server to connect or send the next bytes
_URL = re.compile(r"^https?://", re.IGNORECASE)
_CHUNK = 1 << 20
_verified = {}  # (url, SHA-256) → cached path whose content this process has checked
_lock = threading.Lock()


def is_model_url(path):
    return bool(_URL.match(str(path or "")))


def model_cache_folder():
    """$AID_XAI_MODEL_CACHE, else the user's cache folder (XDG_CACHE_HOME or ~/.cache; %LOCALAPPDATA%
    on Windows)/aid_xai/models, else one under the system's temporary folder when home isn't writable."""
    folder = os.environ.get(CACHE_VARIABLE)
    if folder:
        return folder
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        base = os.environ["LOCALAPPDATA"]
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "aid_xai", "models")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    user = getattr(os, "getuid", lambda: os.environ.get("USERNAME", "user"))()
    return os.path.join(tempfile.gettempdir(), f"aid_xai_models_{user}")


def cached_model(url, expected_sha256=""):
    """A local path holding the model file at `url`. With `expected_sha256` (what the run's main process
    computed), a cached copy with that content is used without downloading, and a download with other
    content is refused; without it the file is always downloaded (the URL may serve a newer model)."""
    folder = model_cache_folder()
    if expected_sha256:
        path = os.path.join(folder, f"{expected_sha256}.aidx.pt")
        with _lock:
            if _verified.get((url, expected_sha256)) == path and os.path.isfile(path):
                return path
        if os.path.isfile(path) and _file_sha256(path) == expected_sha256:
            with _lock:
                _verified[(url, expected_sha256)] = path
            return path
    path, digest = _download(url, folder)
    if expected_sha256 and digest != expected_sha256:
        raise AidXaiError(
            f"The model downloaded from '{url}' has SHA-256 {digest[:12]}…, not {expected_sha256[:12]}… as the file the run loaded: "
            "the URL now serves another file (replaced during the run), or something between altered it. Serve one fixed file at the URL "
            "(e.g. a name with a version) and run again."
        )
    with _lock:
        _verified[(url, digest)] = path
    return path


def _download(url, folder):
    """Download `url` into `folder` as <SHA-256>.aidx.pt (atomically); (path, SHA-256)."""
    import http.client
    import socket
    import urllib.error
    import urllib.request

    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise AidXaiError(f"Cannot create the model cache folder '{folder}' ({error.strerror or error}); set {CACHE_VARIABLE} to a writable folder.") from error
    temporary = os.path.join(folder, f".{uuid.uuid4().hex}.partial")
    digest = hashlib.sha256()
    received = 0
    fix = f"check the URL and that the server answers (e.g. `curl -I '{url}'`), or give a local model file"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "aid-xai"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(temporary, "wb") as stream:
            expected = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                stream.write(chunk)
                received += len(chunk)
            if expected is not None and expected.isdigit() and int(expected) != received:
                raise AidXaiError(f"Cannot download the model '{url}': the server sent {received} of {expected} bytes; {fix}.")
            stream.flush()
            os.fsync(stream.fileno())
        path = os.path.join(folder, f"{digest.hexdigest()}.aidx.pt")
        os.replace(temporary, path)
        return path, digest.hexdigest()
    except urllib.error.HTTPError as error:
        raise AidXaiError(f"Cannot download the model '{url}': the server answered HTTP {error.code} {error.reason}; {fix}.") from None
    except urllib.error.URLError as error:
        raise AidXaiError(f"Cannot download the model '{url}': the server did not answer ({error.reason}); {fix}.") from None
    except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise AidXaiError(f"Cannot download the model '{url}': the connection failed after {received} bytes ({error or type(error).__name__}); {fix}.") from None
    except OSError as error:
        raise AidXaiError(f"Cannot write the downloaded model to '{folder}' ({error.strerror or error}); set {CACHE_VARIABLE} to a writable folder with room for it.") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
