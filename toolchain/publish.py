"""Release bundles in an OCI registry, through the oras SDK: `publish` pushes a verified, releasable bundle as one
OCI artifact (each file a layer with its media type and relative path as title; the provenance and its signature
ride along as layers; annotations name the models, version and targets); `pull` fetches one into a clean
directory, checking every blob against its digest, for `verify oci://...` to check like any bundle.

Credentials come from the standard places, never from the command line, and are never printed: ORAS_USER and
ORAS_PASS in the environment, else the docker config (DOCKER_CONFIG/config.json or ~/.docker/config.json,
credential helpers included). Loopback registries speak plain HTTP, others HTTPS unless --plain-http.
Each way of failing is one line with its own exit code (errors.py)."""

import functools
import hashlib
import ipaddress
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import (EXIT_NOT_RELEASABLE, EXIT_REGISTRY_AUTH, EXIT_REGISTRY_REFUSED, EXIT_REGISTRY_UNREACHABLE,
                     EXIT_TAG_EXISTS, ToolchainError)
from .bundle import MANIFEST, SUMS, VerifyError, safe_extract
from .provenance import ENVELOPE, PAYLOAD_TYPE, STATEMENT, verify_root

SCHEME = "oci://"
ARTIFACT_TYPE = "application/vnd.toolchain.bundle.v1+json"  # the config's media type: what this artifact is
MEDIA_TYPES = {"onnx": "application/vnd.toolchain.model.onnx", "tflite": "application/vnd.toolchain.model.tflite"}
META_TYPES = {MANIFEST: "application/vnd.toolchain.manifest.v1+json", SUMS: "text/plain",
              STATEMENT: PAYLOAD_TYPE, ENVELOPE: "application/vnd.dsse.envelope.v1+json"}
TITLE = "org.opencontainers.image.title"
TIMEOUT_S = (10, 300)  # connect, read: a registry that hangs is as good as down
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MANIFEST_TYPES = ["application/vnd.oci.image.manifest.v1+json"]


class RegistryUnreachable(ToolchainError):
    exit_code = EXIT_REGISTRY_UNREACHABLE


class AuthRefused(ToolchainError):
    exit_code = EXIT_REGISTRY_AUTH


class TagExists(ToolchainError):
    exit_code = EXIT_TAG_EXISTS


class NotReleasable(ToolchainError):
    exit_code = EXIT_NOT_RELEASABLE


class RegistryRefused(ToolchainError):
    exit_code = EXIT_REGISTRY_REFUSED


@dataclass(frozen=True)
class Ref:
    host: str
    repository: str
    tag: str = None
    digest: str = None

    @property
    def target(self) -> str:  # what oras calls a container reference
        return f"{self.host}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")

    def __str__(self):
        return SCHEME + self.target


def is_oci(text) -> bool:
    return str(text).startswith(SCHEME)


def parse_ref(text: str, need_tag=False) -> Ref:
    """oci://HOST[:PORT]/REPOSITORY:TAG (or @sha256:DIGEST to pull)."""
    bad = f"{text}: not an OCI reference (oci://HOST[:PORT]/REPOSITORY:TAG)"
    if not is_oci(text):
        raise ToolchainError(bad)
    host, _, path = text[len(SCHEME):].partition("/")
    if not host or not path:
        raise ToolchainError(bad)
    digest = tag = None
    if "@" in path:
        path, digest = path.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ToolchainError(f"{text}: digest must be sha256: and 64 hex digits")
        if need_tag:
            raise ToolchainError(f"{text}: publish needs a tag, not a digest")
    else:
        head, sep, last = path.rpartition("/")
        if ":" in last:
            last, tag = last.rsplit(":", 1)
            path = f"{head}{sep}{last}"
        if not tag or not _TAG.fullmatch(tag):
            raise ToolchainError(f"{text}: needs a tag (oci://HOST/REPOSITORY:TAG; letters, digits, '_', '.', '-')")
    if not _REPO.fullmatch(path):
        raise ToolchainError(f"{text}: repository {path!r} must be lowercase letters, digits and separators")
    return Ref(host, path, tag, digest)


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or [::1], with or without a port: registries that speak plain HTTP by default."""
    name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _reason(e: BaseException) -> str:
    """'connection refused' rather than a page of urllib3 internals (which could carry a URL, never a secret)."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "timed out"
    return type(e).__name__


# ---- one registry session ---------------------------------------------------------------------------------------
class Registry:
    def __init__(self, ref: Ref, plain_http=None):
        self.ref = ref
        self.insecure = _is_loopback(ref.host) if plain_http is None else plain_http
        self.scheme = "http" if self.insecure else "https"
        challenge = self._ping()
        self.client = self._client("basic" if challenge and challenge.lower().startswith("basic") else "token")
        self.credentials = self._load_credentials()
        if challenge and challenge.lower().startswith("basic"):
            self._check_basic()
        # A bearer challenge is answered by oras's token flow on the first real request (anonymous pulls included);
        # a refusal there comes back through errors() or manifest().

    def _ping(self):
        """GET /v2/: fail fast and clearly when the registry is down. Returns the auth challenge, if any."""
        import requests

        url = f"{self.scheme}://{self.ref.host}/v2/"
        try:
            r = requests.get(url, timeout=TIMEOUT_S[0])
        except requests.exceptions.SSLError:
            raise RegistryUnreachable(f"{self.ref}: TLS handshake with {self.ref.host} failed "
                                      f"(a plain-HTTP registry? pass --plain-http)") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise RegistryUnreachable(f"{self.ref}: registry {self.ref.host} unreachable ({_reason(e)})") from None
        if r.status_code == 401:
            return r.headers.get("WWW-Authenticate", "")
        if r.status_code != 200:
            raise RegistryUnreachable(f"{self.ref}: {self.ref.host} does not serve the OCI distribution API "
                                      f"(GET /v2/ answered {r.status_code})")
        return None

    def _client(self, backend):
        import logging

        import oras.client
        import oras.provider

        # oras logs registry error bodies through Python's last-resort handler (stderr); the user gets one line
        # from errors() instead.
        logging.getLogger("oras.logger").addHandler(logging.NullHandler())

        once = oras.provider.Registry.do_request.__wrapped__

        class Client(oras.client.OrasClient):
            last_response = None

            # oras retries any failed request 5 times with sleeps of 3 s to 83 s; a pipeline wants the error now.
            # The last answer is kept so an error can say what the registry said.
            def do_request(self, *args, **kwargs):
                self.last_response = once(self, *args, **kwargs)
                return self.last_response

        client = Client(hostname=self.ref.host, insecure=self.insecure, auth_backend=backend)
        client.session.request = functools.partial(client.session.request, timeout=TIMEOUT_S)
        return client

    def _load_credentials(self) -> str:
        """Where the credentials came from (for messages), or '' when there are none. Never the secret."""
        user, password = os.environ.get("ORAS_USER"), os.environ.get("ORAS_PASS")
        if user and password:
            self.client.auth.set_basic_auth(user, password)
            return "ORAS_USER/ORAS_PASS"
        config = Path(os.environ["DOCKER_CONFIG"]) / "config.json" if os.environ.get("DOCKER_CONFIG") else None
        configs = [str(config)] if config and config.is_file() else None  # oras adds ~/.docker/config.json itself
        self.client.auth.load_configs(self.client.get_container(self.ref.target), configs=configs)
        if getattr(self.client.auth, "_basic_auth", None):
            return f"docker config {config}" if config and config.is_file() else "docker config"
        return ""

    def _check_basic(self):
        """Basic auth (htpasswd registries): try the credentials once on /v2/, so a refusal is one clear line."""
        import requests

        if not self.credentials:
            self._auth_failed()
        r = requests.get(f"{self.scheme}://{self.ref.host}/v2/", timeout=TIMEOUT_S[0],
                         headers={"Authorization": f"Basic {self.client.auth._basic_auth}"})
        if r.status_code in (401, 403):
            self._auth_failed()

    def _auth_failed(self):
        if not self.credentials:
            raise AuthRefused(f"{self.ref}: registry {self.ref.host} requires credentials and none were found "
                              f"(docker login, DOCKER_CONFIG, or ORAS_USER and ORAS_PASS)")
        raise AuthRefused(f"{self.ref}: registry {self.ref.host} refused the credentials from {self.credentials}")

    @contextmanager
    def errors(self):
        """Map what oras and requests raise to one-line errors; anything else is a bug and keeps its traceback."""
        import oras.auth
        import requests

        try:
            yield
        except requests.exceptions.SSLError:
            raise RegistryUnreachable(f"{self.ref}: TLS error talking to {self.ref.host}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise RegistryUnreachable(f"{self.ref}: registry {self.ref.host} unreachable ({_reason(e)})") from None
        except oras.auth.AuthenticationException:
            self._auth_failed()
        except (requests.exceptions.JSONDecodeError, ValueError) as e:  # oras raises ValueError on error answers
            if re.search(r"UNAUTHORIZED|DENIED|Unauthorized|Forbidden|authentication", str(e)):
                self._auth_failed()
            r = self.client.last_response
            if r is not None and r.status_code >= 400:
                detail = f"{r.request.method} {r.status_code} {r.reason}"
            elif str(e).startswith("Issue "):
                detail = re.sub(r"^Issue with \S+: ", "", str(e))[:300]
            else:
                raise
            raise RegistryRefused(f"{self.ref}: registry {self.ref.host} refused the request ({detail})") from None

    def manifest(self, ref: Ref = None):
        """The OCI manifest at ref (default: this session's), or None when the tag does not exist."""
        ref = ref or self.ref
        container = self.client.get_container(ref.target)
        with self.errors():
            r = self.client.do_request(f"{self.client.prefix}://{container.manifest_url()}", "GET",
                                       headers={"Accept": ", ".join(_MANIFEST_TYPES)})
        if r.status_code == 404:
            return None
        if r.status_code in (401, 403):
            self._auth_failed()
        if r.status_code != 200:
            raise RegistryRefused(f"{ref}: registry {ref.host} answered {r.status_code} {r.reason} for the manifest")
        return r.json()


# ---- publish ----------------------------------------------------------------------------------------------------
def releasable(manifest: dict, label):
    """Only what passed its gates goes out: no failed or stale report, nothing packaged with --allow-failed."""
    try:
        bad = [f"{a.get('model')} {a.get('target')} is {a.get('status')}" for a in manifest["artifacts"]
               if a.get("status") != "passed"]
        bad += [f"{x.get('model')} {x.get('target')} was left out as {x.get('status')}"
                for x in manifest.get("excluded", []) if x.get("status") != "skipped"]
        bad += [f"the {n} report is {m.get('status')}" for n, m in manifest.get("models", {}).items()
                if m.get("status") not in (None, "passed")]
    except (AttributeError, TypeError):
        raise VerifyError(f"{label}: manifest.json: malformed artifacts, excluded or models") from None
    if not manifest["artifacts"]:
        bad.append("it holds no artifact")
    if bad:
        raise NotReleasable(f"{label}: not releasable: {'; '.join(bad)}")


def _layers(root: Path, manifest: dict) -> list:
    """[(path, title, media type, annotations)] for every file of the bundle, artifacts first."""
    out = []
    for a in manifest["artifacts"]:
        out.append((root / a["path"], a["path"], MEDIA_TYPES.get(a.get("format"), "application/octet-stream"),
                    {f"toolchain.{k}": str(a.get(k)) for k in ("model", "target", "precision", "runtime")}))
        for c in a.get("companions") or []:  # the other files of a several-file format (OpenVINO's .bin)
            out.append((root / c["path"], c["path"], "application/octet-stream",
                        {f"toolchain.{k}": str(a.get(k)) for k in ("model", "target", "precision", "runtime")}))
    for name, media_type in META_TYPES.items():
        if (root / name).is_file():
            out.append((root / name, name, media_type, {}))
    return out


def _annotations(name: str, manifest: dict, summary: dict) -> dict:
    commits = {(m.get("provenance") or {}).get("source", {}).get("commit") for m in manifest["models"].values()}
    commits.discard(None)
    out = {TITLE: name, "org.opencontainers.image.version": str(manifest.get("release_version")),
           "toolchain.models": ",".join(f"{n}@{m.get('version')}" for n, m in sorted(manifest["models"].items())),
           "toolchain.targets": ",".join(sorted({str(a.get("target")) for a in manifest["artifacts"]})),
           "toolchain.signed": "true" if summary["signed"] else "false"}
    if len(commits) == 1:
        out["org.opencontainers.image.revision"] = commits.pop()
    if summary["keyids"]:
        out["toolchain.signing_keyids"] = ",".join(summary["keyids"])
    return out


def _digest(path: Path) -> str:
    from .digest import sha256_file

    return "sha256:" + sha256_file(path)


def _same_content(existing: dict, layers) -> bool:
    have = {((x.get("annotations") or {}).get(TITLE), x.get("digest"), x.get("mediaType"))
            for x in existing.get("layers", [])}
    return (existing.get("config", {}).get("mediaType") == ARTIFACT_TYPE
            and have == {(title, _digest(p), mt) for p, title, mt, _ in layers})


def publish(bundle, ref_text, force=False, key=None, plain_http=None) -> dict:
    """Verify BUNDLE (a directory or .tar.gz), refuse it unless releasable, and push it to ref."""
    ref = parse_ref(ref_text, need_tag=True)
    bundle = Path(bundle)
    with tempfile.TemporaryDirectory(prefix="toolchain-publish-") as tmp:
        if bundle.is_file():
            root = safe_extract(bundle, Path(tmp) / "bundle")
        elif bundle.is_dir():
            root = bundle
        else:
            raise ToolchainError(f"{bundle}: no such bundle (a directory or .tar.gz)")
        manifest, summary = verify_root(root, bundle, key)
        releasable(manifest, bundle)
        layers = _layers(root, manifest)
        registry = Registry(ref, plain_http)
        existing = registry.manifest()
        if existing is not None:
            if _same_content(existing, layers):
                return {"ref": str(ref), "pushed": False, "layers": len(layers), "summary": summary}
            if not force:
                raise TagExists(f"{ref}: tag already holds other content; refusing to replace it (--force replaces)")
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"bundle": root.name, "release_version": manifest.get("release_version"),
                                      "models": {n: m.get("version") for n, m in sorted(manifest["models"].items())},
                                      "targets": sorted({str(a.get("target")) for a in manifest["artifacts"]})},
                                     sort_keys=True))
        annotation_file = Path(tmp) / "annotations.json"
        annotation_file.write_text(json.dumps({str(p): {TITLE: title, **extra} for p, title, _, extra in layers}))
        with registry.errors():
            r = registry.client.push(target=ref.target, files=[f"{p}:{mt}" for p, _, mt, _ in layers],
                                     manifest_config=f"{config}:{ARTIFACT_TYPE}",
                                     annotation_file=str(annotation_file),
                                     manifest_annotations=_annotations(root.name, manifest, summary),
                                     disable_path_validation=True, quiet=True)
    return {"ref": str(ref), "pushed": True, "digest": r.headers.get("Docker-Content-Digest"),
            "layers": len(layers), "summary": summary}


# ---- pull and verify ---------------------------------------------------------------------------------------------
def _safe_title(title, ref) -> str:
    if (not isinstance(title, str) or not title or title.startswith("/") or "\\" in title
            or any(part in ("", ".", "..") for part in title.split("/"))):
        raise VerifyError(f"{ref}: layer title {title!r} escapes the bundle directory; refused")
    return title


def pull(ref_text, dest: Path, plain_http=None) -> Path:
    """Fetch the bundle at ref into dest (absent or empty), each blob checked against its digest and size."""
    ref = parse_ref(ref_text)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ToolchainError(f"{dest}: exists and is not an empty directory")
    registry = Registry(ref, plain_http)
    manifest = registry.manifest()
    if manifest is None:
        raise VerifyError(f"{ref}: no such tag in the registry")
    if manifest.get("config", {}).get("mediaType") != ARTIFACT_TYPE:
        raise VerifyError(f"{ref}: not a toolchain release bundle (config media type "
                          f"{manifest.get('config', {}).get('mediaType')!r})")
    dest.mkdir(parents=True, exist_ok=True)
    seen = set()
    for layer in manifest.get("layers", []):
        title = _safe_title((layer.get("annotations") or {}).get(TITLE), ref)
        if title in seen:
            raise VerifyError(f"{ref}: two layers named {title!r}; refused")
        seen.add(title)
        out = dest / title
        out.parent.mkdir(parents=True, exist_ok=True)
        with registry.errors():
            registry.client.download_blob(registry.client.get_container(ref.target), layer["digest"], str(out))
        h = hashlib.sha256(out.read_bytes()).hexdigest()
        if f"sha256:{h}" != layer["digest"] or out.stat().st_size != layer.get("size"):
            raise VerifyError(f"{ref}: {title}: the registry served bytes that differ from the layer digest")
    return dest


def verify_oci(ref_text, key=None, out=None, plain_http=None):
    """Pull into out (or a temporary directory) and verify: signature, subject digests, manifest."""
    label = str(parse_ref(ref_text))
    if out is not None:
        root = pull(ref_text, Path(out), plain_http)
        return verify_root(root, label, key)
    with tempfile.TemporaryDirectory(prefix="toolchain-pull-") as tmp:
        return verify_root(pull(ref_text, Path(tmp) / "bundle", plain_http), label, key)
