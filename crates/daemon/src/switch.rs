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

use crate::migration::{RouteSpec, SwitchSpec};

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

/// Run `f` in namespace `ns` (`None`: this thread's own).
fn in_namespace<R: Send>(
    ns: Option<&str>,
    f: impl FnOnce() -> Result<R, SwitchError> + Send,
) -> Result<R, SwitchError> {
    match ns {
        Some(n) => netns::in_netns(n, f).map_err(|e| SwitchError::failed(where_(ns), e))?,
        None => f(),
    }
}

impl PreparedSwitch {
    /// Open what `spec` needs, in the switch file's order: fails, naming
    /// the route or marker, when a namespace, an interface or an address
    /// is not there.
    pub fn open(spec: &SwitchSpec) -> Result<PreparedSwitch, SwitchError> {
        let mut prepared = PreparedSwitch {
            sockets: Vec::new(),
            redirect: Vec::with_capacity(spec.redirect.len()),
            restore: Vec::with_capacity(spec.restore.len()),
            markers: Vec::with_capacity(spec.markers.len()),
        };
        for (i, r) in spec.redirect.iter().enumerate() {
            let ready = prepared.ready_route(r, &format!("switch.redirect[{i}]"))?;
            prepared.redirect.push(ready);
        }
        for (i, r) in spec.restore.iter().enumerate() {
            let ready = prepared.ready_route(r, &format!("switch.restore[{i}]"))?;
            prepared.restore.push(ready);
        }
        for (i, m) in spec.markers.iter().enumerate() {
            let ns = m.netns.as_deref();
            let sender = in_namespace(ns, || {
                FrameSender::open(&m.dev).map_err(|e| {
                    SwitchError::failed(format!("switch.markers[{i}] in {}", where_(ns)), e)
                })
            })?;
            let at = format!("drain marker on {} in {}", m.dev, where_(ns));
            prepared.markers.push(ReadyMarker { sender, at });
        }
        Ok(prepared)
    }

    /// Route `r` parsed in its namespace (its interface looked up there),
    /// with the route socket of that namespace, opened on first use.
    fn ready_route(&mut self, r: &RouteSpec, what: &str) -> Result<ReadyRoute, SwitchError> {
        let ns = r.netns.as_deref();
        let known = self.sockets.iter().position(|(n, _)| n.as_deref() == ns);
        // One entry into the namespace (a thread each) for both.
        let (opened, route) = in_namespace(ns, || {
            let opened = match known {
                Some(_) => None,
                None => Some(RouteSocket::open().map_err(|e| SwitchError::failed(where_(ns), e))?),
            };
            let route = Route::parse(&r.to, r.via.as_deref(), r.dev.as_deref())
                .map_err(|e| SwitchError::failed(format!("{what} in {}", where_(ns)), e))?;
            Ok((opened, route))
        })?;
        // Opened exactly when the namespace had no socket yet.
        if let Some(socket) = opened {
            self.sockets.push((r.netns.clone(), socket));
        }
        let socket = known.unwrap_or(self.sockets.len() - 1);
        Ok(ReadyRoute { socket, route })
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
