//! Operations and events.
//!
//! - Every mutating call (deploy, remove, parameter change) is an
//!   [`Operation`] with an id (`op-N`), a state (`running`, `succeeded`,
//!   `failed`), timestamps and its outcome. A client that asks for it
//!   (`Prefer: respond-async`) gets `202 Accepted` with
//!   `Location: /v1/operations/{id}` at once and follows the operation;
//!   otherwise the call answers when it is done. The last
//!   [`KEEP_OPERATIONS`] operations are kept.
//! - [`Events`] is the daemon's change feed: chains deployed, removed,
//!   reconfigured; chain state changes (a worker that stopped by itself);
//!   operations finished. Each event has a sequence number; the last
//!   [`KEEP_EVENTS`] are kept so that a watcher can resume from the one it
//!   saw last (`GET /v1/events?since=N`) without a gap; a watcher that
//!   falls further behind than the channel holds is told how many it
//!   missed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Operations kept for `GET /v1/operations`.
pub const KEEP_OPERATIONS: usize = 1000;
/// Events kept for watchers that resume.
pub const KEEP_EVENTS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain pushes and field assignments: consistent even after a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One event: its sequence number and its JSON (with `seq`, `time`,
/// `type`).
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: u64,
    pub json: Arc<Value>,
}

struct EventLog {
    next: u64,
    kept: VecDeque<Event>,
}

/// The change feed.
pub struct Events {
    log: Mutex<EventLog>,
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Events {
        let (tx, _) = broadcast::channel(KEEP_EVENTS);
        Events { log: Mutex::new(EventLog { next: 1, kept: VecDeque::new() }), tx }
    }
}

/// What a watcher gets: the kept events after the one it asked for, then
/// live ones.
pub struct Watch {
    pub backlog: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
    /// Events older than `since` that were no longer kept (the watcher
    /// missed them).
    pub missed: u64,
}

impl Events {
    /// Publish an event of `kind` with `fields` (an object); its sequence
    /// number.
    pub fn publish(&self, kind: &str, fields: Value) -> u64 {
        let mut log = lock(&self.log);
        let seq = log.next;
        log.next += 1;
        let mut v = json!({ "seq": seq, "time": now(), "type": kind });
        if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
            o.extend(f);
        }
        let e = Event { seq, json: Arc::new(v) };
        if log.kept.len() == KEEP_EVENTS {
            log.kept.pop_front();
        }
        log.kept.push_back(e.clone());
        // Under the lock: live order equals sequence order, and a watcher
        // subscribing under the same lock sees no gap. No receiver: fine.
        let _ = self.tx.send(e);
        seq
    }

    /// The last sequence number given (0: none yet).
    pub fn last(&self) -> u64 {
        lock(&self.log).next - 1
    }

    /// Watch events after `since` (None: only new ones).
    pub fn watch(&self, since: Option<u64>) -> Watch {
        let log = lock(&self.log);
        let live = self.tx.subscribe();
        let Some(since) = since else { return Watch { backlog: Vec::new(), live, missed: 0 } };
        let backlog: Vec<Event> = log.kept.iter().filter(|e| e.seq > since).cloned().collect();
        let first_kept = log.kept.front().map_or(log.next, |e| e.seq);
        let missed = first_kept.saturating_sub(since + 1);
        Watch { backlog, live, missed }
    }
}

/// An operation's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
}

/// A mutating call and its outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Operation {
    pub id: String,
    /// `deploy`, `remove`, `reconfigure`, `reschedule`, `migrate`,
    /// `migrate-in`, `scale-out`, `scale-in`.
    pub kind: &'static str,
    pub chain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nf: Option<String>,
    pub state: OpState,
    pub created: f64,
    pub finished: Option<f64>,
    /// The HTTP status the call had (or will have) when answered
    /// synchronously.
    pub status: Option<u16>,
    /// What a synchronous call would have answered: the chain, or the
    /// removal's final counters.
    pub result: Option<Value>,
    /// Why it failed: `{error, message, problems}` as the API's errors.
    pub error: Option<Value>,
    /// What it has done so far (a migration's phase and bytes sent; a
    /// scale's `steps`), kept when it ends; absent for operations that
    /// report none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
}

/// (kind, outcome) of finished operations.
pub type OpTotal = (&'static str, &'static str);

/// The operations.
#[derive(Default)]
pub struct Operations {
    kept: Mutex<(u64, VecDeque<Operation>)>,
    /// Finished operations by (kind, state), since the daemon started.
    totals: Mutex<std::collections::BTreeMap<OpTotal, u64>>,
    /// NFs whose state an operation is moving (or waits to move), with
    /// its kind: a second one is refused instead of queued behind it.
    claims: Mutex<std::collections::BTreeMap<(String, String), &'static str>>,
}

/// An NF claimed by [`Operations::claim`]; free again when dropped.
pub struct Claim {
    operations: Arc<Operations>,
    key: (String, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.operations.claims).remove(&self.key);
    }
}

impl Operations {
    /// Start an operation; its id.
    pub fn begin(&self, kind: &'static str, chain: &str, nf: Option<&str>) -> String {
        let mut k = lock(&self.kept);
        k.0 += 1;
        let id = format!("op-{}", k.0);
        if k.1.len() == KEEP_OPERATIONS {
            k.1.pop_front();
        }
        k.1.push_back(Operation {
            id: id.clone(),
            kind,
            chain: chain.to_string(),
            nf: nf.map(str::to_string),
            state: OpState::Running,
            created: now(),
            finished: None,
            status: None,
            result: None,
            error: None,
            progress: None,
        });
        id
    }

    /// Set `fields` (an object) in operation `id`'s progress, keeping
    /// the fields they do not name (a migration's phase beside a scale's
    /// steps).
    pub fn merge_progress(&self, id: &str, fields: Value) {
        if let Some(op) = lock(&self.kept).1.iter_mut().find(|o| o.id == id) {
            let progress = op.progress.get_or_insert_with(|| json!({}));
            if let (Some(p), Value::Object(f)) = (progress.as_object_mut(), fields) {
                p.extend(f);
            }
        }
    }

    /// Append `step` to operation `id`'s `progress.steps`: what a
    /// multi-step operation (a scale, a steering switch) has done, in
    /// order, kept after it finishes.
    pub fn add_step(&self, id: &str, step: Value) {
        if let Some(op) = lock(&self.kept).1.iter_mut().find(|o| o.id == id) {
            let progress = op.progress.get_or_insert_with(|| json!({}));
            if let Some(p) = progress.as_object_mut() {
                if let Some(steps) = p.entry("steps").or_insert_with(|| json!([])).as_array_mut() {
                    steps.push(step);
                }
            }
        }
    }

    /// Claim NF `nf` of chain `chain` for an operation of `kind` that
    /// moves its state (`migrate`, `scale-out`, `scale-in`) until the
    /// claim is dropped; the kind holding it if another one does.
    pub fn claim(
        self: &Arc<Self>,
        kind: &'static str,
        chain: &str,
        nf: &str,
    ) -> Result<Claim, &'static str> {
        let key = (chain.to_string(), nf.to_string());
        let mut claims = lock(&self.claims);
        if let Some(holder) = claims.get(&key) {
            return Err(holder);
        }
        claims.insert(key.clone(), kind);
        Ok(Claim { operations: self.clone(), key })
    }

    /// Record how operation `id` ended; the finished operation.
    pub fn finish(
        &self,
        id: &str,
        status: u16,
        outcome: Result<Value, Value>,
    ) -> Option<Operation> {
        let mut k = lock(&self.kept);
        let op = k.1.iter_mut().find(|o| o.id == id)?;
        op.finished = Some(now());
        op.status = Some(status);
        let outcome_name = if outcome.is_ok() { "succeeded" } else { "failed" };
        *lock(&self.totals).entry((op.kind, outcome_name)).or_default() += 1;
        match outcome {
            Ok(v) => {
                op.state = OpState::Succeeded;
                op.result = Some(v);
            }
            Err(e) => {
                op.state = OpState::Failed;
                op.error = Some(e);
            }
        }
        Some(op.clone())
    }

    /// Operation `id`.
    pub fn get(&self, id: &str) -> Option<Operation> {
        lock(&self.kept).1.iter().find(|o| o.id == id).cloned()
    }

    /// Every kept operation, oldest first.
    pub fn list(&self) -> Vec<Operation> {
        lock(&self.kept).1.iter().cloned().collect()
    }

    /// Finished operations by (kind, `succeeded`/`failed`), and how many
    /// run now, for `/metrics`.
    pub fn counts(&self) -> (Vec<(OpTotal, u64)>, u64) {
        let totals = lock(&self.totals).iter().map(|(k, v)| (*k, *v)).collect();
        let running =
            lock(&self.kept).1.iter().filter(|o| o.state == OpState::Running).count() as u64;
        (totals, running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_resumes_after_the_event_it_saw_without_a_gap() {
        let ev = Events::default();
        for i in 0..5 {
            ev.publish("x", json!({ "i": i }));
        }
        let mut w = ev.watch(Some(2));
        assert_eq!(w.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(w.missed, 0);
        ev.publish("y", json!({}));
        let e = w.live.try_recv().unwrap();
        assert_eq!((e.seq, e.json["type"].as_str()), (6, Some("y")));
        assert_eq!(ev.last(), 6);
        // Events that were no longer kept are counted as missed.
        for _ in 0..KEEP_EVENTS {
            ev.publish("z", json!({}));
        }
        let w = ev.watch(Some(1));
        assert_eq!(w.backlog.len(), KEEP_EVENTS);
        assert_eq!(w.missed, 5, "events 2..=6 are gone");
    }

    #[test]
    fn operations_record_their_outcome_and_are_bounded() {
        let ops = Operations::default();
        let a = ops.begin("deploy", "c", None);
        let b = ops.begin("reconfigure", "c", Some("fw"));
        assert_eq!(ops.get(&a).unwrap().state, OpState::Running);
        ops.finish(&a, 201, Ok(json!({"name": "c"}))).unwrap();
        ops.finish(&b, 400, Err(json!({"error": "invalid_descriptor"}))).unwrap();
        let (a, b) = (ops.get(&a).unwrap(), ops.get(&b).unwrap());
        assert_eq!((a.state, a.status), (OpState::Succeeded, Some(201)));
        assert_eq!((b.state, b.nf.as_deref()), (OpState::Failed, Some("fw")));
        assert!(ops.finish("op-999", 200, Ok(Value::Null)).is_none());
        for _ in 0..KEEP_OPERATIONS {
            ops.begin("remove", "c", None);
        }
        assert_eq!(ops.list().len(), KEEP_OPERATIONS);
        assert!(ops.get("op-1").is_none());
        let (totals, running) = ops.counts();
        assert_eq!(totals, vec![(("deploy", "succeeded"), 1), (("reconfigure", "failed"), 1)]);
        assert_eq!(running, KEEP_OPERATIONS as u64);
    }

    #[test]
    fn an_nf_is_claimed_by_one_operation_at_a_time_and_steps_keep_beside_progress() {
        let ops = Arc::new(Operations::default());
        let first = ops.claim("scale-out", "c", "fw").unwrap();
        assert_eq!(ops.claim("migrate", "c", "fw").err(), Some("scale-out"));
        // Another NF, or the same name in another chain, is free.
        let other = ops.claim("migrate", "c", "nat").unwrap();
        let _third = ops.claim("migrate", "d", "fw").unwrap();
        drop(first);
        assert!(ops.claim("migrate", "c", "fw").is_ok(), "free again once dropped");
        drop(other);

        let id = ops.begin("scale-out", "c", Some("fw"));
        ops.add_step(&id, json!({ "step": "check_steering" }));
        ops.merge_progress(&id, json!({ "phase": "snapshot", "state_bytes": 10 }));
        ops.add_step(&id, json!({ "step": "migrate" }));
        ops.merge_progress(&id, json!({ "phase": "done", "state_bytes": 20 }));
        let p = ops.get(&id).unwrap().progress.unwrap();
        assert_eq!(p["steps"], json!([{ "step": "check_steering" }, { "step": "migrate" }]));
        assert_eq!((p["phase"].as_str(), p["state_bytes"].as_u64()), (Some("done"), Some(20)));
        ops.finish(&id, 200, Ok(json!({}))).unwrap();
        assert_eq!(ops.get(&id).unwrap().progress.unwrap()["steps"].as_array().unwrap().len(), 2);
    }
}
