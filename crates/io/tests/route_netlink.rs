//! Routes replaced over rtnetlink against `ip route replace` as the oracle:
//! the same words in two identical namespaces, one through
//! `braid_io::route`, one through `ip`, must leave the same routing tables.

mod common;

use braid_io::netns::{self, NetnsGuard};
use braid_io::route::{Route, RouteError, RouteSocket};
use common::skip_unless_root;

/// A namespace with a veth pair `v0`/`v1` up, `v0` holding 10.0.0.1/24
/// and fd00::1/64 (so gateways on those subnets are reachable).
fn host(prefix: &str) -> NetnsGuard {
    let ns = NetnsGuard::create(&netns::unique_name(prefix)).unwrap();
    let n = Some(ns.name());
    netns::ip(n, &["link", "add", "v0", "type", "veth", "peer", "name", "v1"]).unwrap();
    for d in ["v0", "v1"] {
        netns::set_up(n, d).unwrap();
    }
    netns::add_addr(n, "v0", "10.0.0.1/24").unwrap();
    netns::ip(n, &["-6", "addr", "add", "fd00::1/64", "dev", "v0", "nodad"]).unwrap();
    ns
}

/// The namespace's IPv4 and IPv6 main tables, in `ip -d` detail (type,
/// protocol, scope).
fn tables(ns: &str) -> String {
    let v4 = netns::ip(Some(ns), &["-d", "route", "show", "table", "main"]).unwrap();
    let v6 = netns::ip(Some(ns), &["-d", "-6", "route", "show", "table", "main"]).unwrap();
    String::from_utf8_lossy(&v4.stdout).to_string() + &String::from_utf8_lossy(&v6.stdout)
}

/// `(to, via, dev)` as a switch file gives them; later ones replace
/// earlier routes to the same prefix.
const ROUTES: &[(&str, Option<&str>, Option<&str>)] = &[
    ("10.5.0.0/16", Some("10.0.0.2"), None),
    ("10.6.0.0/24", None, Some("v0")),
    ("10.7.1.1", Some("10.0.0.2"), Some("v0")),
    ("default", Some("10.0.0.3"), None),
    ("fd10::/64", Some("fd00::2"), Some("v0")),
    // Replacements: a new gateway, then a device route over a gateway one.
    ("10.5.0.0/16", Some("10.0.0.9"), Some("v0")),
    ("10.7.1.1", None, Some("v1")),
    ("default", Some("10.0.0.4"), Some("v0")),
];

#[test]
fn netlink_routes_match_ip_route_replace() {
    if skip_unless_root("netlink_routes_match_ip_route_replace") {
        return;
    }
    let (ours, oracle) = (host("rtnl"), host("rtip"));
    let mut sock = netns::in_netns(ours.name(), RouteSocket::open).unwrap().unwrap();
    for (i, &(to, via, dev)) in ROUTES.iter().enumerate() {
        // Parsed inside the namespace: `dev` is its interface.
        let route = netns::in_netns(ours.name(), || Route::parse(to, via, dev)).unwrap().unwrap();
        sock.replace(&route).unwrap_or_else(|e| panic!("route {i} ({route}): {e}"));
        let mut args = vec!["route", "replace", to];
        args.extend(via.iter().flat_map(|v| ["via", v]));
        args.extend(dev.iter().flat_map(|d| ["dev", d]));
        netns::ip(Some(oracle.name()), &args).unwrap();
        assert_eq!(
            tables(ours.name()),
            tables(oracle.name()),
            "after route {i}: {to} {via:?} {dev:?}"
        );
    }
    let t = tables(ours.name());
    assert!(t.contains("unicast 10.5.0.0/16 via 10.0.0.9 dev v0 proto boot scope global"), "{t}");
    assert!(t.contains("unicast 10.7.1.1 dev v1 proto boot scope link"), "{t}");
}

#[test]
fn refused_routes_say_what_and_why() {
    if skip_unless_root("refused_routes_say_what_and_why") {
        return;
    }
    let ns = host("rtbad");
    let mut sock = netns::in_netns(ns.name(), RouteSocket::open).unwrap().unwrap();
    let before = tables(ns.name());
    // A gateway on no connected subnet: the kernel says so.
    let route = Route::parse("10.5.0.0/16", Some("10.99.0.1"), None).unwrap();
    let e = sock.replace(&route).unwrap_err();
    assert!(matches!(e, RouteError::Refused { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("route 10.5.0.0/16 via 10.99.0.1") && msg.contains("unreachable"),
        "{msg}"
    );
    // An interface of another namespace is not found in this one.
    let e = netns::in_netns(ns.name(), || Route::parse("10.5.0.0/16", None, Some("eth-none")))
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("interface eth-none not found"), "{e}");
    assert_eq!(tables(ns.name()), before, "nothing changed");
    // The socket still works after a refusal.
    let ok = netns::in_netns(ns.name(), || Route::parse("10.5.0.0/16", Some("10.0.0.2"), None))
        .unwrap()
        .unwrap();
    sock.replace(&ok).unwrap();
    assert!(tables(ns.name()).contains("10.5.0.0/16 via 10.0.0.2"));
}
