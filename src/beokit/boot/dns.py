"""A small authoritative DNS responder for the cluster's names (A and PTR).

Wire format by :mod:`dnslib`. Names come from the lease database (fixed
hosts and the linear ``nodeN`` numbering, BeoNSS-style), so file and licence
servers that are not Linux can resolve ``node23`` and ``node23.cluster``.
Anything else gets NXDOMAIN (names in the cluster domain) or REFUSED (it is
not a recursive resolver). Malformed queries are dropped.
"""

from __future__ import annotations

import ipaddress

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSRecord

from beokit.boot.leases import LeaseDB
from beokit.errors import WireError

TTL = 60


class DnsError(WireError):
    """A datagram that is not a DNS query."""


def parse(query: bytes) -> DNSRecord:
    """Decode one DNS query datagram; :class:`DnsError` if it is not one."""
    try:
        req = DNSRecord.parse(query)
    except Exception as e:  # dnslib raises assorted errors on garbage (DNSError and others)
        raise DnsError(f"not a DNS message: {e}") from None
    if req.header.qr or not req.questions:
        raise DnsError("not a query" if req.header.qr else "a query without a question")
    return req


def _ptr_ip(qname: str) -> ipaddress.IPv4Address | None:
    labels = qname.lower().rstrip(".").split(".")
    if len(labels) != 6 or labels[-2:] != ["in-addr", "arpa"]:
        return None
    try:
        return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
    except ValueError:
        return None


def answer(query: bytes, db: LeaseDB) -> bytes | None:
    """The reply to one DNS query datagram, or ``None`` to drop it."""
    try:
        req = parse(query)
    except DnsError:
        return None
    reply = req.reply()
    reply.header.ra = 0
    q = req.questions[0]
    qname = str(q.qname)
    ip = _ptr_ip(qname)
    if ip is not None:
        name = db.ip_to_name(ip)
        if name is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif q.qtype in (QTYPE.PTR, QTYPE.ANY):
            fqdn = f"{name}.{db.cfg.domain}." if db.cfg.domain else f"{name}."
            reply.add_answer(RR(qname, QTYPE.PTR, rdata=PTR(fqdn), ttl=TTL))
    else:
        addr = db.name_to_ip(qname)
        dom = db.cfg.domain.lower()
        short = "." not in qname.rstrip(".")
        if addr is None:
            ours = short or (dom and qname.lower().rstrip(".").endswith("." + dom))
            reply.header.rcode = RCODE.NXDOMAIN if ours else RCODE.REFUSED
            reply.header.aa = 1 if ours else 0
            return reply.pack()
        if q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(str(addr)), ttl=TTL))
    reply.header.aa = 1
    return reply.pack()
