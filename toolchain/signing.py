"""Offline signing with local ed25519 keys: DSSE envelopes through securesystemslib (no network, no keyless
service). Keys are plain PEM files, so openssl and other DSSE tools read them too:
the private key PKCS#8 (written mode 0600), the public key SubjectPublicKeyInfo."""

import os
from pathlib import Path

from .errors import EXIT_VERIFY_FAILED, ToolchainError


class SignatureError(ToolchainError):
    """A signature that does not verify with the trusted key, or a bundle without one when one is required."""

    exit_code = EXIT_VERIFY_FAILED


def keygen(prefix) -> tuple:
    """Write PREFIX.key (private, 0600) and PREFIX.pub; refuse to overwrite either. Returns (key, pub, keyid)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.signer import SSlibKey

    prefix = Path(prefix)
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise ToolchainError(f"{p}: already exists; refusing to overwrite a key")
    if not prefix.parent.is_dir():
        raise ToolchainError(f"{prefix.parent}: no such directory for the key pair")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public.write_bytes(public_pem)
    return private, public, SSlibKey.from_crypto(key.public_key()).keyid


def _read(path, what) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ToolchainError(f"{path}: cannot read the {what} ({e.strerror})") from None


def load_signer(path):
    """A CryptoSigner for an unencrypted PEM ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    try:
        key = load_pem_private_key(_read(path, "signing key"), password=None)
    except (ValueError, TypeError) as e:
        raise ToolchainError(f"{path}: not an unencrypted PEM private key ({str(e).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolchainError(f"{path}: not an ed25519 key (make one with `toolchain keygen`)")
    return CryptoSigner(key)


def load_public_key(path):
    """The SSlibKey of a PEM ed25519 public key (its keyid is securesystemslib's default)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    try:
        key = load_pem_public_key(_read(path, "public key"))
    except (ValueError, TypeError) as e:
        raise ToolchainError(f"{path}: not a PEM public key ({str(e).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ToolchainError(f"{path}: not an ed25519 public key")
    return SSlibKey.from_crypto(key)


def sign(payload: bytes, payload_type: str, signer) -> dict:
    """A DSSE envelope (JSON form) over payload. ed25519 is deterministic: same payload and key, same bytes."""
    from securesystemslib.dsse import Envelope

    envelope = Envelope(payload, payload_type, {})
    envelope.sign(signer)
    return envelope.to_dict()


def open_envelope(data: dict, key, payload_type: str, label) -> bytes:
    """The payload of a DSSE envelope after checking its type and a signature by key; else SignatureError."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import Error as SslibError
    from securesystemslib.exceptions import VerificationError

    try:
        envelope = Envelope.from_dict(dict(data, signatures=[dict(s) for s in data["signatures"]]))
    except (KeyError, TypeError, ValueError, AttributeError, SslibError) as e:
        raise SignatureError(f"{label}: malformed DSSE envelope ({type(e).__name__}: {e})") from None
    if envelope.payload_type != payload_type:
        raise SignatureError(f"{label}: payload type {envelope.payload_type!r}, expected {payload_type!r}")
    try:
        envelope.verify([key], 1)
    except VerificationError:
        signers = ", ".join(str(k)[:16] for k in envelope.signatures) or "nobody"
        raise SignatureError(f"{label}: signature does not verify with the trusted key {key.keyid[:16]} "
                             f"(signed by {signers}); not trusted") from None
    return envelope.payload
