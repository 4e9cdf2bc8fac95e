"""Where a shared (remote) stage cache lives: `s3://bucket/prefix` or `file:///shared/dir`.

A store holds two kinds of object, DVC/Bazel-style:
    ac/<stage>/<key>.json   the action record: the stage's output file names -> sha256 digests, sizes, meta
    cas/<sha256>            the content store: one blob per distinct file content (identical files stored once)
A store only moves bytes; the rules (digest checks, record written last, first writer wins) are in
remote_cache.py. This module only parses the URL: no client library is imported until the store is used.
"""

import errno
import os
from urllib.parse import unquote, urlsplit

from ..errors import EXIT_USAGE, ToolchainError

ENV = "TOOLCHAIN_REMOTE_CACHE"


# Errors that only a write can raise: while fetching a blob they are the local disk's, never the cache's.
LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class RemoteCacheError(ToolchainError):
    """The shared cache cannot be used as configured (bad URL, no such bucket or directory, credentials
    refused): a one-line error, exit 2. A cache that goes away during a build is not this (see remote_cache)."""

    exit_code = EXIT_USAGE


class RemoteUnavailable(Exception):
    """The store did not answer (connection refused, timeout, server error): the build goes on local-only."""


class RemoteRefused(Exception):
    """The store refused a write (read-only credentials or share): the build goes on reading only."""


def record_path(stage: str, key: str) -> str:
    return f"ac/{stage}/{key}.json"


def blob_path(digest: str) -> str:
    return f"cas/{digest}"


def public_url(url: str) -> str:
    """The URL as it may be printed: never a user:password part."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1])
    return parts.geturl()


def resolve(url):
    """The remote cache URL to use: the one given, else $TOOLCHAIN_REMOTE_CACHE; '' (or neither) means none."""
    if url is None:
        url = os.environ.get(ENV, "")
    return url.strip() or None


def check_url(url: str):
    """Parse without touching the network (a no-op build calls this); a bad URL is a usage error."""
    parts = urlsplit(url)
    shown = public_url(url)
    if parts.username is not None or parts.password is not None:
        raise RemoteCacheError(f"--cache {shown}: credentials do not belong in the URL; use AWS_ACCESS_KEY_ID / "
                               "AWS_SECRET_ACCESS_KEY or ~/.aws/credentials")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise RemoteCacheError(f"--cache {shown}: no bucket (expected s3://BUCKET/PREFIX)")
        if parts.query or parts.fragment:
            raise RemoteCacheError(f"--cache {shown}: no query or fragment expected (expected s3://BUCKET/PREFIX)")
        return parts
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise RemoteCacheError(f"--cache {shown}: expected file:///ABSOLUTE/PATH")
        return parts
    raise RemoteCacheError(f"--cache {shown}: unsupported cache URL (use s3://BUCKET/PREFIX or "
                           "file:///SHARED/DIR)")


def open_store(url: str):
    """The store for a checked URL (the client is created on first use)."""
    parts = check_url(url)
    if parts.scheme == "s3":
        from .s3 import S3Store

        return S3Store(parts.netloc, parts.path, url)
    from .filesystem import FileStore

    return FileStore(unquote(parts.path), url)
