"""Weights given as URLs: downloaded once into Detectron2's file cache, optionally checksummed.

`MODEL.WEIGHTS`, `MODEL.VIT.WEIGHTS` and the converters take `https://...` (or `http://`)
as Detectron2 users expect. The download is iopath's, which Detectron2's PathManager uses:
into `$FVCORE_CACHE` (default `~/.torch/iopath_cache`), under a lock (one download for all
processes), with a progress bar, to a temporary name renamed when complete. A fragment
`#sha256=<hex digest>` is checked after the download and whenever the cached copy is used;
a file that fails the check is deleted. The local file is then read by the safe reader
like any other.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from detectron2.utils.file_io import PathManager

from ..errors import ReinD2Error

URL_SCHEMES = ("https://", "http://")
SHA256_FRAGMENT = re.compile(r"sha256=([0-9a-fA-F]{64})")


class WeightsDownloadError(ReinD2Error, OSError):
    """A weights URL that cannot be downloaded, or whose file fails its checksum."""


def is_url(path: str | Path) -> bool:
    return str(path).startswith(URL_SCHEMES)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_checksum(url: str, config_key: str) -> tuple[str, str | None]:
    """(url without fragment, expected sha256 or None); any other fragment is refused."""
    url, _, fragment = url.partition("#")
    if not fragment:
        return url, None
    match = SHA256_FRAGMENT.fullmatch(fragment)
    if match is None:
        raise WeightsDownloadError(f"{config_key}: the URL fragment '#{fragment}' is not a checksum; "
                                   "write it as '#sha256=' followed by the file's 64 hexadecimal digits")
    return url, match[1].lower()


def local_weights_path(path: str | Path, config_key: str = "weights") -> str:
    """`path` itself, or for a URL the cached download (checked against its sha256, if given)."""
    if not is_url(path):
        return str(path)
    url, expected = split_checksum(str(path), config_key)
    try:
        cached = PathManager.get_local_path(url)
    except OSError as err:  # urllib's HTTPError, URLError and ContentTooShortError among them
        raise WeightsDownloadError(f"{config_key}: cannot download {url}: {err}. Check the URL and the "
                                   "network, or download the file yourself and give its local path") from err
    if expected is not None:
        actual = sha256_of(cached)
        if actual != expected:
            os.unlink(cached)
            raise WeightsDownloadError(
                f"{config_key}: {url} has sha256 {actual}, not the {expected} the URL asks for; the "
                "download was deleted. Check the digest, or the file on the server has changed")
    return cached
