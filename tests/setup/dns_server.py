"""A tiny authoritative DNS server for tests: UDP on 127.0.0.1, answers from a dict zone.

Unknown names get NXDOMAIN, known names without the asked type an empty NOERROR answer.
It runs in a thread, so code under test can use its own event loop.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

Zone = Mapping[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset]


def zone_from_text(
    text: str, origin: str
) -> dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset]:
    """A dict zone from zone-file text (no SOA/NS needed: the test server is not picky)."""
    zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
    records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
    for name, ttl, rdata in zone.iterate_rdatas():
        key = (name, rdata.rdtype)
        if key not in records:
            records[key] = dns.rrset.RRset(name, dns.rdataclass.IN, rdata.rdtype)
        records[key].add(rdata, ttl)
    return records


class DnsServer:
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port: int = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        rrset = self.zone.get((question.name, question.rdtype))
        if rrset is not None:
            response.answer.append(rrset)
        elif not any(name == question.name for name, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue
            self._socket.sendto(self.answer(query).to_wire(), peer)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@contextmanager
def serving(zone: Zone) -> Iterator[DnsServer]:
    server = DnsServer(zone)
    server.start()
    try:
        yield server
    finally:
        server.stop()
