"""The litert-torch side venv (`make venv-litert`): where it is, its python, and the converter versions installed
in it, hashed with its lock file for the litert_torch stage's cache key. No process is started here."""

import os
from pathlib import Path

from ..errors import StageError
from ..options import defaults

NAME = "litert_torch"  # the stage this venv serves (stages/litert_torch.py)
SIDE_DISTRIBUTIONS = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "litert-converter", "torch", "numpy")
CHECKOUT = Path(__file__).resolve().parents[2]  # the project checkout, when running from one


def venv_dir(params) -> Path:
    """The side venv: convert.venv if absolute; else TOOLCHAIN_LITERT_VENV; else relative to the project checkout
    when running from one (`make venv-litert` puts it there), else relative to the working directory (an
    installed wheel has no checkout)."""
    p = Path(params["venv"]).expanduser()
    if p.is_absolute():
        return p
    if os.environ.get("TOOLCHAIN_LITERT_VENV"):
        return Path(os.environ["TOOLCHAIN_LITERT_VENV"]).expanduser()
    in_checkout = CHECKOUT / p
    return in_checkout if (CHECKOUT / "pyproject.toml").is_file() else Path.cwd() / p


def side_python(params, target_name=None) -> Path:
    """The side venv's python, or a StageError saying how to create the venv."""
    venv = venv_dir(params)
    python = venv / "bin" / "python"
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise StageError(NAME, f"the litert-torch side venv {venv} does not exist (no {python}); `make venv-litert` "
                               "creates it (convert.venv names another)", target_name)
    if not (venv / ".installed").is_file():
        raise StageError(NAME, f"the litert-torch side venv {venv} is incomplete (no .installed stamp: its install "
                               "did not finish); `make venv-litert` completes it", target_name)
    return python


def side_versions(params) -> dict:
    """Versions of the side venv's converter libraries, read from its package metadata (no process started).
    For the cache key: a new litert-torch or quantizer there must rebuild the artifact. {} when there is no venv."""
    from importlib import metadata

    site = sorted(venv_dir(params).glob("lib/python3*/site-packages"))
    found = {d: None for d in SIDE_DISTRIBUTIONS}
    if not site:
        return {}
    norm = {d.replace("-", "_").lower(): d for d in SIDE_DISTRIBUTIONS}
    for dist in metadata.distributions(path=[str(s) for s in site]):
        key = (dist.metadata["Name"] or "").replace("-", "_").replace(".", "_").lower()
        if key in norm:
            found[norm[key]] = dist.version
    return found


LOCK = CHECKOUT / "requirements-litert.lock"  # absent in an installed wheel: the venv versions still key


def lock_digest(params=None) -> str:
    """The cache key's word on the converter: the side venv's lock file and the converter versions installed in
    the venv (side_versions), hashed. Cheap (no process started); a venv not yet made hashes as such, so making it
    rebuilds. The worker and the check are part of the stage (VERSION), the model of deps["model"]."""
    from ..digest import sha256_file, sha256_json

    return sha256_json({"lock": sha256_file(LOCK) if LOCK.is_file() else None,
                        "side": side_versions(params or defaults("convert:litert-torch"))})


def _public(v):
    return (v or "").split("+")[0]

