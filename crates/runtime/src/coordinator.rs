//! The static part of SCC's coordinator: the `sched` settings of a chain
//! descriptor (scheduling policy, nice or real-time priority, CPU
//! affinity, batch size, idle policy), resolved for each worker of a plan,
//! checked, and refused when they would starve the machine or cannot be
//! applied, before anything starts.
//!
//! Resolution: the chain-level `sched` applies to every worker (the edge
//! worker of an offline run too); an NF's `sched` overrides it field by
//! field for the worker that runs the NF. NFs that share a worker (one
//! unit) must not ask for different values of a field.
//!
//! Two refusals come before any worker starts:
//! - **starvation**: workers that poll busily at a real-time priority
//!   (`idle: busy` with `fifo`/`rr`) and could occupy every online CPU at
//!   once; then nothing else of normal priority (this command, a shell,
//!   the kernel's worker threads) would run but for the kernel's
//!   real-time throttling;
//! - **privilege**: each distinct setting is applied to a short-lived
//!   probe thread first; if the kernel refuses it (no `CAP_SYS_NICE`, a CPU
//!   outside the allowed set), the run does not start and nothing changed.

use braid_dataplane::{Idle, Sched, SchedError, SchedPolicy};

use crate::descriptor::{ChainDescriptor, PolicyDecl, SchedDecl, MAX_BATCH_SIZE};
use crate::plan::DeploymentSpec;

/// The real-time priority the adaptive mode may raise a sleeping worker
/// to (below the probe's and echo's 50 in the CALVIN scripts).
pub const ADAPT_RT_PRIORITY: i32 = 10;

/// How one worker is to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The worker (unit) name.
    pub name: String,
    pub sched: Sched,
    pub idle: Idle,
    pub batch_size: usize,
    /// Adaptive mode (`sched.adapt`): batch size and idle policy set by
    /// the worker's feedback loop, the batch size above as its upper bound.
    pub adapt: bool,
}

impl WorkerSettings {
    /// The adaptive mode's bounds for these settings (None: off).
    pub fn adapt_config(&self) -> Option<braid_dataplane::AdaptConfig> {
        self.adapt.then(|| braid_dataplane::AdaptConfig {
            max_batch: self.batch_size.max(1),
            // A worker that sleeps between packets may be raised to
            // real time while it does (never when it polls busily, and
            // not over a real-time policy it already has).
            rt_priority: (self.idle != Idle::Busy
                && !matches!(self.sched.policy, SchedPolicy::Fifo(_) | SchedPolicy::Rr(_)))
            .then_some(ADAPT_RT_PRIORITY),
            ..braid_dataplane::AdaptConfig::default()
        })
    }

    /// Polls busily at a real-time priority.
    pub fn real_time_busy(&self) -> bool {
        self.idle == Idle::Busy
            && matches!(self.sched.policy, SchedPolicy::Fifo(_) | SchedPolicy::Rr(_))
    }
}

/// NFs of one worker that ask for different values of a `sched` field.
#[derive(Debug, thiserror::Error)]
#[error(
    "worker `{unit}` runs NFs `{a}` and `{b}`, which ask for different `sched.{field}` ({va} and {vb}); give them the same or run them in separate workers (--mapping threads, run-procs)"
)]
pub struct UnitConflict {
    pub unit: String,
    pub field: &'static str,
    pub a: String,
    pub va: String,
    pub b: String,
    pub vb: String,
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    #[error("{0}")]
    Conflict(Box<UnitConflict>),
    #[error(
        "refusing to start: {} poll busily (`idle: busy`) at a real-time priority and together can occupy every online CPU ({cpus}); nothing of normal priority (this command, a shell, the kernel's own threads) would run on them but for the kernel's real-time throttling. Leave one CPU free of them: `idle: poll` or `sleep`, a non-real-time `policy`, or `cpus` that leave a CPU out",
        .workers.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
    )]
    Starvation { workers: Vec<String>, cpus: String },
    #[error("worker `{worker}`: {source}; nothing was started")]
    Apply {
        worker: String,
        #[source]
        source: SchedError,
    },
}

/// The problems of one `sched` block (as resolved for a worker), each
/// with the field it concerns: what validation reports and what
/// [`to_settings`] refuses. `online` are the CPUs that may be named.
pub fn problems(s: &SchedDecl, online: &[usize]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let policy = s.policy.unwrap_or(PolicyDecl::Other);
    match (policy.is_real_time(), s.priority) {
        (true, None) => out.push((
            "policy",
            format!("policy {policy} needs a real-time `priority` 1..=99"),
        )),
        (true, Some(p)) if !(1..=99).contains(&p) => {
            out.push(("priority", format!("real-time priority {p} is out of range 1..=99")))
        }
        (false, Some(_)) => out.push((
            "priority",
            format!(
                "`priority` is for the real-time policies fifo and rr, and the policy is {policy}; use `nice` for other, batch and idle"
            ),
        )),
        _ => {}
    }
    if let Some(n) = s.nice {
        if policy.is_real_time() {
            out.push(("nice", format!("`nice` does not apply to the real-time policy {policy}")));
        } else if !(-20..=19).contains(&n) {
            out.push(("nice", format!("nice {n} is out of range -20..=19")));
        }
    }
    if let Some(cpus) = &s.cpus {
        if cpus.is_empty() {
            out.push(("cpus", "an empty CPU list; leave `cpus` out to allow any CPU".to_string()));
        }
        for c in cpus {
            if !online.contains(c) {
                out.push((
                    "cpus",
                    format!("CPU {c} is not online on this machine (online: {})", cpu_list(online)),
                ));
            }
        }
    }
    if let Some(us) = s.slice_us {
        use braid_dataplane::sched::{SLICE_US_MAX, SLICE_US_MIN};
        if !(SLICE_US_MIN..=SLICE_US_MAX).contains(&us) {
            out.push((
                "slice_us",
                format!(
                    "slice {us} µs is out of range {SLICE_US_MIN}..={SLICE_US_MAX} (0.1 ms to 100 ms, as the kernel bounds the EEVDF slice)"
                ),
            ));
        }
        if !matches!(policy, PolicyDecl::Other | PolicyDecl::Batch) {
            out.push((
                "slice_us",
                format!("`slice_us` is the EEVDF slice of the policies other and batch, not of {policy}"),
            ));
        }
    }
    if let Some(b) = s.batch_size {
        if !(1..=MAX_BATCH_SIZE).contains(&b) {
            out.push((
                "batch_size",
                format!("batch size {b} is out of range 1..={MAX_BATCH_SIZE}"),
            ));
        }
    }
    out
}

/// The worker settings a resolved `sched` block gives, over the runner's
/// defaults (`idle`, `batch_size`); refused with the first problem.
pub fn to_settings(
    name: &str,
    s: &SchedDecl,
    idle: Idle,
    batch_size: usize,
) -> Result<WorkerSettings, CoordError> {
    if let Some((field, message)) = problems(s, &online_cpus()).into_iter().next() {
        return Err(CoordError::Invalid { at: format!("worker `{name}`: sched.{field}"), message });
    }
    let policy = match (s.policy.unwrap_or(PolicyDecl::Other), s.priority.unwrap_or(0)) {
        (PolicyDecl::Other, _) => SchedPolicy::Other,
        (PolicyDecl::Batch, _) => SchedPolicy::Batch,
        (PolicyDecl::Idle, _) => SchedPolicy::Idle,
        (PolicyDecl::Fifo, p) => SchedPolicy::Fifo(p),
        (PolicyDecl::Rr, p) => SchedPolicy::Rr(p),
    };
    Ok(WorkerSettings {
        name: name.to_string(),
        sched: Sched {
            cpus: s.cpus.clone().unwrap_or_default(),
            policy,
            nice: s.nice,
            slice_us: s.slice_us,
        },
        idle: s.idle.unwrap_or(idle),
        batch_size: s.batch_size.unwrap_or(batch_size),
        adapt: s.adapt.unwrap_or(false),
    })
}

/// Whether the descriptor has any `sched` setting (chain or NF).
pub fn has_settings(d: &ChainDescriptor) -> bool {
    d.sched.as_ref().is_some_and(|s| !s.is_empty())
        || d.nfs.iter().any(|nf| nf.sched.as_ref().is_some_and(|s| !s.is_empty()))
}

/// The refusal for runners that do not apply `sched` (the `thread`
/// mapping runs on the calling thread), instead of ignoring it.
pub fn refuse_unapplied(d: &ChainDescriptor, runner: &str) -> Result<(), CoordError> {
    if has_settings(d) {
        return Err(CoordError::Invalid {
            at: format!("chain `{}`", d.name),
            message: format!(
                "`sched` settings are applied by --mapping threads and run-procs, not by {runner}; use one of those or remove them"
            ),
        });
    }
    Ok(())
}

/// The settings of the edge worker of an offline run (the chain-level
/// `sched` only).
pub fn edge_settings(
    d: &ChainDescriptor,
    name: &str,
    idle: Idle,
) -> Result<WorkerSettings, CoordError> {
    to_settings(name, &d.sched.clone().unwrap_or_default(), idle, d.batch_size)
}

/// The `sched` block resolved for the worker running `unit_nfs` (indices
/// into `d.nfs`): the chain's, overridden by what the unit's NFs set;
/// refused if two of them set a field differently.
pub fn unit_decl(
    d: &ChainDescriptor,
    unit: &str,
    unit_nfs: &[usize],
) -> Result<SchedDecl, CoordError> {
    let mut merged = SchedDecl::default();
    // Which NF set each field first, for the conflict message.
    let mut setter: [Option<usize>; 8] = [None; 8];
    for &i in unit_nfs {
        let Some(s) = d.nfs.get(i).and_then(|nf| nf.sched.as_ref()) else { continue };
        let fields: [(&'static str, Option<String>, Option<String>); 8] = [
            ("policy", s.policy.map(|p| p.to_string()), merged.policy.map(|p| p.to_string())),
            ("priority", s.priority.map(|p| p.to_string()), merged.priority.map(|p| p.to_string())),
            ("nice", s.nice.map(|p| p.to_string()), merged.nice.map(|p| p.to_string())),
            (
                "cpus",
                s.cpus.as_ref().map(|c| format!("{c:?}")),
                merged.cpus.as_ref().map(|c| format!("{c:?}")),
            ),
            (
                "batch_size",
                s.batch_size.map(|p| p.to_string()),
                merged.batch_size.map(|p| p.to_string()),
            ),
            (
                "idle",
                s.idle.map(|p| format!("{p:?}").to_lowercase()),
                merged.idle.map(|p| format!("{p:?}").to_lowercase()),
            ),
            ("adapt", s.adapt.map(|p| p.to_string()), merged.adapt.map(|p| p.to_string())),
            ("slice_us", s.slice_us.map(|p| p.to_string()), merged.slice_us.map(|p| p.to_string())),
        ];
        for (k, (field, new, old)) in fields.into_iter().enumerate() {
            match (new, old, setter[k]) {
                (Some(n), Some(o), Some(first)) if n != o => {
                    return Err(CoordError::Conflict(Box::new(UnitConflict {
                        unit: unit.to_string(),
                        field,
                        a: d.nfs[first].name.clone(),
                        va: o,
                        b: d.nfs[i].name.clone(),
                        vb: n,
                    })))
                }
                (Some(_), None, _) => setter[k] = Some(i),
                _ => {}
            }
        }
        merged = merged.overridden_by(s);
    }
    Ok(d.sched.clone().unwrap_or_default().overridden_by(&merged))
}

/// The settings of every worker of `spec` (one per unit, in order).
pub fn unit_settings(
    d: &ChainDescriptor,
    spec: &DeploymentSpec,
    idle: Idle,
) -> Result<Vec<WorkerSettings>, CoordError> {
    spec.units
        .iter()
        .map(|u| to_settings(&u.name, &unit_decl(d, &u.name, &u.nfs)?, idle, d.batch_size))
        .collect()
}

/// Worker `k`'s settings among `own` (every worker of one chain, as
/// [`crate::live::worker_settings`] or the processes mapping resolves
/// them after a live `sched` change), refused if together with `others`
/// (the host's other workers) they could starve the machine.
pub fn live_change(
    own: Vec<WorkerSettings>,
    k: usize,
    others: &[WorkerSettings],
) -> Result<WorkerSettings, CoordError> {
    let settings = own[k].clone();
    let mut all = others.to_vec();
    all.extend(own);
    check_starvation(&all, &online_cpus())?;
    Ok(settings)
}

/// Refuse workers that poll busily at a real-time priority and could hold
/// every CPU of `online` at once (a matching of such workers to distinct
/// CPUs they may use covers every CPU).
pub fn check_starvation(workers: &[WorkerSettings], online: &[usize]) -> Result<(), CoordError> {
    let rt: Vec<&WorkerSettings> = workers.iter().filter(|w| w.real_time_busy()).collect();
    if rt.is_empty() || online.is_empty() {
        return Ok(());
    }
    let allowed: Vec<Vec<usize>> = rt
        .iter()
        .map(|w| {
            let cpus = if w.sched.cpus.is_empty() { online } else { &w.sched.cpus[..] };
            online.iter().enumerate().filter(|(_, c)| cpus.contains(c)).map(|(k, _)| k).collect()
        })
        .collect();
    // Maximum bipartite matching, workers to CPU slots (augmenting paths;
    // a handful of workers and CPUs).
    let mut owner: Vec<Option<usize>> = vec![None; online.len()];
    fn augment(
        w: usize,
        allowed: &[Vec<usize>],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for &c in &allowed[w] {
            if seen[c] {
                continue;
            }
            seen[c] = true;
            if owner[c].is_none_or(|o| augment(o, allowed, owner, seen)) {
                owner[c] = Some(w);
                return true;
            }
        }
        false
    }
    let mut matched = 0;
    for w in 0..rt.len() {
        if augment(w, &allowed, &mut owner, &mut vec![false; online.len()]) {
            matched += 1;
        }
    }
    if matched == online.len() {
        return Err(CoordError::Starvation {
            workers: rt.iter().map(|w| w.name.clone()).collect(),
            cpus: cpu_list(online),
        });
    }
    Ok(())
}

/// Apply each distinct scheduling setting to a short-lived thread: the
/// kernel's answer, before any worker starts. The probe threads end at
/// once, so nothing stays changed.
pub fn preflight(workers: &[WorkerSettings]) -> Result<(), CoordError> {
    let mut tried: Vec<&Sched> = Vec::new();
    for w in workers {
        if w.sched == Sched::default() || tried.contains(&&w.sched) {
            continue;
        }
        tried.push(&w.sched);
        let sched = w.sched.clone();
        let outcome = std::thread::Builder::new()
            .name("braid-sched-probe".into())
            .spawn(move || sched.apply_to_current_thread())
            .map_err(|e| CoordError::Apply {
                worker: w.name.clone(),
                source: SchedError::Os { what: "starting a probe thread".into(), source: e },
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(SchedError::Os {
                    what: "probe thread".into(),
                    source: std::io::Error::other("panicked"),
                })
            });
        outcome.map_err(|source| CoordError::Apply { worker: w.name.clone(), source })?;
    }
    Ok(())
}

/// Resolve, refuse starvation, and try every setting: what a runner calls
/// before it starts its workers (`edge` first, if any, then the units).
pub fn prepare(workers: &[WorkerSettings]) -> Result<(), CoordError> {
    check_starvation(workers, &online_cpus())?;
    preflight(workers)
}

/// The online CPUs (`/sys/devices/system/cpu/online`); when that cannot be
/// read, 0..available_parallelism.
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(t.trim()))
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        })
}

/// `0-3,6,8-9` → [0, 1, 2, 3, 6, 8, 9].
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// [0, 1, 2, 5] → `0-2,5`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// The scheduling of the calling thread as the kernel reports it: policy
/// number (`/proc/thread-self/stat` field 41), real-time priority (field
/// 40), nice (field 19) and allowed CPUs (`Cpus_allowed_list` of
/// `/proc/thread-self/status`). For tests and `braid profile`.
pub fn thread_sched(pid: u32, tid: u32) -> std::io::Result<(u32, u32, i32, Vec<usize>)> {
    let dir = format!("/proc/{pid}/task/{tid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let bad = || std::io::Error::other(format!("{dir}/stat: unexpected contents"));
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).copied().ok_or_else(bad);
    let policy = field(41)?.parse().map_err(|_| bad())?;
    let rt_prio = field(40)?.parse().map_err(|_| bad())?;
    let nice = field(19)?.parse().map_err(|_| bad())?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|l| parse_cpu_list(l.trim()))
        .ok_or_else(|| std::io::Error::other(format!("{dir}/status: no Cpus_allowed_list")))?;
    Ok((policy, rt_prio, nice, cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, policy: SchedPolicy, idle: Idle, cpus: &[usize]) -> WorkerSettings {
        WorkerSettings {
            name: name.into(),
            sched: Sched { cpus: cpus.to_vec(), policy, nice: None, slice_us: None },
            idle,
            batch_size: 32,
            adapt: false,
        }
    }

    #[test]
    fn starvation_is_refused_only_when_every_cpu_can_be_taken() {
        let online = [0, 1];
        let rt = SchedPolicy::Fifo(50);
        // One real-time busy worker on two CPUs: one CPU stays free.
        check_starvation(&[w("a", rt, Idle::Busy, &[])], &online).unwrap();
        // Two, anywhere: both CPUs taken.
        let e = check_starvation(
            &[w("a", rt, Idle::Busy, &[]), w("b", SchedPolicy::Rr(10), Idle::Busy, &[])],
            &online,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("refusing to start: `a`, `b` poll busily"), "{e}");
        assert!(e.contains("every online CPU (0-1)"), "{e}");
        // Two pinned to the same CPU: CPU 1 stays free.
        check_starvation(&[w("a", rt, Idle::Busy, &[0]), w("b", rt, Idle::Busy, &[0])], &online)
            .unwrap();
        // Pinned apart: refused.
        assert!(check_starvation(
            &[w("a", rt, Idle::Busy, &[0]), w("b", rt, Idle::Busy, &[1])],
            &online
        )
        .is_err());
        // Real time but sleeping when idle, or busy but not real time: fine.
        check_starvation(
            &[
                w("a", rt, Idle::Poll, &[]),
                w("b", rt, Idle::Sleep, &[]),
                w("c", SchedPolicy::Other, Idle::Busy, &[]),
            ],
            &online,
        )
        .unwrap();
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(cpu_list(&[5, 0, 1, 2]), "0-2,5");
        assert!(!online_cpus().is_empty());
    }

    #[test]
    fn problems_name_their_field() {
        let online = [0, 1];
        let p = |yaml: &str| {
            let s: SchedDecl = serde_yaml_ng::from_str(yaml).unwrap();
            problems(&s, &online)
        };
        assert_eq!(p("{ policy: fifo }")[0].0, "policy");
        assert_eq!(p("{ priority: 5 }")[0].0, "priority");
        assert_eq!(p("{ policy: rr, priority: 100 }")[0].0, "priority");
        assert_eq!(p("{ policy: rr, priority: 1, nice: 1 }")[0].0, "nice");
        assert_eq!(p("{ nice: 20 }")[0].0, "nice");
        assert!(p("{ cpus: [7] }")[0]
            .1
            .contains("CPU 7 is not online on this machine (online: 0-1)"));
        assert_eq!(p("{ cpus: [] }")[0].0, "cpus");
        assert_eq!(p("{ batch_size: 0 }")[0].0, "batch_size");
        assert!(
            p("{ policy: fifo, priority: 99, cpus: [1], idle: busy, batch_size: 1 }").is_empty()
        );
    }

    #[test]
    fn adapt_is_resolved_per_worker_and_bounded_by_the_batch_size() {
        let d = ChainDescriptor::from_yaml(
            "name: a\nbatch_size: 64\nsched: { adapt: true }\nnfs:\n  - { name: x, type: fwd }\n  - { name: y, type: fwd, sched: { adapt: false } }\n",
        )
        .unwrap();
        let x = to_settings("x", &unit_decl(&d, "x", &[0]).unwrap(), Idle::Poll, 64).unwrap();
        let y = to_settings("y", &unit_decl(&d, "y", &[1]).unwrap(), Idle::Poll, 64).unwrap();
        assert!(x.adapt && !y.adapt);
        let cfg = x.adapt_config().unwrap();
        assert_eq!((cfg.min_batch, cfg.max_batch), (1, 64));
        assert!(y.adapt_config().is_none());
        // Two NFs of one worker that disagree are refused, naming the field.
        let e = unit_decl(&d, "both", &[0, 1]);
        assert!(e.is_ok(), "x sets nothing itself: {e:?}");
        let d2 = ChainDescriptor::from_yaml(
            "name: b\nnfs:\n  - { name: x, type: fwd, sched: { adapt: true } }\n  - { name: y, type: fwd, sched: { adapt: false } }\n",
        )
        .unwrap();
        let e = unit_decl(&d2, "both", &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("sched.adapt") && e.contains("true and false"), "{e}");
    }
}
