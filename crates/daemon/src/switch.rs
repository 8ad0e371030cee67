//! The route switch's kernel handles, opened before a migration starts.
//!
//! At the switch the destination holds every packet that reaches it until
//! the source's last state is installed, so every millisecond the switch
//! takes is a millisecond of delay for the held traffic. The switch file
//! names routes in the hosts (namespaces) around the chain and the
//! interfaces that carry the drain markers; this module resolves all of
//! them while the state is still streaming: one rtnetlink socket per
//! namespace with its routes parsed and their interfaces looked up there,
//! one send-only packet socket per marker. The switch is then a netlink
//! message per route and one `sendto` per marker. (It was three `ip`
//! processes and two sockets opened at the switch: 18–27 ms of a 32–46 ms
//! outage on the loaded 2-vCPU testbed, docs/migration.md.) A switch file
//! that names a missing namespace or interface now fails the migration
//! before anything moves.

use braid_dataplane::migration::marker_frame;
use braid_io::af_packet::FrameSender;
use braid_io::netns;
use braid_io::route::{Route, RouteSocket};
use braid_migrate::SwitchError;

use crate::migration::SwitchSpec;

/// A route ready to apply: the socket of its namespace and the route.
struct ReadyRoute {
    socket: usize,
    route: Route,
}

/// A drain marker's sender and where it is.
struct ReadyMarker {
    sender: FrameSender,
    at: String,
}

/// The handles a [`SwitchSpec`] needs, opened in their namespaces.
pub struct PreparedSwitch {
    /// One route socket per namespace named (`None`: braidd's own).
    sockets: Vec<(Option<String>, RouteSocket)>,
    redirect: Vec<ReadyRoute>,
    restore: Vec<ReadyRoute>,
    markers: Vec<ReadyMarker>,
}

fn where_(ns: Option<&str>) -> String {
    format!("namespace {}", ns.unwrap_or("(own)"))
}

/// What one namespace contributes: its socket, its routes (list, index in
/// the list, route) and its markers (index, sender).
type NsHandles = (RouteSocket, Vec<(bool, usize, Route)>, Vec<(usize, FrameSender)>);

impl PreparedSwitch {
    /// Open what `spec` needs: fails, naming the route or marker, when a
    /// namespace, an interface or an address is not there.
    pub fn open(spec: &SwitchSpec) -> Result<PreparedSwitch, SwitchError> {
        let mut namespaces: Vec<Option<String>> = Vec::new();
        let named = spec
            .redirect
            .iter()
            .chain(&spec.restore)
            .map(|r| &r.netns)
            .chain(spec.markers.iter().map(|m| &m.netns));
        for ns in named {
            if !namespaces.contains(ns) {
                namespaces.push(ns.clone());
            }
        }
        let mut sockets = Vec::with_capacity(namespaces.len());
        // (index in the switch file's list, handle): sorted back into the
        // file's order below, each namespace having been opened in turn.
        let (mut redirect, mut restore, mut markers) = (Vec::new(), Vec::new(), Vec::new());
        for ns in namespaces {
            let here = ns.as_deref();
            let open = || open_in_namespace(spec, here);
            let (socket, routes, senders) = match here {
                Some(n) => {
                    netns::in_netns(n, open).map_err(|e| SwitchError::failed(where_(here), e))??
                }
                None => open()?,
            };
            let index = sockets.len();
            sockets.push((ns.clone(), socket));
            for (is_redirect, i, route) in routes {
                let list = if is_redirect { &mut redirect } else { &mut restore };
                list.push((i, ReadyRoute { socket: index, route }));
            }
            for (i, sender) in senders {
                let at = format!("drain marker on {} in {}", sender.iface(), where_(here));
                markers.push((i, ReadyMarker { sender, at }));
            }
        }
        fn in_file_order<T>(mut v: Vec<(usize, T)>) -> Vec<T> {
            v.sort_by_key(|(i, _)| *i);
            v.into_iter().map(|(_, t)| t).collect()
        }
        let prepared = PreparedSwitch {
            sockets,
            redirect: in_file_order(redirect),
            restore: in_file_order(restore),
            markers: in_file_order(markers),
        };
        Ok(prepared)
    }

    /// Move the traffic: the `redirect` routes in order, then a drain
    /// marker of migration `id` on every old path.
    pub fn redirect(&mut self, id: u64) -> Result<(), SwitchError> {
        self.apply(true)?;
        let frame = marker_frame(id);
        for m in &self.markers {
            m.sender.send(&frame).map_err(|e| SwitchError::failed(m.at.clone(), e))?;
        }
        Ok(())
    }

    /// Put the traffic back: every `restore` route, even when one fails
    /// (the first failure is returned).
    pub fn restore(&mut self) -> Result<(), SwitchError> {
        self.apply(false)
    }

    fn apply(&mut self, redirect: bool) -> Result<(), SwitchError> {
        let routes = if redirect { &self.redirect } else { &self.restore };
        let mut first = Ok(());
        for r in routes {
            let (ns, socket) = &mut self.sockets[r.socket];
            let done =
                socket.replace(&r.route).map_err(|e| SwitchError::failed(where_(ns.as_deref()), e));
            if done.is_err() {
                // A redirect stops at its first failure (the caller puts
                // back what moved); a restore tries every route.
                if redirect {
                    return done;
                }
                if first.is_ok() {
                    first = done;
                }
            }
        }
        first
    }
}

/// Open, in the calling thread's namespace `ns`, the route socket, the
/// routes and the marker senders of the switch file that live there.
fn open_in_namespace(spec: &SwitchSpec, ns: Option<&str>) -> Result<NsHandles, SwitchError> {
    let socket = RouteSocket::open().map_err(|e| SwitchError::failed(where_(ns), e))?;
    let mut routes = Vec::new();
    for (is_redirect, list, name) in
        [(true, &spec.redirect, "redirect"), (false, &spec.restore, "restore")]
    {
        for (i, r) in list.iter().enumerate().filter(|(_, r)| r.netns.as_deref() == ns) {
            let route = Route::parse(&r.to, r.via.as_deref(), r.dev.as_deref()).map_err(|e| {
                SwitchError::failed(format!("switch.{name}[{i}] in {}", where_(ns)), e)
            })?;
            routes.push((is_redirect, i, route));
        }
    }
    let mut senders = Vec::new();
    for (i, m) in spec.markers.iter().enumerate().filter(|(_, m)| m.netns.as_deref() == ns) {
        let sender = FrameSender::open(&m.dev).map_err(|e| {
            SwitchError::failed(format!("switch.markers[{i}] in {}", where_(ns)), e)
        })?;
        senders.push((i, sender));
    }
    Ok((socket, routes, senders))
}
