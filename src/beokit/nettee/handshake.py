"""The handshake between a parent and a child (pure logic, no I/O).

The child speaks first, so a wrong peer learns nothing::

    child  -> parent   Hello   {nonce_c, auth, name}
    parent -> child    Join    {nonce_p, mac_p, name, session, path}
    child  -> parent   Welcome {mac_c, name}          (or Refuse {why})
    parent -> child    data connection: MAGIC token offset, then bytes

    mac_p = auth.mac(secret, "nettee-parent", nonce_c, nonce_p)
    mac_c = auth.mac(secret, "nettee-child",  nonce_p, nonce_c)
    token = auth.mac(secret or nonce_c, "nettee-data", nonce_c, nonce_p)[:16]

The proofs are :mod:`beokit.auth`'s (one label per direction, so a proof
cannot be reflected); the token binds the data connection to this control
handshake, with or without a secret.
"""

from __future__ import annotations

from beokit import auth
from beokit.nettee.messages import Hello, Join, Message, Refuse, Welcome
from beokit.nettee.protocol import AuthError, ProtocolError

PARENT = "nettee-parent"
CHILD = "nettee-child"
DATA = "nettee-data"


def data_token(secret: bytes | None, nonce_c: bytes, nonce_p: bytes) -> bytes:
    return auth.mac(secret or nonce_c, DATA, nonce_c, nonce_p)[:16]


def hello(nonce_c: bytes, secret: bytes | None, name: str) -> Hello:
    return Hello(nonce_c, secret is not None, name)


def _refused(msg: Message) -> None:
    if isinstance(msg, Refuse):
        raise AuthError(f"refused: {msg.why}")


def answer_hello(msg: Message, nonce_p: bytes, secret: bytes | None, name: str, session: str,
                 path: list[str], *, adopt: bool = False,
                 bound: bool = False) -> tuple[Join, bytes]:  # fmt: skip
    """Parent side: check the child's hello, build the join; returns (join, nonce_c)."""
    _refused(msg)
    if not isinstance(msg, Hello):
        raise ProtocolError(f"expected hello, got {msg.TYPE!r}")
    if msg.auth and secret is None:
        raise AuthError("it requires a shared secret and this node has none (set NETTEE_SECRET)",
                        "the parent has no shared secret and this node requires one")
    if not msg.auth and secret is not None:
        raise AuthError("it has no shared secret and this node requires one",
                        "this node has no shared secret and the parent requires one "
                        "(set NETTEE_SECRET)")
    mac = auth.mac(secret, PARENT, msg.nonce, nonce_p).hex() if secret else None
    return Join(nonce_p, mac, name, session, tuple(path), adopt=adopt, bound=bound), msg.nonce


def check_join(msg: Message, nonce_c: bytes, secret: bytes | None, node_id: str) -> bytes:
    """Child side: verify the parent's join; returns nonce_p or raises."""
    _refused(msg)
    if not isinstance(msg, Join):
        raise ProtocolError(f"expected join, got {msg.TYPE!r}")
    if secret is not None:
        if msg.mac is None:
            raise AuthError("parent sent no proof of the shared secret (is NETTEE_SECRET set there?)")
        try:
            bytes.fromhex(msg.mac)
        except ValueError:
            raise AuthError("parent sent a malformed proof") from None
        if not auth.verify(secret, PARENT, msg.mac, nonce_c, msg.nonce):
            raise AuthError("parent failed the shared-secret challenge (wrong secret)")
    if node_id in msg.path:
        raise ProtocolError("loop: this node is already upstream in the same chain")
    return msg.nonce


def welcome(nonce_c: bytes, nonce_p: bytes, secret: bytes | None, name: str,
            have: int = 0) -> Welcome:  # fmt: skip
    mac = auth.mac(secret, CHILD, nonce_p, nonce_c).hex() if secret else None
    return Welcome(mac, name, have)


def check_welcome(msg: Message, nonce_c: bytes, nonce_p: bytes, secret: bytes | None) -> str:
    """Parent side: verify the child's proof; returns the child's name."""
    _refused(msg)
    if not isinstance(msg, Welcome):
        raise ProtocolError(f"expected welcome, got {msg.TYPE!r}")
    if secret is not None and not auth.verify(secret, CHILD, msg.mac, nonce_p, nonce_c):
        raise AuthError("child failed the shared-secret challenge (wrong secret)")
    return msg.name or "?"
