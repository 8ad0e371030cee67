//! The descriptor's `sched` settings: applied to the worker threads of
//! `run --mapping threads` (read back from /proc while they run), refused
//! before anything starts when they would starve the machine or when NFs
//! sharing a worker disagree.

use std::time::{Duration, Instant};

use braid_dataplane::WorkerWatch;
use braid_io::channel::channel_pair;
use braid_io::memory::MemoryPort;
use braid_runtime::coordinator::{online_cpus, thread_sched};
use braid_runtime::plan::Mapping;
use braid_runtime::runner::{run_threads, RunError};
use braid_runtime::validate::validate_str;

fn descriptor(yaml: &str) -> braid_runtime::ChainDescriptor {
    let r = validate_str("t.yaml", yaml);
    assert!(r.is_ok(), "{:?}", r.problems);
    r.descriptor.unwrap()
}

#[test]
fn per_nf_settings_are_applied_to_their_worker_threads() {
    let cpus = online_cpus();
    let last = *cpus.last().unwrap();
    let d = descriptor(&format!(
        "name: s\nsched: {{ nice: 3 }}\nnfs:\n  - {{ name: a, type: fwd, sched: {{ nice: 7, cpus: [{last}], batch_size: 4, idle: sleep }} }}\n  - {{ name: b, type: fwd }}\n"
    ));
    // An input that stays open until `feed` is dropped.
    let (input, feed) = channel_pair("feed", 64);
    let (tx, rx) = std::sync::mpsc::channel();
    let run = std::thread::spawn(move || {
        // A watch sees the workers built on its own thread.
        let watch = WorkerWatch::new();
        tx.send(watch.clone()).unwrap();
        run_threads(&d, Mapping::Threads, Box::new(input), Box::new(MemoryPort::sink("out")))
    });
    let seen = rx.recv().unwrap();
    // Wait until the edge and both NF workers run (each has its tid).
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers = loop {
        let w = seen.workers();
        if w.len() == 3 && w.iter().all(|t| t.os().tid().is_some()) {
            break w;
        }
        assert!(Instant::now() < deadline, "workers did not start");
        std::thread::sleep(Duration::from_millis(5));
    };
    let pid = std::process::id();
    let read = |i: usize| thread_sched(pid, workers[i].os().tid().unwrap()).unwrap();
    // (policy, rt priority, nice, cpus): edge and b take the chain's nice.
    let (policy, rt, nice, allowed) = read(0);
    assert_eq!((policy, rt, nice), (0, 0, 3), "edge {}", workers[0].name);
    assert_eq!(allowed, cpus);
    let (policy, rt, nice, allowed) = read(1);
    assert_eq!((policy, rt, nice, allowed), (0, 0, 7, vec![last]), "nf a");
    let (_, _, nice, allowed) = read(2);
    assert_eq!((nice, allowed), (3, cpus.clone()), "nf b");
    drop(feed);
    let report = run.join().unwrap().unwrap();
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[test]
fn real_time_busy_polling_on_every_cpu_is_refused_before_anything_starts() {
    // One NF per online CPU, each pinned to its own: together they hold
    // every CPU.
    let cpus = online_cpus();
    let nfs: String = cpus
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "  - {{ name: n{i}, type: fwd, sched: {{ policy: fifo, priority: 10, idle: busy, cpus: [{c}] }} }}\n"
            )
        })
        .collect();
    let d = descriptor(&format!("name: s\nnfs:\n{nfs}"));
    let watch = WorkerWatch::new();
    let (input, _feed) = channel_pair("feed", 4);
    let e = run_threads(&d, Mapping::Threads, Box::new(input), Box::new(MemoryPort::sink("o")))
        .unwrap_err();
    assert!(matches!(e, RunError::Coordinator(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("refusing to start: `host0/p0/t0`"), "{msg}");
    assert!(msg.contains("can occupy every online CPU"), "{msg}");
    assert!(watch.workers().is_empty(), "no worker was even built");
    // The same NFs sleeping when idle are fine to start (not run here: the
    // check alone).
    let ok = descriptor(&format!("name: s\nnfs:\n{}", nfs.replace("idle: busy", "idle: poll")));
    let spec = braid_runtime::runner::offline_spec(&ok, Mapping::Threads).unwrap();
    let sets =
        braid_runtime::coordinator::unit_settings(&ok, &spec, braid_dataplane::Idle::Poll).unwrap();
    braid_runtime::coordinator::check_starvation(&sets, &cpus).unwrap();
}

#[test]
fn nfs_sharing_a_worker_must_agree() {
    let d = descriptor(
        "name: s\nnfs:\n  - { name: a, type: fwd, sched: { nice: 1 } }\n  - { name: b, type: fwd, sched: { nice: 2, idle: busy } }\n",
    );
    let (input, _feed) = channel_pair("feed", 4);
    let e = run_threads(&d, Mapping::Thread, Box::new(input), Box::new(MemoryPort::sink("o")))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "worker `host0/p0/t0` runs NFs `a` and `b`, which ask for different `sched.nice` (1 and 2); give them the same or run them in separate workers (--mapping threads, run-procs)"
    );
}
