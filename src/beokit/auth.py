"""One shared-secret challenge-response, for every port that accepts data or commands.

Both sides send a fresh random nonce; each proves it holds the secret with an
HMAC-SHA256 over a label naming the protocol and direction and both nonces, so
a proof is good for one connection, one direction and one protocol only (a
replayed or reflected proof fails).  The parts are length-prefixed before they
are hashed, so no two different part lists give the same input.

    nonce_c = auth.nonce()                    # client -> server
    nonce_s = auth.nonce()                    # server -> client, with:
    proof_s = auth.mac(secret, "nettee-parent", nonce_c, nonce_s)
    auth.verify(secret, "nettee-parent", proof_s, nonce_c, nonce_s)   # client checks

Pure: no I/O; the drivers carry the bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os

NONCE_BYTES = 16


def nonce() -> bytes:
    """A fresh 128-bit random nonce."""
    return os.urandom(NONCE_BYTES)


def _encode(part: bytes | str | int) -> bytes:
    if isinstance(part, int):
        part = str(part)
    if isinstance(part, str):
        part = part.encode()
    return len(part).to_bytes(4, "big") + part


def mac(secret: bytes, label: str, *parts: bytes | str | int) -> bytes:
    """HMAC-SHA256(secret, label | part | part ...), each part length-prefixed."""
    h = hmac.new(secret, _encode(label), hashlib.sha256)
    for p in parts:
        h.update(_encode(p))
    return h.digest()


def verify(secret: bytes, label: str, proof: bytes | str | None, *parts: bytes | str | int) -> bool:
    """True if ``proof`` (bytes, or its hex text) is :func:`mac` of the same
    label and parts; compared in constant time.  Anything malformed is False."""
    if isinstance(proof, str):
        try:
            proof = bytes.fromhex(proof)
        except ValueError:
            return False
    if not isinstance(proof, bytes):
        return False
    return hmac.compare_digest(proof, mac(secret, label, *parts))
