//! Capture filters: a useful subset of tcpdump's (pcap-filter) language,
//! parsed into a small tree and matched against Ethernet frames without
//! allocating.
//!
//! ```text
//! expr    := and ( ("or" | "||") and )*
//! and     := not ( ("and" | "&&") not )*
//! not     := ("not" | "!") not | "(" expr ")" | primitive
//! primitive :=
//!     [src|dst] host ADDR          IPv4 or IPv6 address
//!     [src|dst] net ADDR/LEN       IPv4 or IPv6 prefix
//!     [tcp|udp] [src|dst] port N   TCP or UDP port (either if not said)
//!     [tcp|udp] [src|dst] portrange N-M
//!     ether [src|dst] host MAC     aa:bb:cc:dd:ee:ff
//!     ip | ip6 | arp | tcp | udp | icmp | icmp6 | vlan
//!     proto N                      IPv4 protocol / IPv6 next header
//!     vlan N                       802.1Q/802.1ad VLAN id (outer or inner)
//!     less N | greater N           frame length <= N, >= N
//! ```
//!
//! Up to two VLAN tags are skipped; IPv6 extension headers (hop-by-hop,
//! routing, fragment, destination options) are walked to the transport
//! header. Ports match only in the first fragment (like tcpdump). Every
//! parse error names the word and its position (1-based) in the
//! expression.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A filter expression that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {expr:?}: word {pos} ({word:?}): {why}")]
pub struct FilterError {
    pub expr: String,
    /// 1-based index of the word where the error is; one past the last
    /// word when the expression ended too early.
    pub pos: usize,
    pub word: String,
    pub why: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4Proto {
    Tcp,
    Udp,
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    True,
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Net { dir: Dir, addr: IpAddr, len: u8 },
    Port { proto: L4Proto, dir: Dir, lo: u16, hi: u16 },
    Ether { dir: Dir, mac: [u8; 6] },
    EtherType(u16),
    Proto(u8),
    Vlan(Option<u16>),
    Less(usize),
    Greater(usize),
}

/// A compiled capture filter. The empty expression matches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    text: String,
    root: Node,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_ARP: u16 = 0x0806;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const IP_ICMP: u8 = 1;
const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;
const IP_ICMP6: u8 = 58;

impl Filter {
    /// Parse `expr` (see the module documentation).
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let words = tokenize(expr);
        let mut p = Parser { expr, words: &words, at: 0 };
        let root = if words.is_empty() { Node::True } else { p.or()? };
        if p.at < words.len() {
            return Err(p.err("expected `and`, `or` or the end of the expression"));
        }
        Ok(Filter { text: expr.trim().to_string(), root })
    }

    /// The filter that matches every frame.
    pub fn all() -> Filter {
        Filter { text: String::new(), root: Node::True }
    }

    /// The expression as given (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True if this filter matches every frame.
    pub fn is_all(&self) -> bool {
        self.root == Node::True
    }

    /// Whether Ethernet frame `frame` matches. Never panics, whatever the
    /// bytes; a frame too short for what a primitive looks at does not
    /// match that primitive.
    pub fn matches(&self, frame: &[u8]) -> bool {
        let h = Headers::parse(frame);
        eval(&self.root, frame, &h)
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.text.is_empty() { "(all)" } else { &self.text })
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Filter, FilterError> {
        Filter::parse(s)
    }
}

fn tokenize(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' | ')' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            '!' if cur.is_empty() => out.push("!".into()),
            '&' | '|' if chars.peek() == Some(&c) => {
                chars.next();
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(format!("{c}{c}"));
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Parser<'a> {
    expr: &'a str,
    words: &'a [String],
    at: usize,
}

impl Parser<'_> {
    fn err(&self, why: impl Into<String>) -> FilterError {
        FilterError {
            expr: self.expr.to_string(),
            pos: self.at + 1,
            word: self.words.get(self.at).cloned().unwrap_or_else(|| "(end)".into()),
            why: why.into(),
        }
    }

    fn peek(&self) -> Option<&str> {
        self.words.get(self.at).map(String::as_str)
    }

    fn next_word(&mut self, what: &str) -> Result<&str, FilterError> {
        match self.words.get(self.at) {
            Some(w) => {
                self.at += 1;
                Ok(w)
            }
            None => Err(self.err(format!("expected {what}"))),
        }
    }

    fn or(&mut self) -> Result<Node, FilterError> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some("or" | "||")) {
            self.at += 1;
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, FilterError> {
        let mut left = self.not()?;
        while matches!(self.peek(), Some("and" | "&&")) {
            self.at += 1;
            let right = self.not()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, FilterError> {
        match self.peek() {
            Some("not" | "!") => {
                self.at += 1;
                Ok(Node::Not(Box::new(self.not()?)))
            }
            Some("(") => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(")") {
                    return Err(self.err("expected `)`"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(_) => self.primitive(),
            None => Err(self.err("expected a primitive (host, net, port, tcp, udp, ...)")),
        }
    }

    fn number<T: std::str::FromStr>(&mut self, what: &str) -> Result<T, FilterError> {
        let w = self.next_word(what)?.to_string();
        w.parse().map_err(|_| {
            self.at -= 1;
            self.err(format!("expected {what}"))
        })
    }

    fn primitive(&mut self) -> Result<Node, FilterError> {
        let start = self.at;
        let first = self.next_word("a primitive")?.to_string();
        match first.as_str() {
            "ip" => return Ok(Node::EtherType(ETH_IPV4)),
            "ip6" => return Ok(Node::EtherType(ETH_IPV6)),
            "arp" => return Ok(Node::EtherType(ETH_ARP)),
            "icmp" => return Ok(Node::Proto(IP_ICMP)),
            "icmp6" => return Ok(Node::Proto(IP_ICMP6)),
            "proto" => return Ok(Node::Proto(self.number("a protocol number 0..=255")?)),
            "less" => return Ok(Node::Less(self.number("a length in bytes")?)),
            "greater" => return Ok(Node::Greater(self.number("a length in bytes")?)),
            "vlan" => {
                return Ok(match self.peek().and_then(|w| w.parse::<u16>().ok()) {
                    Some(id) if id < 4096 => {
                        self.at += 1;
                        Node::Vlan(Some(id))
                    }
                    Some(_) => return Err(self.err("a VLAN id is 0..=4095")),
                    None => Node::Vlan(None),
                })
            }
            "ether" => return self.ether(),
            _ => {}
        }
        let mut proto = L4Proto::Either;
        let mut word = first.clone();
        if word == "tcp" || word == "udp" {
            proto = if word == "tcp" { L4Proto::Tcp } else { L4Proto::Udp };
            match self.peek() {
                Some("src" | "dst" | "port" | "portrange") => {
                    word = self.next_word("")?.to_string();
                }
                _ => return Ok(Node::Proto(if proto == L4Proto::Tcp { IP_TCP } else { IP_UDP })),
            }
        }
        let mut dir = Dir::Either;
        if word == "src" || word == "dst" {
            dir = if word == "src" { Dir::Src } else { Dir::Dst };
            word = self.next_word("host, net, port or portrange")?.to_string();
        }
        match word.as_str() {
            "host" | "net" if proto != L4Proto::Either => {
                self.at -= 1;
                Err(self.err("tcp/udp qualify only port and portrange"))
            }
            "host" => {
                let w = self.next_word("an IPv4 or IPv6 address")?.to_string();
                let addr: IpAddr = w.parse().map_err(|_| {
                    self.at -= 1;
                    self.err("expected an IPv4 or IPv6 address (host names are not resolved)")
                })?;
                let len = if addr.is_ipv4() { 32 } else { 128 };
                Ok(Node::Net { dir, addr, len })
            }
            "net" => {
                let w = self.next_word("a prefix ADDR/LEN")?.to_string();
                let bad = |p: &mut Self, why: &str| {
                    p.at -= 1;
                    p.err(why.to_string())
                };
                let (a, l) = w.split_once('/').unwrap_or((&w, ""));
                let addr: IpAddr =
                    a.parse().map_err(|_| bad(self, "expected a prefix ADDR/LEN"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let len: u8 = if l.is_empty() {
                    max
                } else {
                    l.parse()
                        .ok()
                        .filter(|n| *n <= max)
                        .ok_or_else(|| bad(self, &format!("prefix length must be 0..={max}")))?
                };
                if masked(addr, len) != addr {
                    return Err(bad(self, "the address has bits set beyond the prefix length"));
                }
                Ok(Node::Net { dir, addr, len })
            }
            "port" => {
                let p: u16 = self.number("a port number 0..=65535")?;
                Ok(Node::Port { proto, dir, lo: p, hi: p })
            }
            "portrange" => {
                let w = self.next_word("a port range N-M")?.to_string();
                let range = w
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                    .filter(|(a, b)| a <= b);
                match range {
                    Some((lo, hi)) => Ok(Node::Port { proto, dir, lo, hi }),
                    None => {
                        self.at -= 1;
                        Err(self.err("expected a port range N-M with N <= M"))
                    }
                }
            }
            _ => {
                self.at = start;
                Err(self.err(
                    "unknown primitive: expected host, net, port, portrange, ether, ip, ip6, \
                     arp, tcp, udp, icmp, icmp6, vlan, proto, less, greater, not, `(`",
                ))
            }
        }
    }

    fn ether(&mut self) -> Result<Node, FilterError> {
        let mut dir = Dir::Either;
        let mut w = self.next_word("src, dst or host")?.to_string();
        if w == "src" || w == "dst" {
            dir = if w == "src" { Dir::Src } else { Dir::Dst };
            w = self.next_word("host")?.to_string();
        }
        if w != "host" {
            self.at -= 1;
            return Err(self.err("expected `host` after `ether`"));
        }
        let m = self.next_word("a MAC address")?.to_string();
        let parts: Vec<u8> = m.split(':').filter_map(|x| u8::from_str_radix(x, 16).ok()).collect();
        if parts.len() != 6 || m.split(':').count() != 6 {
            self.at -= 1;
            return Err(self.err("expected a MAC address aa:bb:cc:dd:ee:ff"));
        }
        let mut mac = [0; 6];
        mac.copy_from_slice(&parts);
        Ok(Node::Ether { dir, mac })
    }
}

fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// What the primitives look at, found in one pass.
#[derive(Default)]
struct Headers {
    ethertype: u16,
    vlans: [Option<u16>; 2],
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    /// Offset of the transport header, when it is in this fragment.
    l4: Option<usize>,
}

fn be16(f: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]))
}

impl Headers {
    fn parse(f: &[u8]) -> Headers {
        let mut h = Headers::default();
        let Some(mut et) = be16(f, 12) else { return h };
        let mut off = 14;
        for slot in 0..2 {
            if et != ETH_VLAN && et != ETH_QINQ {
                break;
            }
            let (Some(tci), Some(next)) = (be16(f, off), be16(f, off + 2)) else { return h };
            h.vlans[slot] = Some(tci & 0x0fff);
            et = next;
            off += 4;
        }
        h.ethertype = et;
        match et {
            ETH_IPV4 => {
                let Some(ip) = f.get(off..off + 20) else { return h };
                if ip[0] >> 4 != 4 {
                    return h;
                }
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                h.src = Some(IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])));
                h.dst = Some(IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])));
                h.proto = Some(ip[9]);
                let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
                if ihl >= 20 && frag_offset == 0 {
                    h.l4 = Some(off + ihl);
                }
            }
            ETH_IPV6 => {
                let Some(ip) = f.get(off..off + 40) else { return h };
                if ip[0] >> 4 != 6 {
                    return h;
                }
                let a = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&ip[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                h.src = Some(a(8));
                h.dst = Some(a(24));
                let mut next = ip[6];
                let mut at = off + 40;
                let mut first_fragment = true;
                // A bounded walk over the extension headers.
                for _ in 0..8 {
                    match next {
                        0 | 43 | 60 => {
                            let (Some(&n), Some(&l)) = (f.get(at), f.get(at + 1)) else {
                                return h;
                            };
                            next = n;
                            at += (usize::from(l) + 1) * 8;
                        }
                        44 => {
                            let (Some(&n), Some(fo)) = (f.get(at), be16(f, at + 2)) else {
                                return h;
                            };
                            first_fragment = fo >> 3 == 0;
                            next = n;
                            at += 8;
                        }
                        _ => break,
                    }
                }
                h.proto = Some(next);
                if first_fragment {
                    h.l4 = Some(at);
                }
            }
            _ => {}
        }
        h
    }

    fn ports(&self, f: &[u8], proto: L4Proto) -> Option<(u16, u16)> {
        let p = self.proto?;
        let ok = match proto {
            L4Proto::Tcp => p == IP_TCP,
            L4Proto::Udp => p == IP_UDP,
            L4Proto::Either => p == IP_TCP || p == IP_UDP || p == 132, // SCTP too
        };
        if !ok {
            return None;
        }
        let o = self.l4?;
        Some((be16(f, o)?, be16(f, o + 2)?))
    }
}

fn in_prefix(a: IpAddr, net: IpAddr, len: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => masked(a, len) == net,
        _ => false,
    }
}

fn either(dir: Dir, src: bool, dst: bool) -> bool {
    match dir {
        Dir::Src => src,
        Dir::Dst => dst,
        Dir::Either => src || dst,
    }
}

fn eval(n: &Node, f: &[u8], h: &Headers) -> bool {
    match n {
        Node::True => true,
        Node::Not(a) => !eval(a, f, h),
        Node::And(a, b) => eval(a, f, h) && eval(b, f, h),
        Node::Or(a, b) => eval(a, f, h) || eval(b, f, h),
        Node::Net { dir, addr, len } => either(
            *dir,
            h.src.is_some_and(|s| in_prefix(s, *addr, *len)),
            h.dst.is_some_and(|d| in_prefix(d, *addr, *len)),
        ),
        Node::Port { proto, dir, lo, hi } => match h.ports(f, *proto) {
            Some((s, d)) => either(*dir, (*lo..=*hi).contains(&s), (*lo..=*hi).contains(&d)),
            None => false,
        },
        Node::Ether { dir, mac } => {
            f.len() >= 12 && either(*dir, f[6..12] == mac[..], f[..6] == mac[..])
        }
        Node::EtherType(t) => h.ethertype == *t,
        Node::Proto(p) => h.proto == Some(*p),
        Node::Vlan(None) => h.vlans[0].is_some(),
        Node::Vlan(Some(id)) => h.vlans.contains(&Some(*id)),
        Node::Less(n) => f.len() <= *n,
        Node::Greater(n) => f.len() >= *n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::FrameSpec;

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        FrameSpec::udp((Ipv4Addr::from(src), sport), (Ipv4Addr::from(dst), dport), 8)
            .packet()
            .data()
            .to_vec()
    }

    fn m(expr: &str, f: &[u8]) -> bool {
        Filter::parse(expr).unwrap().matches(f)
    }

    #[test]
    fn primitives_match_ipv4_udp() {
        let f = udp([10, 0, 0, 1], 4000, [10, 0, 1, 2], 53);
        for yes in [
            "",
            "ip",
            "udp",
            "host 10.0.0.1",
            "src host 10.0.0.1",
            "dst host 10.0.1.2",
            "net 10.0.0.0/16",
            "dst net 10.0.1.0/24",
            "port 53",
            "udp dst port 53",
            "src port 4000",
            "portrange 50-60",
            "udp and port 53 and not tcp",
            "tcp or (udp && dst port 53)",
            "! arp",
            "proto 17",
            "greater 40",
        ] {
            assert!(m(yes, &f), "{yes:?} should match");
        }
        for no in [
            "ip6",
            "tcp",
            "tcp port 53",
            "src host 10.0.1.2",
            "dst net 10.0.0.0/24",
            "src port 53",
            "port 54",
            "not udp",
            "icmp",
            "vlan",
            "less 20",
            "host ::1",
        ] {
            assert!(!m(no, &f), "{no:?} should not match");
        }
    }

    #[test]
    fn ipv6_with_extension_headers_and_vlan() {
        // Ethernet + VLAN 7 + IPv6 (hop-by-hop, then UDP 1234 -> 80).
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07, 0x86, 0xdd]);
        let mut ip = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        ip.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // hop-by-hop, next UDP
        f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50, 0, 8, 0, 0]);
        assert!(m("ip6 and udp and port 80 and vlan 7", &f));
        assert!(m("src net 2001:db8::/32 and dst host 2001:db8::2", &f));
        assert!(!m("ip or tcp or vlan 8", &f));
    }

    #[test]
    fn errors_name_the_word() {
        let e = Filter::parse("host 10.0.0.300").unwrap_err();
        assert_eq!((e.pos, e.word.as_str()), (2, "10.0.0.300"));
        assert!(e.to_string().contains("address"), "{e}");
        let e = Filter::parse("udp and").unwrap_err();
        assert_eq!((e.pos, e.word.as_str()), (3, "(end)"));
        let e = Filter::parse("(udp").unwrap_err();
        assert!(e.why.contains("`)`"), "{e}");
        let e = Filter::parse("frobnicate 3").unwrap_err();
        assert_eq!(e.pos, 1);
        assert!(Filter::parse("net 10.0.0.1/8").unwrap_err().why.contains("beyond"));
        assert!(Filter::parse("portrange 9-3").is_err());
        assert!(Filter::parse("udp port 99999").is_err());
        assert!(Filter::parse("tcp host 1.2.3.4").is_err());
        assert!(Filter::parse("udp port 53 tcp").unwrap_err().why.contains("expected `and`"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_bytes(f in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let filt = Filter::parse("(ip6 or ip) and (port 1 or net 10.0.0.0/8 or vlan 3 or ether host 0:0:0:0:0:0)").unwrap();
            let _ = filt.matches(&f);
        }
    }
}
