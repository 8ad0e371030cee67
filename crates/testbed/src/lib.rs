//! braid-testbed: hosts as network namespaces joined by veth links.
//!
//! [`up`] builds a [`Topology`] (the CALVIN one by default, see
//! [`topology::calvin`]): one namespace `<prefix><host>` per host, one veth
//! pair per link with its addresses, transmit checksum offload off on every
//! end (a user-space forwarder would otherwise pass on unfinished UDP
//! checksums that the receiver silently drops), optional threaded NAPI,
//! IPv4 forwarding per host, and static routes. [`down`] removes
//! everything the state file lists: daemons, XDP programs, links,
//! namespaces. Hosts marked `daemon: true` get a braidd each
//! ([`daemons`]), started last by `up` and stopped first by `down`.
//!
//! - `up` is idempotent: the same topology already up is left alone; a
//!   partly missing one is torn down and rebuilt; a different one is an
//!   error (run `down` first).
//! - A failed `up` removes everything it created before returning the
//!   error; a namespace that already existed and is not ours makes `up`
//!   fail before it creates anything.

#[allow(unsafe_code)] // setsid before exec, pidfd_open/send_signal, poll, waitid
pub mod daemons;
pub mod deploy;
pub mod kernel;
pub mod state;
pub mod topology;
#[allow(unsafe_code)] // poll, CPU affinity, scheduling policy
mod user;

use braid_io::netns::{self, NetnsError};
use daemons::Stopped;
pub use state::{DevRef, State, StateFileError, DEFAULT_STATE_PATH};
use std::path::{Path, PathBuf};
pub use topology::{calvin, Topology, TopologyError};

/// Where the testbed keeps its state and how it names namespaces.
#[derive(Clone, Debug)]
pub struct Options {
    pub state_path: PathBuf,
    /// Prefix of namespace names; must start with `braid-`.
    pub prefix: String,
}

impl Default for Options {
    fn default() -> Options {
        Options { state_path: PathBuf::from(DEFAULT_STATE_PATH), prefix: "braid-".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(
        "braid testbed needs root to create network namespaces and veth links; run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("namespace {0} already exists and was not created by this testbed; remove it (`ip netns del {0}`) or choose another host name")]
    Conflict(String),
    #[error("testbed {running:?} is already up (state in {path}); run `braid testbed down` first")]
    OtherUp { running: String, path: String },
    #[error("setting up {what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: NetnsError,
    },
    #[error("`down` could not remove everything: {0}")]
    Teardown(String),
    #[error("deploy: {0}")]
    Deploy(String),
    #[error(
        "another `braid deploy` is running on this testbed ({holder}; lock {path}); stop it first"
    )]
    Busy { holder: String, path: String },
    #[error("braidd binary {path}: {why}")]
    Braidd { path: String, why: String },
    #[error("braidd on host {host:?} {why}; the last lines of its log {log}:\n{tail}")]
    DaemonStart { host: String, why: String, log: String, tail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `up` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpOutcome {
    Created,
    AlreadyUp,
    /// A partly missing testbed was removed and built again.
    Rebuilt,
}

fn check_options(opts: &Options) -> Result<(), TestbedError> {
    if !opts.prefix.starts_with("braid-") || opts.prefix.contains(['/', ' ']) {
        return Err(TestbedError::State(format!(
            "namespace prefix {:?} must start with \"braid-\" and contain no '/' or spaces",
            opts.prefix
        )));
    }
    Ok(())
}

/// The namespace name of `host`.
pub fn netns_name(opts: &Options, host: &str) -> String {
    format!("{}{host}", opts.prefix)
}

/// Build `topo` (without daemons: a topology with `daemon: true` hosts
/// needs [`up_with_daemons`]). See the module docs for idempotence and
/// rollback.
pub fn up(topo: &Topology, opts: &Options) -> Result<UpOutcome, TestbedError> {
    up_with_daemons(topo, opts, None)
}

/// Build `topo` and start the braidd binary `braidd` on every host marked
/// `daemon: true`, each answering its API before this returns. A daemon
/// that fails to start fails `up`, which then removes everything, daemons
/// included, like any other failed step.
pub fn up_with_daemons(
    topo: &Topology,
    opts: &Options,
    braidd: Option<&Path>,
) -> Result<UpOutcome, TestbedError> {
    topo.validate()?;
    check_options(opts)?;
    if !netns::is_root() {
        return Err(TestbedError::NotRoot);
    }
    let mut rebuilt = false;
    if let Some(st) = State::load(&opts.state_path).map_err(TestbedError::StateFile)? {
        if st.topology != *topo || st.prefix != opts.prefix {
            return Err(TestbedError::OtherUp {
                running: st.topology.name.clone(),
                path: opts.state_path.display().to_string(),
            });
        }
        let intact = st.complete
            && st.namespaces.iter().all(|n| netns::netns_exists(n))
            && st.links.iter().all(|l| netns::link_exists(Some(&l.netns), &l.dev))
            && st.daemons.iter().all(daemons::DaemonRecord::is_running);
        if intact {
            return Ok(UpOutcome::AlreadyUp);
        }
        teardown(&st, &opts.state_path)?;
        rebuilt = true;
    }
    for h in &topo.hosts {
        let ns = netns_name(opts, &h.name);
        if netns::netns_exists(&ns) {
            return Err(TestbedError::Conflict(ns));
        }
    }
    daemons::check_before_up(topo, opts, braidd)?;
    let mut st = State {
        topology: topo.clone(),
        prefix: opts.prefix.clone(),
        namespaces: vec![],
        links: vec![],
        xdp: vec![],
        forwarding_off: vec![],
        daemons: vec![],
        run_dir: None,
        migrate_key: None,
        complete: false,
    };
    match build(topo, opts, braidd, &mut st) {
        Ok(()) => Ok(if rebuilt { UpOutcome::Rebuilt } else { UpOutcome::Created }),
        Err(e) => {
            // Roll back; report the original error (the teardown error, if
            // any, would only hide it).
            let _ = teardown(&st, &opts.state_path);
            Err(e)
        }
    }
}

fn setup<T>(what: impl FnOnce() -> String, r: Result<T, NetnsError>) -> Result<T, TestbedError> {
    r.map_err(|source| TestbedError::Setup { what: what(), source })
}

fn build(
    topo: &Topology,
    opts: &Options,
    braidd: Option<&Path>,
    st: &mut State,
) -> Result<(), TestbedError> {
    let save = |st: &State| st.save(&opts.state_path).map_err(TestbedError::StateFile);
    save(st)?;
    for h in &topo.hosts {
        let ns = netns_name(opts, &h.name);
        setup(|| format!("namespace {ns}"), netns::ip(None, &["netns", "add", &ns]))?;
        st.namespaces.push(ns.clone());
        save(st)?;
        setup(|| format!("loopback of {ns}"), netns::set_up(Some(&ns), "lo"))?;
        set_forwarding(&ns, h.forwarding)?;
        if !topo.ipv6 {
            for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
            {
                setup(
                    || format!("disabling IPv6 in {ns}"),
                    netns::run(netns::command_in(Some(&ns), "sysctl").args(["-qw", key])),
                )?;
            }
        }
    }
    for (i, l) in topo.links.iter().enumerate() {
        let (ns_a, ns_b) = (netns_name(opts, &l.a.host), netns_name(opts, &l.b.host));
        let (dev_a, dev_b) = (topo.dev_of(l, true), topo.dev_of(l, false));
        let what = || format!("link {i} ({}:{dev_a} - {}:{dev_b})", l.a.host, l.b.host);
        // Created directly inside the namespaces: the names never touch the
        // root namespace, where they could clash with real interfaces.
        setup(
            what,
            netns::ip(
                Some(&ns_a),
                &["link", "add", &dev_a, "type", "veth", "peer", "name", &dev_b, "netns", &ns_b],
            ),
        )?;
        st.links.push(DevRef { netns: ns_a.clone(), dev: dev_a.clone() });
        save(st)?;
        for (ns, dev, end) in [(&ns_a, &dev_a, &l.a), (&ns_b, &dev_b, &l.b)] {
            if let Some(mtu) = l.mtu {
                setup(what, netns::set_mtu(Some(ns), dev, mtu))?;
            }
            setup(what, netns::add_addr(Some(ns), dev, &end.addr))?;
            setup(what, netns::tx_checksum_off(Some(ns), dev))?;
            if l.threaded {
                setup(what, netns::set_threaded_napi(Some(ns), dev, true))?;
            }
            if let Some(shape) = &l.shape {
                // Each end shapes what it sends: both directions, once each.
                for args in shape.tc_commands(dev) {
                    let r = netns::run(netns::command_in(Some(ns), "tc").args(&args)).map(drop);
                    if let Err(e) = &r {
                        if args.iter().any(|a| a == "netem")
                            && e.to_string().contains("qdisc kind is unknown")
                        {
                            return Err(TestbedError::State(format!(
                                "links[{i}].shape: delay, jitter and loss need the kernel's netem qdisc (sch_netem), which this kernel does not have; rate alone works (HTB)"
                            )));
                        }
                    }
                    setup(what, r)?;
                }
            }
            setup(what, netns::set_up(Some(ns), dev))?;
        }
    }
    // Permanent neighbour entries on every link: no ARP on the paths, so
    // no first-packet resolution delay in measurements and no ARP to get
    // through an XDP NF that forwards every frame.
    for (i, l) in topo.links.iter().enumerate() {
        let (ns_a, ns_b) = (netns_name(opts, &l.a.host), netns_name(opts, &l.b.host));
        let (dev_a, dev_b) = (topo.dev_of(l, true), topo.dev_of(l, false));
        let what = || format!("neighbour entries of link {i}");
        let mac_a = setup(what, netns::mac_addr(Some(&ns_a), &dev_a))?;
        let mac_b = setup(what, netns::mac_addr(Some(&ns_b), &dev_b))?;
        let ip = |e: &topology::End| e.addr.split('/').next().unwrap_or_default().to_string();
        setup(what, netns::add_neigh(Some(&ns_a), &dev_a, &ip(&l.b), &mac_b))?;
        setup(what, netns::add_neigh(Some(&ns_b), &dev_b, &ip(&l.a), &mac_a))?;
    }
    for (i, r) in topo.routes.iter().enumerate() {
        let ns = netns_name(opts, &r.host);
        let via = r.via.to_string();
        setup(
            || format!("route {i} ({} to {} via {via})", r.host, r.to),
            netns::add_route(Some(&ns), &r.to, &via),
        )?;
    }
    // Last: the daemons find every interface and route in place.
    if let Some(braidd) = braidd {
        daemons::start_all(topo, opts, braidd, st, &save)?;
    }
    st.complete = true;
    save(st)
}

/// How the daemons of a testbed ended in `down`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonsStopped {
    /// Stopped by SIGTERM (drained).
    pub terminated: usize,
    /// Killed: still running [`daemons::STOP_TIMEOUT`] after SIGTERM.
    pub killed: usize,
    /// Had already exited (crashed or killed before `down`).
    pub already_gone: usize,
}

/// Remove what `st` lists and the state file: daemons first (while their
/// interfaces still exist, so they can undo what they attached). Keeps
/// going past errors and reports them all at the end.
fn teardown(st: &State, state_path: &Path) -> Result<DaemonsStopped, TestbedError> {
    let mut errors = Vec::new();
    let mut stopped = DaemonsStopped::default();
    for d in &st.daemons {
        match daemons::stop(d, daemons::STOP_TIMEOUT) {
            Ok(Stopped::Terminated) => stopped.terminated += 1,
            Ok(Stopped::Killed) => stopped.killed += 1,
            Ok(Stopped::AlreadyGone) => stopped.already_gone += 1,
            Err(e) => errors.push(e),
        }
    }
    for x in &st.xdp {
        if netns::link_exists(Some(&x.netns), &x.dev) {
            if let Err(e) = netns::ip(Some(&x.netns), &["link", "set", "dev", &x.dev, "xdp", "off"])
            {
                // A device that vanished meanwhile took its program with it.
                if netns::link_exists(Some(&x.netns), &x.dev) {
                    errors.push(e.to_string());
                }
            }
        }
    }
    for l in &st.links {
        // Gone already if its namespace went away. The kernel also deletes a
        // veth whose peer's namespace was removed, but asynchronously: a
        // link seen a moment ago may be gone when we delete it. What counts
        // is that it is gone afterwards.
        if netns::netns_exists(&l.netns) && netns::link_exists(Some(&l.netns), &l.dev) {
            if let Err(e) = netns::ip(Some(&l.netns), &["link", "del", "dev", &l.dev]) {
                if netns::link_exists(Some(&l.netns), &l.dev) {
                    errors.push(e.to_string());
                }
            }
        }
    }
    for ns in st.namespaces.iter().rev() {
        if netns::netns_exists(ns) {
            if let Err(e) = netns::ip(None, &["netns", "del", ns]) {
                errors.push(e.to_string());
            }
        }
    }
    daemons::remove_files(st, &mut errors);
    if errors.is_empty() {
        match std::fs::remove_file(state_path) {
            Ok(()) => Ok(stopped),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(stopped),
            Err(e) => {
                Err(TestbedError::State(format!("cannot remove {}: {e}", state_path.display())))
            }
        }
    } else {
        Err(TestbedError::Teardown(errors.join("; ")))
    }
}

/// What `down` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub links: usize,
    pub xdp: usize,
    pub daemons: DaemonsStopped,
}

/// Remove everything the state file lists. No state file: nothing to do.
pub fn down(opts: &Options) -> Result<DownReport, TestbedError> {
    check_options(opts)?;
    let Some(st) = State::load(&opts.state_path).map_err(TestbedError::StateFile)? else {
        return Ok(DownReport::default());
    };
    if !netns::is_root() {
        return Err(TestbedError::NotRoot);
    }
    let daemons = teardown(&st, &opts.state_path)?;
    remove_idle_deploy_lock(opts);
    Ok(DownReport {
        namespaces: st.namespaces.clone(),
        links: st.links.len(),
        xdp: st.xdp.len(),
        daemons,
    })
}

/// The deploy lock file beside the state file (see `deploy`): removed with
/// the testbed unless a deployment still holds it (then it stays, and goes
/// with the next `down`).
fn remove_idle_deploy_lock(opts: &Options) {
    let path = opts.state_path.with_extension("deploy.lock");
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&path) else {
        return;
    };
    // Held by nobody: unlink it while holding it, so a deploy starting
    // now gets a fresh file and its own lock.
    if file.try_lock().is_ok() {
        let _ = std::fs::remove_file(&path);
    }
}

/// The current state, if a testbed is up (or half up).
pub fn status(opts: &Options) -> Result<Option<State>, TestbedError> {
    State::load(&opts.state_path).map_err(TestbedError::StateFile)
}

/// Record that an XDP program was attached to `dev` in `netns`, so `down`
/// detaches it. For deployment code that attaches programs on testbed
/// interfaces.
pub fn record_xdp(opts: &Options, netns: &str, dev: &str) -> Result<(), TestbedError> {
    let mut st =
        State::load(&opts.state_path).map_err(TestbedError::StateFile)?.ok_or_else(|| {
            TestbedError::State(format!("no testbed is up ({} missing)", opts.state_path.display()))
        })?;
    let r = DevRef { netns: netns.into(), dev: dev.into() };
    if !st.xdp.contains(&r) {
        st.xdp.push(r);
        st.save(&opts.state_path).map_err(TestbedError::StateFile)?;
    }
    Ok(())
}

/// Record, before switching it off, that `host`'s Linux forwarding is
/// about to be turned off by a deployment.
pub fn record_forwarding_off(opts: &Options, host: &str) -> Result<(), TestbedError> {
    let mut st =
        State::load(&opts.state_path).map_err(TestbedError::StateFile)?.ok_or_else(|| {
            TestbedError::State(format!("no testbed is up ({} missing)", opts.state_path.display()))
        })?;
    if !st.forwarding_off.iter().any(|h| h == host) {
        st.forwarding_off.push(host.into());
        st.save(&opts.state_path).map_err(TestbedError::StateFile)?;
    }
    Ok(())
}

/// The topology's forwarding setting of `host` (`net.ipv4.ip_forward`).
pub fn declared_forwarding(st: &State, host: &str) -> bool {
    st.topology.hosts.iter().find(|h| h.name == host).is_some_and(|h| h.forwarding)
}

/// Set the declared forwarding back on every host a deployment switched
/// off and did not switch back (it was killed), and forget them. Returns
/// the hosts repaired. Call only while holding the deploy lock.
pub fn repair_forwarding(opts: &Options) -> Result<Vec<String>, TestbedError> {
    let Some(mut st) = State::load(&opts.state_path).map_err(TestbedError::StateFile)? else {
        return Ok(Vec::new());
    };
    let hosts = std::mem::take(&mut st.forwarding_off);
    for host in &hosts {
        let ns = format!("{}{host}", st.prefix);
        set_forwarding(&ns, declared_forwarding(&st, host))?;
    }
    if !hosts.is_empty() {
        st.save(&opts.state_path).map_err(TestbedError::StateFile)?;
    }
    Ok(hosts)
}

/// Forget that `host`'s forwarding is off (it was set back).
pub fn forget_forwarding_off(opts: &Options, host: &str) -> Result<(), TestbedError> {
    let Some(mut st) = State::load(&opts.state_path).map_err(TestbedError::StateFile)? else {
        return Ok(());
    };
    st.forwarding_off.retain(|h| h != host);
    st.save(&opts.state_path).map_err(TestbedError::StateFile)
}

/// `net.ipv4.ip_forward` in namespace `ns`.
pub(crate) fn set_forwarding(ns: &str, on: bool) -> Result<(), TestbedError> {
    let value = if on { "net.ipv4.ip_forward=1" } else { "net.ipv4.ip_forward=0" };
    netns::run(netns::command_in(Some(ns), "sysctl").args(["-qw", value]))
        .map(drop)
        .map_err(|source| TestbedError::Setup { what: format!("forwarding in {ns}"), source })
}

/// Remove XDP attachments from the state file (they were detached).
pub fn forget_xdp(opts: &Options, gone: &[(String, String)]) -> Result<(), TestbedError> {
    let Some(mut st) = State::load(&opts.state_path).map_err(TestbedError::StateFile)? else {
        return Ok(());
    };
    st.xdp.retain(|x| !gone.iter().any(|(ns, dev)| *ns == x.netns && *dev == x.dev));
    st.save(&opts.state_path).map_err(TestbedError::StateFile)
}
