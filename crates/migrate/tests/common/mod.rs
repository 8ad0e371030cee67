//! A host of the migration tests: one Worker running one NF between a
//! client side and a server side, both in-process channels.

#![allow(dead_code)]

use std::thread::JoinHandle;
use std::time::Duration;

use braid_dataplane::{Graph, Worker, WorkerConfig, WorkerHandle, WorkerReport};
use braid_io::channel::{channel_pair, ChannelPort};

pub struct Host {
    pub handle: WorkerHandle,
    pub thread: Option<JoinHandle<WorkerReport>>,
    /// What the test sends from (and receives at) the client side.
    pub client: ChannelPort,
    /// The same on the server side.
    pub server: ChannelPort,
}

/// A worker named `name` running NF `kind` with parameters `yaml`: client
/// side is port 0 (enters stage 0 downstream), server side port 1.
pub fn host(name: &str, kind: &str, yaml: &str) -> Host {
    let nf = braid_nf::build(kind, &serde_yaml_ng::from_str(yaml).unwrap()).unwrap();
    let graph = Graph::chain(vec![("nf".to_string(), nf)], 2, 0, 1).unwrap();
    let entries = [graph.entry(0, 1), graph.entry(1, 0)];
    let mut cfg = WorkerConfig::new(name);
    cfg.tick_interval = Duration::from_millis(5);
    let (mut w, handle) = Worker::new(cfg, graph).unwrap();
    let (client, c_in) = channel_pair(&format!("{name}-client"), 1 << 16);
    let (server, s_in) = channel_pair(&format!("{name}-server"), 1 << 16);
    w.add_port(Box::new(c_in), Some(entries[0])).unwrap();
    w.add_port(Box::new(s_in), Some(entries[1])).unwrap();
    let thread = Some(w.spawn().unwrap());
    Host { handle, thread, client, server }
}

impl Host {
    /// Stop the worker and wait for its report.
    pub fn stop(&mut self) -> WorkerReport {
        self.handle.stop().unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}
