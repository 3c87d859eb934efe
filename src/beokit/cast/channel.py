"""beo cast's callback channel: what the cast root and its receivers say.  Pure.

Receivers are started through the tree launcher (``beo run``), which hands
each the run's spec (:func:`receiver_spec`, with a fresh secret) on its
stdin inside the launch channel (``--input``), never on a command line.
Each receiver then calls the cast root back over TCP (the root's
:class:`~beokit.cast.hub.Hub`); both sides prove they hold the secret with
:mod:`beokit.auth`, over both nonces and the host name, one label per
direction::

    root -> node:  {"t": "challenge", "nonce": NR}
    node -> root:  {"t": "hi", "host": H, "nonce": NN, "mac": channel_mac(S, "node", NR, NN, H)}
    root -> node:  {"t": "ok", "mac": channel_mac(S, "root", NN, NR, H)}

A replayed ``hi`` fails (fresh NR); a fake root cannot answer ``ok`` (fresh
NN).  Then JSON lines both ways (:mod:`beokit.framing`): ``up``/``fail``,
``go``/``cancel``, ``progress``, ``result``, and the root's last word
(``commit``, ``discard``, ``abort``) with its answer (``committed``,
``discarded``, ``aborted``); :mod:`beokit.cast.receiver` says what each holds.

The receiver imports this module on the nodes: standard library and
:mod:`beokit.auth` only.
"""

from __future__ import annotations

from typing import Any

from beokit import auth

CHANNEL_VERSION = 2  # 2: MACs through beokit.auth (length-prefixed parts)
MAX_SPEC = 256 << 10  # the spec a receiver reads on stdin (beo run --input's limit)
HELLO_MAX = 4096  # the hi line of a connection that has not proved the secret yet
MSG_MAX = 1 << 20  # one message of an authenticated receiver


def _label(role: str) -> str:
    return f"beo-cast/{CHANNEL_VERSION} {role}"


def channel_mac(secret: str, role: str, nonce_a: str, nonce_b: str, host: str) -> str:
    """HMAC-SHA256 (hex) binding ``role`` ("node"/"root"), both nonces and the host."""
    return auth.mac(secret.encode(), _label(role), nonce_a, nonce_b, host).hex()


def mac_ok(secret: str, mac: Any, role: str, nonce_a: str, nonce_b: str, host: str) -> bool:
    """Is ``mac`` :func:`channel_mac` of the same values?  (Constant time; junk is False.)"""
    return isinstance(mac, str) and auth.verify(secret.encode(), _label(role), mac, nonce_a,
                                                nonce_b, host)  # fmt: skip


def nonce() -> str:
    return auth.nonce().hex()


def challenge(root_nonce: str) -> dict[str, Any]:
    return {"t": "challenge", "nonce": root_nonce}


def hi(secret: str, host: str, root_nonce: str, node_nonce: str) -> dict[str, Any]:
    """The receiver's answer to a challenge."""
    return {"t": "hi", "host": host, "nonce": node_nonce,
            "mac": channel_mac(secret, "node", root_nonce, node_nonce, host)}  # fmt: skip


def ok(secret: str, host: str, root_nonce: str, node_nonce: str,
       node: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The root's proof, once the receiver's ``hi`` checked out, with what is this
    node's own (``node``: its bind address), which the spec, the same for every node,
    does not carry: that spec stays the same size at 10,000 nodes."""
    msg = {"t": "ok", "mac": channel_mac(secret, "root", node_nonce, root_nonce, host)}
    if node:
        msg["node"] = node
    return msg


def expand_dest(dest: str, host: str) -> str:
    """``{host}`` in DEST becomes the node's name."""
    return dest.replace("{host}", host)


def receiver_spec(*, secret: str, callback: str, dest: str, kind: str, digest: str | None,
                  fsync: bool, progress: bool, bind_local: bool,
                  in_place: bool = False, verdict_wait: float = 600.0) -> dict[str, Any]:  # fmt: skip
    """What every receiver reads on stdin: the same for all, and of a size that does
    not grow with the cluster (a node's own part, its ``--resolve`` address, comes
    in the root's ``ok``: :func:`ok`; before, the whole map rode here and ~7,000
    entries filled :data:`MAX_SPEC`).

    ``in_place``: a file DEST is written where it is instead of under a
    temporary name renamed into place; ``verdict_wait``: how long a receiver
    waits, after its result, for the root's commit or discard.
    """
    return {"v": CHANNEL_VERSION, "secret": secret, "callback": callback, "dest": dest,
            "kind": kind, "digest": digest, "fsync": fsync, "progress": progress,
            "bind_local": bind_local, "in_place": in_place,
            "verdict_wait": verdict_wait}  # fmt: skip


def host_spec(spec: dict[str, Any], host: str, node: dict[str, Any] | None = None) -> dict[str, Any]:
    """A receiver's own view of the spec: DEST with {host}, its bind address (its own
    part from the root's ``ok``, else its name)."""
    out = dict(spec, host=host, dest=expand_dest(str(spec["dest"]), host))
    bind = (node or {}).get("bind")
    out["bind"] = (str(bind) if bind else host) if spec.get("bind_local") else None
    return out


def hasher(name: str) -> Any:
    """A hash object by name, the same at the root and on the nodes: ``xxh3_128``
    (xxhash) or a hashlib name."""
    if name == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    import hashlib

    return hashlib.new(name)
