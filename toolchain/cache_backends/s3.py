"""The shared cache on S3 or an S3-compatible server (MinIO, SeaweedFS, Ceph), through boto3.

Credentials, region and endpoint come from boto3's own chain, never from toolchain options: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), AWS_PROFILE, ~/.aws/credentials and ~/.aws/config, AWS_ENDPOINT_URL
or AWS_ENDPOINT_URL_S3 for a server that is not AWS. Nothing here prints them: error lines carry an S3 error code
or a botocore exception name, scrubbed of any credential value all the same.
"""

import os
import shutil
from pathlib import Path

from . import LOCAL_WRITE_ERRNOS, RemoteCacheError, RemoteRefused, RemoteUnavailable, blob_path, public_url, record_path

_MISSING = ("NoSuchKey", "404", "NotFound")
_BAD_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "AuthorizationHeaderMalformed")
_DENIED = ("AccessDenied", "403", "Forbidden", "AllAccessDisabled")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def scrub(text: str) -> str:
    """Belt and braces: no credential value from the environment survives in a message."""
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return " ".join(text.split())[:300]


def _local_write_error(e: Exception, dest: Path) -> bool:
    return isinstance(e, OSError) and (e.filename == str(dest) or e.errno in LOCAL_WRITE_ERRNOS)


def _dropped(e: Exception) -> Exception:
    """A connection that dropped while a body was streaming (botocore or urllib3 errors) means the cache is
    gone; anything else is ours and keeps its traceback."""
    from botocore.exceptions import BotoCoreError

    if isinstance(e, (RemoteUnavailable, RemoteCacheError, RemoteRefused)):
        return e
    if isinstance(e, (OSError, BotoCoreError)) or type(e).__module__.startswith("urllib3"):
        return RemoteUnavailable(f"{type(e).__name__}: {scrub(str(e))}")
    return e


class S3Store:
    def __init__(self, bucket: str, prefix: str, url: str):
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.url = public_url(url)
        self._s3 = None

    # ---- the client, made on first use (boto3 costs ~0.3 s to import) -----------------------------------------
    @property
    def s3(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            # Short connect timeout and few retries: a cache that is gone must not stall a build for minutes.
            retries = None if os.environ.get("AWS_MAX_ATTEMPTS") else {"max_attempts": 3, "mode": "standard"}
            config = Config(connect_timeout=5, read_timeout=60, retries=retries)
            try:
                self._s3 = boto3.session.Session().client("s3", config=config)
            except Exception as e:  # e.g. a malformed ~/.aws/config, an invalid endpoint URL
                raise RemoteCacheError(f"remote cache {self.url}: cannot make an S3 client "
                                       f"({type(e).__name__}: {scrub(str(e))})") from None
            self._check_bucket()
        return self._s3

    def _check_bucket(self):
        """A bucket that does not exist is a configuration error, found before any stage runs on it."""
        from botocore.exceptions import ClientError

        try:
            self._call(self._s3.head_bucket, Bucket=self.bucket)
        except ClientError:
            pass
        except RemoteRefused:  # HEAD has no error body: bad credentials or no ListBucket right; reads will say
            pass

    def _key(self, path: str) -> str:
        return self.prefix + path

    def _call(self, fn, **kw):
        """One S3 request; S3's answers mapped to what the cache does about them."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            return fn(**kw)
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (fn.__name__ == "head_bucket" and code in _MISSING):
                raise RemoteCacheError(f"remote cache {self.url}: no such bucket {self.bucket!r}") from None
            if code in _MISSING or code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise  # the caller knows what a miss or a lost race means
            if code in _BAD_CREDENTIALS:
                raise RemoteCacheError(f"remote cache {self.url}: the server refused the credentials ({code}); "
                                       "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
            if code in _DENIED:
                raise RemoteRefused(f"access denied ({code})") from None
            raise RemoteUnavailable(f"S3 error {code or '?'} (HTTP {status})") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise RemoteCacheError(f"remote cache {self.url}: no credentials found (set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / ~/.aws/credentials)") from None
        except BotoCoreError as e:  # connection refused, timeouts, a dropped connection
            raise RemoteUnavailable(f"{type(e).__name__}: {scrub(str(e))}") from None

    @staticmethod
    def _code(e) -> str:
        return str(e.response.get("Error", {}).get("Code", ""))

    # ---- the store's operations --------------------------------------------------------------------------------
    def read_record(self, stage: str, key: str):
        from botocore.exceptions import ClientError

        try:
            obj = self._call(self.s3.get_object, Bucket=self.bucket, Key=self._key(record_path(stage, key)))
            return obj["Body"].read()
        except ClientError as e:
            if self._code(e) in _MISSING:
                return None
            raise
        except RemoteRefused as e:  # reading refused: the cache cannot be used as configured
            raise RemoteCacheError(f"remote cache {self.url}: cannot read: {e}") from None
        except Exception as e:
            mapped = _dropped(e)
            if mapped is e:
                raise
            raise mapped from None

    def has_record(self, stage: str, key: str) -> bool:
        return self._exists(record_path(stage, key)) is not None

    def fetch_blob(self, digest: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        try:
            obj = self._call(self.s3.get_object, Bucket=self.bucket, Key=self._key(blob_path(digest)))
            with open(dest, "wb") as f:
                shutil.copyfileobj(obj["Body"], f, 1 << 20)
            return True
        except ClientError as e:
            if self._code(e) in _MISSING:
                return False
            raise
        except RemoteRefused as e:
            raise RemoteCacheError(f"remote cache {self.url}: cannot read: {e}") from None
        except Exception as e:
            mapped = _dropped(e)
            if mapped is e or _local_write_error(e, dest):
                raise  # ours (our own disk refused the write): not the cache's fault
            raise mapped from None

    def _exists(self, path: str):
        """The object's size, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            return self._call(self.s3.head_object, Bucket=self.bucket, Key=self._key(path))["ContentLength"]
        except ClientError as e:
            if self._code(e) in _MISSING:
                return None
            raise

    def has_blob(self, digest: str, size: int) -> bool:
        return self._exists(blob_path(digest)) == size

    def put_blob(self, digest: str, src: Path):
        """Upload unless a blob of the right size is there. Blobs are named by content, so writers racing for
        one write the same bytes, and a damaged one (wrong size) is simply overwritten."""
        if self.has_blob(digest, src.stat().st_size):
            return
        with open(src, "rb") as f:  # one PUT (files up to 5 GB: stage outputs are models, not data sets)
            self._call(self.s3.put_object, Bucket=self.bucket, Key=self._key(blob_path(digest)), Body=f)

    def put_record_if_absent(self, stage: str, key: str, data: bytes) -> bool:
        """First writer wins: a conditional put (If-None-Match: *). False when a record was already there."""
        from botocore.exceptions import ClientError

        try:
            self._call(self.s3.put_object, Bucket=self.bucket, Key=self._key(record_path(stage, key)), Body=data,
                       ContentType="application/json", IfNoneMatch="*")
            return True
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise

    def _delete(self, path: str):
        from botocore.exceptions import ClientError

        try:
            self._call(self.s3.delete_object, Bucket=self.bucket, Key=self._key(path))
        except ClientError:
            pass

    def delete_record(self, stage: str, key: str):
        self._delete(record_path(stage, key))

    def delete_blob(self, digest: str):
        self._delete(blob_path(digest))
