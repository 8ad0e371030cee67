#!/usr/bin/env python3
"""An independent implementation of the `dpi` NF's verdicts, for comparison.

Usage: dpi_oracle.py RULES.json CAPTURE.pcap > VERDICTS.json

RULES.json is the NF's `rules` list (the same fields as in a chain
descriptor). The capture is a classic pcap of Ethernet frames. The output is
{"packets": [...], "alerts": [...]}: per packet in capture order "drop" or
its mark (0 when unmarked), and every alert as [src, dst, sport, dport,
proto, sid, end] (addresses as integers, `end` the stream or datagram offset
just past the match).

It shares no code with the NF: Python's `re` does the matching, on TCP
streams reassembled whole from the capture and on UDP datagrams. The
semantics it implements (see docs/nfs.md, dpi):
  * a TCP stream is one direction of a 5-tuple; it starts after the SYN;
    bytes are delivered in order: a packet "delivers" the bytes that become
    contiguous from the stream start when it arrives;
  * a rule fires once per stream, at the packet that delivers the end of its
    earliest match; a drop rule blocks the stream from that packet on (later
    packets are dropped and deliver nothing); the first mark to fire sticks
    to the stream (lowest rule index within one packet);
  * a UDP datagram is its own stream;
  * content: literal with |hex| runs, nocase, offset (the match starts at or
    after it) and depth (the match ends within offset + depth); pcre: Python
    `re` on bytes, IGNORECASE for nocase;
  * proto (tcp/udp/any) and src_port/dst_port ("lo-hi" or a number) scope.
"""

import json
import re
import struct
import sys


def parse_content(text):
    out = bytearray()
    parts = text.split("|")
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out += part.encode()
        else:
            out += bytes.fromhex(part.replace(" ", ""))
    return bytes(out)


def port_range(value):
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    lo, hi = value.split("-")
    return (int(lo), int(hi))


class Rule:
    def __init__(self, index, cfg):
        self.index = index
        self.sid = cfg["sid"]
        self.action = cfg.get("action", "alert")
        self.mark = cfg.get("mark")
        self.proto = cfg.get("proto", "any")
        self.src_port = port_range(cfg.get("src_port"))
        self.dst_port = port_range(cfg.get("dst_port"))
        flags = re.IGNORECASE if cfg.get("nocase") else 0
        if "content" in cfg:
            literal = parse_content(cfg["content"])
            self.regex = re.compile(re.escape(literal), flags)
            self.literal_len = len(literal)
            self.offset = cfg.get("offset", 0)
            depth = cfg.get("depth")
            self.end_limit = None if depth is None else self.offset + depth
        else:
            self.regex = re.compile(cfg["pcre"].encode(), flags)
            self.literal_len = None

    def applies(self, tcp, sport, dport):
        if self.proto == "tcp" and not tcp or self.proto == "udp" and tcp:
            return False
        for rng, port in ((self.src_port, sport), (self.dst_port, dport)):
            if rng is not None and not rng[0] <= port <= rng[1]:
                return False
        return True

    def earliest_end(self, data):
        """The smallest end offset of a match in `data`, or None."""
        if self.literal_len is not None:
            # The leftmost occurrence starting at or after `offset` ends
            # first (all occurrences have the same length).
            m = self.regex.search(data, self.offset)
            if m is None or self.end_limit is not None and m.end() > self.end_limit:
                return None
            return m.end()
        if not self.regex.search(data):
            return None
        # "Some match ends at or before e" grows with e: bisect on prefixes.
        lo, hi = 1, len(data)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.regex.search(data[:mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo


def read_pcap(path):
    with open(path, "rb") as f:
        blob = f.read()
    magic = struct.unpack_from("<I", blob, 0)[0]
    endian = {0xA1B2C3D4: "<", 0xA1B23C4D: "<", 0xD4C3B2A1: ">", 0x4D3CB2A1: ">"}[magic]
    at = 24
    while at + 16 <= len(blob):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", blob, at)
        at += 16
        yield blob[at : at + incl]
        at += incl


def parse(frame):
    """(key, tcp (seq, flags) or None, payload) or None if not IPv4 TCP/UDP."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    while ethertype in (0x8100, 0x88A8):
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if ethertype != 0x0800:
        return None
    ihl = (frame[off] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, off + 2)[0]
    proto = frame[off + 9]
    src, dst = struct.unpack_from("!II", frame, off + 12)
    l4, end = off + ihl, off + total
    sport, dport = struct.unpack_from("!HH", frame, l4)
    if proto == 6:
        seq = struct.unpack_from("!I", frame, l4 + 4)[0]
        doff = (frame[l4 + 12] >> 4) * 4
        flags = frame[l4 + 13]
        return (src, dst, sport, dport, proto), (seq, flags), frame[l4 + doff : end]
    if proto == 17:
        return (src, dst, sport, dport, proto), None, frame[l4 + 8 : end]
    return None


def main():
    rules = [Rule(i, c) for i, c in enumerate(json.load(open(sys.argv[1])))]
    packets = [parse(f) for f in read_pcap(sys.argv[2])]

    # Pass 1: every TCP stream's bytes by offset, from any copy.
    streams = {}
    for p in packets:
        if p is None or p[1] is None:
            continue
        key, (seq, flags), payload = p
        s = streams.setdefault(key, {"isn": None, "bytes": {}})
        if flags & 0x02:
            s["isn"] = seq + 1
            continue
        for i, b in enumerate(payload):
            s["bytes"].setdefault((seq - s["isn"] + i) % 2**32, b)
    for s in streams.values():
        data = bytearray()
        while len(data) in s["bytes"]:
            data.append(s["bytes"][len(data)])
        s["data"] = bytes(data)
        s["ends"] = [r.earliest_end(s["data"]) for r in rules]
        s["have"] = set()
        s["delivered"] = 0
        s["blocked"] = False
        s["mark"] = None

    # Pass 2: in capture order, what each packet delivers and fires.
    verdicts, alerts = [], []
    for p in packets:
        if p is None:
            verdicts.append(0)
            continue
        key, tcp, payload = p
        if tcp is None:
            fired = [r for r in rules if r.applies(False, key[2], key[3])]
            fired = [(r.earliest_end(payload), r) for r in fired]
            fired = [(e, r) for e, r in fired if e is not None]
            for e, r in fired:
                alerts.append(list(key) + [r.sid, e])
            marks = [r for _, r in fired if r.action == "mark"]
            if any(r.action == "drop" for _, r in fired):
                verdicts.append("drop")
            else:
                verdicts.append(min(marks, key=lambda r: r.index).mark if marks else 0)
            continue
        s = streams[key]
        seq, flags = tcp
        if s["blocked"]:
            verdicts.append("drop")
            continue
        if not flags & 0x02:
            start = (seq - s["isn"]) % 2**32
            s["have"].update(range(start, start + len(payload)))
        before = s["delivered"]
        while s["delivered"] in s["have"]:
            s["delivered"] += 1
        after = s["delivered"]
        now = [
            r
            for r, e in zip(rules, s["ends"])
            if e is not None and before < e <= after and r.applies(True, key[2], key[3])
        ]
        now.sort(key=lambda r: (s["ends"][r.index], r.index))
        for r in now:
            alerts.append(list(key) + [r.sid, s["ends"][r.index]])
        if any(r.action == "drop" for r in now):
            s["blocked"] = True
        marks = [r for r in now if r.action == "mark"]
        if s["mark"] is None and marks:
            s["mark"] = min(marks, key=lambda r: r.index).mark
        verdicts.append("drop" if s["blocked"] else (s["mark"] or 0))
    json.dump({"packets": verdicts, "alerts": alerts}, sys.stdout)


if __name__ == "__main__":
    main()
