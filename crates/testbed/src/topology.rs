//! The testbed topology: hosts (network namespaces), links (veth pairs with
//! IPv4 addresses) and static routes, read from YAML and checked before
//! anything is created.
//!
//! ```yaml
//! name: calvin
//! hosts:
//!   - { name: client }
//!   - { name: nf1, forwarding: true }
//!   - { name: server }
//! links:
//!   - a: { host: client, addr: 10.71.1.1/24 }
//!     b: { host: nf1, addr: 10.71.1.2/24 }
//!   - a: { host: nf1, addr: 10.71.2.1/24 }
//!     b: { host: server, addr: 10.71.2.2/24 }
//!     threaded: true        # NAPI in a kernel thread on both ends
//!     shape: { rate: 100mbit, delay: 5ms }   # a WAN link (tc netem), each direction
//! routes:
//!   - { host: client, to: default, via: 10.71.1.2 }
//!   - { host: server, to: default, via: 10.71.2.1 }
//! ```
//!
//! A link end's interface is called `to-<peer host>` unless `dev` names it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Longest host name: the interface name `to-<host>` must fit in 15 bytes.
pub const HOST_NAME_MAX: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    pub hosts: Vec<Host>,
    pub links: Vec<Link>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Keep IPv6 on the links (off by default: router and neighbour
    /// solicitations would be stray packets in every measurement).
    #[serde(default)]
    pub ipv6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// Linux IPv4 forwarding (`net.ipv4.ip_forward`) in this host.
    #[serde(default)]
    pub forwarding: bool,
    /// Run a braidd in this host (`up` starts it, `down` stops it; see
    /// `crate::daemons`). Needs a link: its first address is the daemon's
    /// `migrate_listen`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub daemon: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub a: End,
    pub b: End,
    /// Threaded NAPI on both ends (`/sys/class/net/DEV/threaded`).
    #[serde(default)]
    pub threaded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// WAN emulation: rate limit, delay, jitter and loss on this link, in
    /// each direction (a `netem` qdisc on both ends' egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
}

/// How a link is shaped, in `tc` units: `rate: 1gbit` (bit, kbit, mbit,
/// gbit), `delay: 5ms` and `jitter: 1ms` (us, ms, s) one way, `loss: 0.1`
/// (percent), `limit: 1000` (packets queued at most per direction). Rate
/// is an HTB class (every kernel); delay, jitter and loss need the kernel's
/// `netem` qdisc, and `testbed up` says so when it is missing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

// `loss` is a float; a shape from a validated topology never holds NaN.
impl Eq for Shape {}

/// `100mbit` -> bits per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let (num, unit) = split_unit(s)?;
    let mult: f64 = match unit {
        "bit" | "bps" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return None,
    };
    let v = num * mult;
    (1.0..=1e12).contains(&v).then_some(v as u64)
}

/// `5ms` -> microseconds.
pub fn parse_duration_us(s: &str) -> Option<u64> {
    let (num, unit) = split_unit(s)?;
    let mult: f64 = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        _ => return None,
    };
    let v = num * mult;
    (v <= 60e6).then_some(v as u64)
}

fn split_unit(s: &str) -> Option<(f64, &str)> {
    let at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let num: f64 = s[..at].trim().parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    Some((num, &s[at..]))
}

impl Shape {
    /// The `netem` arguments (delay, jitter, loss), empty if none is set.
    pub fn netem_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(d) = self.delay.as_deref().and_then(parse_duration_us) {
            a.extend(["delay".into(), format!("{d}us")]);
            if let Some(j) = self.jitter.as_deref().and_then(parse_duration_us) {
                a.push(format!("{j}us"));
            }
        }
        if let Some(l) = self.loss {
            a.extend(["loss".into(), format!("{l}%")]);
        }
        a
    }

    /// The `tc` argument lists that shape `dev`'s egress: an HTB root whose
    /// one class carries the rate (what every kernel has), and under it
    /// `netem` for delay, jitter and loss (needs `sch_netem`), or a packet
    /// FIFO of `limit` packets.
    pub fn tc_commands(&self, dev: &str) -> Vec<Vec<String>> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Unshaped rate: far above what a veth carries.
        let rate = self.rate.as_deref().and_then(parse_rate).unwrap_or(100_000_000_000);
        let rate = format!("{rate}bit");
        let mut cmds = vec![
            v(&["qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"]),
            v(&[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", &rate,
                "ceil", &rate,
            ]),
        ];
        let limit = self.limit.map(|l| l.to_string());
        let netem = self.netem_args();
        if !netem.is_empty() {
            let mut c = v(&["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem"]);
            c.extend(netem);
            if let Some(l) = &limit {
                c.extend(["limit".to_string(), l.clone()]);
            }
            cmds.push(c);
        } else if let Some(l) = &limit {
            cmds.push(v(&[
                "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "pfifo", "limit", l,
            ]));
        }
        cmds
    }

    fn validate(&self, path: &str) -> Result<(), TopologyError> {
        if let Some(r) = &self.rate {
            parse_rate(r).ok_or_else(|| {
                bad(format!("{path}.rate"), format!("{r:?} is not a rate (e.g. 100mbit, 1gbit; bit, kbit, mbit, gbit; 1 bit/s..1000 gbit/s)"))
            })?;
        }
        for (field, v) in [("delay", &self.delay), ("jitter", &self.jitter)] {
            if let Some(d) = v {
                parse_duration_us(d).ok_or_else(|| {
                    bad(
                        format!("{path}.{field}"),
                        format!("{d:?} is not a duration (e.g. 5ms; us, ms, s; at most 60 s)"),
                    )
                })?;
            }
        }
        if self.jitter.is_some() && self.delay.is_none() {
            return Err(bad(format!("{path}.jitter"), "jitter needs a delay"));
        }
        if let Some(l) = self.loss {
            if !(0.0..=100.0).contains(&l) {
                return Err(bad(
                    format!("{path}.loss"),
                    format!("{l} is not a percentage 0..=100"),
                ));
            }
        }
        if self.limit == Some(0) {
            return Err(bad(format!("{path}.limit"), "a queue of 0 packets passes nothing"));
        }
        if self.rate.is_none() && self.netem_args().is_empty() && self.limit.is_none() {
            return Err(bad(path, "shapes nothing: give rate, delay, loss or limit"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub host: String,
    /// Interface name inside the host; default `to-<peer host>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// IPv4 address with prefix length, e.g. `10.71.1.1/24`.
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: String,
    /// Destination prefix (`10.71.3.0/24`) or `default`.
    pub to: String,
    pub via: Ipv4Addr,
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Why a string is not `ADDRESS/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not ADDRESS/PREFIX (e.g. 10.71.1.1/24)")]
    NoPrefix(String),
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    #[error("prefix length {0:?} is not 0..=32")]
    PrefixLength(String),
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = s.split_once('/').ok_or_else(|| CidrError::NoPrefix(s.into()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::Address(a.into()))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| CidrError::PrefixLength(p.into()))?;
        Ok(Cidr { addr, prefix })
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }
}

/// A problem in a topology, with the path of the offending field.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
    #[error("topology YAML: {0}")]
    Yaml(String),
}

fn bad(path: impl Into<String>, msg: impl Into<String>) -> TopologyError {
    TopologyError::Invalid { path: path.into(), msg: msg.into() }
}

fn check_name(path: &str, name: &str) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= HOST_NAME_MAX
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(bad(
            path,
            format!(
                "{name:?} must be 1..={HOST_NAME_MAX} characters of a-z, 0-9 and '-' (not first)"
            ),
        ))
    }
}

fn check_dev(path: &str, dev: &str) -> Result<(), TopologyError> {
    let ok = !dev.is_empty()
        && dev.len() <= braid_io::netns::IFNAME_MAX
        && dev.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        && dev != "lo";
    if ok {
        Ok(())
    } else {
        Err(bad(path, format!("interface name {dev:?} must be 1..=15 characters of a-z, A-Z, 0-9, '-', '_', '.' and not \"lo\"")))
    }
}

impl Topology {
    /// Parse and validate YAML; errors name the field (`links[1].b.addr`).
    pub fn from_yaml(text: &str) -> Result<Topology, TopologyError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let t: Topology = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde_yaml_ng usually names the path itself; add it otherwise.
            let lead = inner.split(": ").next().unwrap_or_default();
            let named = inner.starts_with(&path) || (!lead.is_empty() && path.starts_with(lead));
            TopologyError::Yaml(if path == "." || named {
                inner
            } else {
                format!("{path}: {inner}")
            })
        })?;
        t.validate()?;
        Ok(t)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("topology serializes")
    }

    /// The interface name of `links[i]`'s end `end` (a or b).
    pub fn dev_of(&self, link: &Link, a_side: bool) -> String {
        let (me, peer) = if a_side { (&link.a, &link.b) } else { (&link.b, &link.a) };
        me.dev.clone().unwrap_or_else(|| format!("to-{}", peer.host))
    }

    /// Check every rule; the first violation is returned with its path.
    pub fn validate(&self) -> Result<(), TopologyError> {
        check_name("name", &self.name)?;
        if self.hosts.is_empty() {
            return Err(bad("hosts", "a topology needs at least one host"));
        }
        let mut hosts = BTreeSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            check_name(&format!("hosts[{i}].name"), &h.name)?;
            if !hosts.insert(h.name.as_str()) {
                return Err(bad(
                    format!("hosts[{i}].name"),
                    format!("host {:?} is declared twice", h.name),
                ));
            }
        }
        // Per host: interface names and connected subnets.
        let mut devs: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut subnets: BTreeMap<&str, Vec<Cidr>> = BTreeMap::new();
        let mut addrs: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for (i, l) in self.links.iter().enumerate() {
            let mut cidrs = Vec::new();
            for (side, end) in [("a", &l.a), ("b", &l.b)] {
                let p = format!("links[{i}].{side}");
                if !hosts.contains(end.host.as_str()) {
                    return Err(bad(format!("{p}.host"), format!("unknown host {:?}", end.host)));
                }
                let dev = self.dev_of(l, side == "a");
                check_dev(&format!("{p}.dev"), &dev)?;
                if !devs.entry(end.host.as_str()).or_default().insert(dev.clone()) {
                    return Err(bad(
                        format!("{p}.dev"),
                        format!("host {:?} already has an interface {dev:?}; give this end another `dev`", end.host),
                    ));
                }
                let c =
                    Cidr::parse(&end.addr).map_err(|m| bad(format!("{p}.addr"), m.to_string()))?;
                if c.prefix == 0 || c.prefix > 30 {
                    return Err(bad(
                        format!("{p}.addr"),
                        format!("prefix /{} leaves no room for two hosts (use /1../30)", c.prefix),
                    ));
                }
                if let Some(other) = addrs.insert(c.addr, p.clone()) {
                    return Err(bad(
                        format!("{p}.addr"),
                        format!("address {} is also used by {other}", c.addr),
                    ));
                }
                subnets.entry(end.host.as_str()).or_default().push(c);
                cidrs.push(c);
            }
            if l.a.host == l.b.host {
                return Err(bad(
                    format!("links[{i}]"),
                    format!("both ends are on host {:?}", l.a.host),
                ));
            }
            if cidrs[0].prefix != cidrs[1].prefix || cidrs[0].network() != cidrs[1].network() {
                return Err(bad(
                    format!("links[{i}]"),
                    format!("ends {} and {} are not in the same subnet", l.a.addr, l.b.addr),
                ));
            }
            if let Some(shape) = &l.shape {
                shape.validate(&format!("links[{i}].shape"))?;
            }
            if let Some(m) = l.mtu {
                if m < 68 {
                    return Err(bad(
                        format!("links[{i}].mtu"),
                        format!("MTU {m} is below the IPv4 minimum 68"),
                    ));
                }
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.daemon && !subnets.contains_key(h.name.as_str()) {
                return Err(bad(
                    format!("hosts[{i}].daemon"),
                    format!(
                        "host {:?} has no link, so no address for its braidd's migrate_listen",
                        h.name
                    ),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            if !hosts.contains(r.host.as_str()) {
                return Err(bad(format!("{p}.host"), format!("unknown host {:?}", r.host)));
            }
            if r.to != "default" {
                let c = Cidr::parse(&r.to)
                    .map_err(|m| bad(format!("{p}.to"), format!("{m} (or `default`)")))?;
                if u32::from(c.addr) != c.network() {
                    return Err(bad(format!("{p}.to"), format!("{} has host bits set", r.to)));
                }
            }
            let connected = subnets
                .get(r.host.as_str())
                .map(|v| v.iter().any(|c| c.contains(r.via)))
                .unwrap_or(false);
            if !connected {
                return Err(bad(
                    format!("{p}.via"),
                    format!("gateway {} is not on a link of host {:?}", r.via, r.host),
                ));
            }
        }
        Ok(())
    }

    /// The NF hosts: forwarding hosts with exactly two links (ingress and
    /// egress), in topology order. `braid deploy` places NFs on them, and
    /// `braid testbed up --daemons` starts a braidd on each.
    pub fn nf_hosts(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| h.forwarding)
            .filter(|h| {
                self.links.iter().filter(|l| l.a.host == h.name || l.b.host == h.name).count() == 2
            })
            .map(|h| h.name.as_str())
            .collect()
    }

    /// The address (without prefix) of `host`'s first link end, in link
    /// order.
    pub fn first_addr(&self, host: &str) -> Option<Ipv4Addr> {
        self.links.iter().find_map(|l| {
            [&l.a, &l.b]
                .into_iter()
                .find(|e| e.host == host)
                .and_then(|e| Cidr::parse(&e.addr).ok().map(|c| c.addr))
        })
    }

    /// The address (without prefix) of `host`'s end of the first link
    /// between `host` and `peer`.
    pub fn addr_towards(&self, host: &str, peer: &str) -> Option<Ipv4Addr> {
        self.links.iter().find_map(|l| {
            let e = if l.a.host == host && l.b.host == peer {
                &l.a
            } else if l.b.host == host && l.a.host == peer {
                &l.b
            } else {
                return None;
            };
            Cidr::parse(&e.addr).ok().map(|c| c.addr)
        })
    }

    /// The address of the end with interface `dev` on `host`.
    pub fn addr_of(&self, host: &str, dev: &str) -> Option<Ipv4Addr> {
        self.links.iter().find_map(|l| {
            [(true, &l.a), (false, &l.b)]
                .into_iter()
                .find(|(side, e)| e.host == host && self.dev_of(l, *side) == dev)
                .and_then(|(_, e)| Cidr::parse(&e.addr).ok().map(|c| c.addr))
        })
    }
}

/// The CALVIN topology: `client — nf1 — … — nfN — server`, every NF host
/// forwarding with Linux routing, plus (if `direct`) a link `client —
/// server` for the no-NF baseline. Link `k` (1-based) of the chain uses
/// `10.71.k.0/24` (`.1` on the client side, `.2` on the server side); the
/// direct link uses `10.71.100.0/24` with interfaces called `direct`.
///
/// So the server is `10.71.{N+1}.2` through the chain and `10.71.100.2`
/// directly.
pub fn calvin(nf_hosts: usize, direct: bool) -> Topology {
    let nf_hosts = nf_hosts.min(99);
    let mut hosts = vec![Host { name: "client".into(), forwarding: false, daemon: false }];
    for i in 1..=nf_hosts {
        hosts.push(Host { name: format!("nf{i}"), forwarding: true, daemon: false });
    }
    hosts.push(Host { name: "server".into(), forwarding: false, daemon: false });
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut links = Vec::new();
    for k in 1..names.len() {
        links.push(Link {
            a: End { host: names[k - 1].clone(), dev: None, addr: format!("10.71.{k}.1/24") },
            b: End { host: names[k].clone(), dev: None, addr: format!("10.71.{k}.2/24") },
            threaded: false,
            mtu: None,
            shape: None,
        });
    }
    let last = names.len() - 1; // number of chain links
    let mut routes = vec![
        Route { host: "client".into(), to: "default".into(), via: Ipv4Addr::new(10, 71, 1, 2) },
        Route {
            host: "server".into(),
            to: "default".into(),
            via: Ipv4Addr::new(10, 71, last as u8, 1),
        },
    ];
    for i in 1..=nf_hosts {
        // nf_i sits between chain links i (towards the client) and i+1.
        if i > 1 {
            routes.push(Route {
                host: format!("nf{i}"),
                to: "10.71.1.0/24".into(),
                via: Ipv4Addr::new(10, 71, i as u8, 1),
            });
        }
        if i < nf_hosts {
            routes.push(Route {
                host: format!("nf{i}"),
                to: format!("10.71.{last}.0/24"),
                via: Ipv4Addr::new(10, 71, (i + 1) as u8, 2),
            });
        }
    }
    if direct {
        links.push(Link {
            a: End {
                host: "client".into(),
                dev: Some("direct".into()),
                addr: "10.71.100.1/24".into(),
            },
            b: End {
                host: "server".into(),
                dev: Some("direct".into()),
                addr: "10.71.100.2/24".into(),
            },
            threaded: false,
            mtu: None,
            shape: None,
        });
    }
    if nf_hosts == 0 {
        // Client and server share the chain link: no gateway needed.
        routes.clear();
    }
    Topology { name: "calvin".into(), hosts, links, routes, ipv6: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calvin_topologies_are_valid() {
        for n in 0..=4 {
            for direct in [false, true] {
                let t = calvin(n, direct);
                t.validate().unwrap_or_else(|e| panic!("calvin({n}, {direct}): {e}"));
                assert_eq!(t.hosts.len(), n + 2);
                // Round trip through YAML.
                assert_eq!(Topology::from_yaml(&t.to_yaml()).unwrap(), t);
            }
        }
        let t = calvin(2, true);
        assert_eq!(t.addr_towards("server", "nf2"), Some(Ipv4Addr::new(10, 71, 3, 2)));
        assert_eq!(t.addr_of("server", "direct"), Some(Ipv4Addr::new(10, 71, 100, 2)));
        assert_eq!(t.dev_of(&t.links[0], true), "to-nf1");
        assert_eq!(t.dev_of(&t.links[0], false), "to-client");
    }

    #[test]
    fn shipped_topology_files_are_valid() {
        let t = Topology::from_yaml(include_str!("../topologies/calvin-baseline.yaml")).unwrap();
        assert_eq!(t.hosts.len(), 5);
        assert_eq!(t.addr_of("server", "to-fw1"), Some(Ipv4Addr::new(10, 71, 12, 2)));
    }

    #[test]
    fn link_shapes_parse_validate_and_become_netem_arguments() {
        assert_eq!(parse_rate("100mbit"), Some(100_000_000));
        assert_eq!(parse_rate("1.5gbit"), Some(1_500_000_000));
        assert_eq!(parse_rate("0.5bit"), None);
        assert_eq!(parse_rate("100 mbps"), None);
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_duration_us("5ms"), Some(5000));
        assert_eq!(parse_duration_us("250us"), Some(250));
        assert_eq!(parse_duration_us("-1ms"), None);
        assert_eq!(parse_duration_us("2h"), None);
        let t = Topology::from_yaml(&calvin(1, false).to_yaml().replace(
            "threaded: false",
            "threaded: false\n  shape: { rate: 1gbit, delay: 5ms, jitter: 100us, loss: 0.5, limit: 5000 }",
        ))
        .unwrap();
        let shape = t.links[0].shape.as_ref().unwrap();
        let cmds: Vec<String> = shape.tc_commands("x").iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "qdisc replace dev x root handle 1: htb default 1",
                "class add dev x parent 1: classid 1:1 htb rate 1000000000bit ceil 1000000000bit",
                "qdisc add dev x parent 1:1 handle 10: netem delay 5000us 100us loss 0.5% limit 5000",
            ]
        );
        let rate_only =
            Shape { rate: Some("10mbit".into()), limit: Some(50), ..Default::default() };
        assert_eq!(
            rate_only.tc_commands("x")[2].join(" "),
            "qdisc add dev x parent 1:1 handle 10: pfifo limit 50"
        );
        let check = |shape: &str, path: &str, what: &str| {
            let yaml = calvin(1, false).to_yaml().replacen(
                "threaded: false",
                &format!("threaded: false\n  shape: {shape}"),
                1,
            );
            let e = Topology::from_yaml(&yaml).unwrap_err().to_string();
            assert!(e.starts_with(path) && e.contains(what), "{shape}: {e}");
        };
        check("{ rate: 10 }", "links[0].shape.rate", "is not a rate");
        check("{ delay: 5 minutes }", "links[0].shape.delay", "is not a duration");
        check("{ jitter: 1ms }", "links[0].shape.jitter", "needs a delay");
        check("{ loss: 120 }", "links[0].shape.loss", "percentage");
        check("{ limit: 0 }", "links[0].shape.limit", "passes nothing");
        check("{}", "links[0].shape", "shapes nothing");
        let e = Topology::from_yaml(&calvin(1, false).to_yaml().replacen(
            "threaded: false",
            "threaded: false\n  shape: { rte: 1gbit }",
            1,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `rte`"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let base = calvin(1, false);
        let check = |t: Topology, path: &str| {
            let e = t.validate().unwrap_err().to_string();
            assert!(e.starts_with(path), "expected {path}: got {e}");
        };
        let mut t = base.clone();
        t.links[1].b.addr = "10.71.2.300/24".into();
        check(t, "links[1].b.addr");
        let mut t = base.clone();
        t.links[1].b.addr = "10.71.9.2/24".into();
        check(t, "links[1]");
        let mut t = base.clone();
        t.links[0].a.host = "nobody".into();
        check(t, "links[0].a.host");
        let mut t = base.clone();
        t.hosts.push(Host { name: "client".into(), forwarding: false, daemon: false });
        check(t, "hosts[3].name");
        let mut t = base.clone();
        t.hosts[0].name = "Client!".into();
        check(t, "hosts[0].name");
        let mut t = base.clone();
        t.routes[0].via = Ipv4Addr::new(10, 71, 2, 1);
        check(t, "routes[0].via");
        let mut t = base.clone();
        t.routes[0].to = "10.71.2.1/24".into();
        check(t, "routes[0].to");
        let mut t = base.clone();
        t.links[0].b.dev = Some("to-nf2-interface-name".into());
        check(t, "links[0].b.dev");
        let mut t = base.clone();
        t.links[1].a.dev = Some("to-client".into());
        check(t, "links[1].a.dev");
        let mut t = base.clone();
        t.links[1].a.addr = "10.71.1.1/24".into();
        check(t, "links[1].a.addr");
    }

    #[test]
    fn daemon_hosts_need_a_link_and_nf_hosts_are_forwarders_with_two_links() {
        let t = calvin(2, true);
        // client and server have two links too, but do not forward.
        assert_eq!(t.nf_hosts(), ["nf1", "nf2"]);
        assert_eq!(t.first_addr("nf1"), Some(Ipv4Addr::new(10, 71, 1, 2)));
        assert_eq!(t.first_addr("server"), Some(Ipv4Addr::new(10, 71, 3, 2)));
        let mut lonely = t.clone();
        lonely.hosts.push(Host { name: "idle".into(), forwarding: true, daemon: true });
        let e = lonely.validate().unwrap_err().to_string();
        assert!(e.starts_with("hosts[4].daemon") && e.contains("no link"), "{e}");
        // `daemon` is read from a file and left out of one when false.
        let yaml = t.to_yaml();
        assert!(!yaml.contains("daemon"), "{yaml}");
        let with = Topology::from_yaml(&yaml.replacen("name: nf2", "name: nf2\n  daemon: true", 1))
            .unwrap();
        assert!(with.hosts.iter().all(|h| h.daemon == (h.name == "nf2")));
        assert_eq!(Topology::from_yaml(&with.to_yaml()).unwrap(), with);
    }

    #[test]
    fn yaml_errors_carry_path_and_unknown_fields_are_refused() {
        let e = Topology::from_yaml("name: x\nhosts: [{name: a, forwrding: true}]\nlinks: []\n")
            .unwrap_err();
        assert!(e.to_string().contains("forwrding"), "{e}");
        assert!(e.to_string().contains("hosts[0]"), "{e}");
        let e = Topology::from_yaml("name: x\nhosts: []\nlinks: []\n").unwrap_err();
        assert!(e.to_string().contains("at least one host"), "{e}");
    }

    #[test]
    fn cidr_parsing() {
        let c = Cidr::parse("10.71.3.2/24").unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 71, 3, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 71, 4, 1)));
        assert_eq!(Cidr::parse("10.0.0.1"), Err(CidrError::NoPrefix("10.0.0.1".into())));
        assert_eq!(Cidr::parse("10.0.0.1/33"), Err(CidrError::PrefixLength("33".into())));
        assert_eq!(Cidr::parse("x/24"), Err(CidrError::Address("x".into())));
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().network(), 0);
    }
}
