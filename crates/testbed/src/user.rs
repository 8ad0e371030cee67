//! User-space NFs on the testbed: an NF between two AF_PACKET ports on its
//! host's two interfaces, one thread per direction.
//!
//! Each direction has its own NF instance, so only stateless NF kinds are
//! accepted (a stateful NF would need both directions in one instance).
//! Frames leave with the Ethernet addresses rewritten for the next hop,
//! like the XDP NFs. Linux forwarding is switched off on the host while the
//! NF runs (AF_PACKET only copies frames; the kernel would forward them a
//! second time) and restored afterwards.

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::{netns, Port};
use braid_nf::{Context, Counters, Params};
use braid_packet::Batch;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::TestbedError;

/// Counters of one user-space NF, both directions together.
#[derive(Debug, Default)]
pub struct UserCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
}

/// One direction: frames from `rx` go through the NF and out of `tx`.
pub(crate) struct Direction {
    pub ns: String,
    pub rx_dev: String,
    pub tx_dev: String,
    /// New destination and source MAC for frames leaving `tx_dev`.
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// A running user-space NF; stops and joins its threads on drop.
pub(crate) struct UserNf {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    pub counters: Arc<UserCounters>,
    ns: String,
    forwarding_was: String,
}

fn open(ns: &str, dev: &str, batch: usize) -> Result<AfPacketPort, TestbedError> {
    let mut cfg = AfPacketConfig::new(dev);
    cfg.batch_size = batch;
    netns::in_netns(ns, || AfPacketPort::open(&cfg))
        .map_err(|source| TestbedError::Setup {
            what: format!("AF_PACKET port on {ns}:{dev}"),
            source,
        })?
        .map_err(|e| TestbedError::Deploy(format!("AF_PACKET port on {ns}:{dev}: {e}")))
}

fn sysctl_forwarding(ns: &str, value: Option<&str>) -> Result<String, TestbedError> {
    let mut c = netns::command_in(Some(ns), "sysctl");
    match value {
        Some(v) => c.args(["-qw", &format!("net.ipv4.ip_forward={v}")]),
        None => c.args(["-n", "net.ipv4.ip_forward"]),
    };
    let out = netns::run(&mut c)
        .map_err(|source| TestbedError::Setup { what: format!("forwarding in {ns}"), source })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl UserNf {
    /// Start `kind` (with `params`) on the two directions.
    pub(crate) fn start(
        kind: &str,
        params: &Params,
        dirs: [Direction; 2],
        batch: usize,
    ) -> Result<UserNf, TestbedError> {
        let spec = braid_nf::find(kind)
            .ok_or_else(|| TestbedError::Deploy(format!("unknown NF kind {kind:?}")))?;
        if spec.stateful {
            return Err(TestbedError::Deploy(format!(
                "{kind} is stateful; user-space deployment runs one instance per direction and supports stateless NFs only so far"
            )));
        }
        // Build both instances first: a bad parameter fails before any port opens.
        let nfs = [braid_nf::build(kind, params), braid_nf::build(kind, params)];
        let mut built = Vec::new();
        for nf in nfs {
            built.push(nf.map_err(|e| TestbedError::Deploy(format!("{kind}: {e}")))?);
        }
        let ns = dirs[0].ns.clone();
        let forwarding_was = sysctl_forwarding(&ns, None)?;
        sysctl_forwarding(&ns, Some("0"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(UserCounters::default());
        let mut me = UserNf {
            stop: stop.clone(),
            threads: Vec::new(),
            counters: counters.clone(),
            ns,
            forwarding_was,
        };
        for (d, mut nf) in dirs.into_iter().zip(built) {
            let mut rx = open(&d.ns, &d.rx_dev, batch)?;
            let mut tx = open(&d.ns, &d.tx_dev, batch)?;
            let (stop, counters) = (stop.clone(), counters.clone());
            me.threads.push(std::thread::spawn(move || -> Result<(), String> {
                let mut c = Counters::default();
                let mut b = Batch::with_capacity(batch);
                while !stop.load(Ordering::Relaxed) {
                    let n = rx.recv(&mut b, batch).map_err(|e| e.to_string())?;
                    if n == 0 {
                        rx.wait(Duration::from_millis(50)).map_err(|e| e.to_string())?;
                        continue;
                    }
                    counters.rx_packets.fetch_add(n as u64, Ordering::Relaxed);
                    counters.rx_bytes.fetch_add(b.bytes() as u64, Ordering::Relaxed);
                    let before = c.dropped_total();
                    nf.process(&mut b, &mut Context::new(braid_nf::monotonic_ns(), &mut c));
                    counters.dropped.fetch_add(c.dropped_total() - before, Ordering::Relaxed);
                    for p in b.iter_mut() {
                        let f = p.data_mut();
                        if f.len() >= 12 {
                            f[..6].copy_from_slice(&d.dst);
                            f[6..12].copy_from_slice(&d.src);
                        }
                    }
                    let want = b.len() as u64;
                    let sent = tx.send(&mut b).map_err(|e| e.to_string())? as u64;
                    counters.forwarded.fetch_add(sent, Ordering::Relaxed);
                    counters.tx_dropped.fetch_add(want - sent, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        Ok(me)
    }
}

impl Drop for UserNf {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if let Ok(Err(e)) = t.join() {
                eprintln!("braid deploy: NF thread in {} ended with an error: {e}", self.ns);
            }
        }
        let _ = sysctl_forwarding(&self.ns, Some(&self.forwarding_was));
    }
}
