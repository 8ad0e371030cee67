//! `braid scale out|in`: add or remove an instance of a per-flow NF
//! behind `steer` NFs, moving only the flows of some hash buckets, with
//! their state (docs/migration.md, "Scale out and in"). Client side: each
//! step is a call to a braidd.
//!
//! - **out**: the braidd running the instance (this client's) migrates
//!   share `k` of `n` of the hash space (`share:k/n`, whole buckets of the
//!   steering tables) to the braidd at `to`, which deploys the chain empty
//!   if it does not run it; at the switch each steering NF moves those
//!   buckets from the source's instance to the new one and closes the old
//!   path with a drain marker. The source keeps the other flows and drops
//!   the moved ones after the destination's Done.
//! - **in**: the instance behind this client gives every bucket it owns
//!   (read from the first steering NF's table; one contiguous range) to
//!   the instance at `to`, which merges them with its own flows; then its
//!   chain is removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::migration::Invalid;

/// Why a scale step failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The request does not make sense; nothing was done.
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The migration failed (and was rolled back: the source keeps
    /// serving every flow it had).
    #[error("the migration of NF `{nf}` of chain `{chain}` failed ({operation}): {message}")]
    Migration { chain: String, nf: String, operation: String, message: String },
    /// The migration succeeded, the instance could not be removed.
    #[error("the flows moved, but removing chain `{chain}` failed: {source}")]
    Remove {
        chain: String,
        #[source]
        source: ClientError,
    },
}

/// One `steer` NF in front of the instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteerPoint {
    /// The API socket of the braidd running it (None: this client's).
    pub socket: Option<PathBuf>,
    pub chain: String,
    pub nf: String,
    /// The source chain's port its traffic (and drain marker) enters:
    /// `in` or `out`.
    pub port: String,
}

impl std::str::FromStr for SteerPoint {
    type Err = Invalid;

    /// `CHAIN/NF:PORT[@SOCKET]`, e.g. `su/st:in@/run/braid/steer.sock`.
    fn from_str(s: &str) -> Result<SteerPoint, Invalid> {
        let bad = |why: &str| {
            Invalid::new(
                format!("steering point `{}`", s.escape_debug()),
                format!("{why}; expected CHAIN/NF:PORT[@SOCKET], PORT in or out (e.g. su/st:in@/run/braid/steer.sock)"),
            )
        };
        let (rest, socket) = match s.split_once('@') {
            Some((r, sock)) if !sock.is_empty() => (r, Some(PathBuf::from(sock))),
            Some(_) => return Err(bad("empty socket after `@`")),
            None => (s, None),
        };
        let (cn, port) = rest.rsplit_once(':').ok_or_else(|| bad("no `:PORT`"))?;
        if port != "in" && port != "out" {
            return Err(bad("PORT is not `in` or `out`"));
        }
        let (chain, nf) = cn.split_once('/').ok_or_else(|| bad("no `/` between CHAIN and NF"))?;
        if chain.is_empty() || nf.is_empty() {
            return Err(bad("empty CHAIN or NF"));
        }
        Ok(SteerPoint { socket, chain: chain.into(), nf: nf.into(), port: port.into() })
    }
}

/// What both directions share.
#[derive(Clone, Debug)]
pub struct ScaleRequest {
    /// The chain and NF of the instance this client's braidd runs.
    pub chain: String,
    pub nf: String,
    /// The other instance's braidd migration listener, HOST[:PORT].
    pub to: String,
    /// The steering NFs (usually two: client side `in`, server side `out`).
    pub steer: Vec<SteerPoint>,
    /// The steering tables' instance index of this client's instance and
    /// of the other one.
    pub here: u16,
    pub there: u16,
    /// Scale out: deploy the chain at `to` (empty) on these interfaces
    /// (IN, OUT) if it does not run there.
    pub deploy: Option<(String, String)>,
    /// How long any answer of the other side may take.
    pub timeout: Duration,
}

impl ScaleRequest {
    fn check(&self) -> Result<(), ScaleError> {
        if self.steer.is_empty() {
            return Err(ScaleError::Request(
                "no steering point (--steer CHAIN/NF:PORT[@SOCKET]): scaling moves hash buckets on `steer` NFs".into(),
            ));
        }
        if self.here == self.there {
            return Err(ScaleError::Request(format!(
                "both instances are {} in the steering tables: name two different ones",
                self.here
            )));
        }
        Ok(())
    }

    /// The migration's switch: the steering points, each with the API
    /// socket of its braidd (this client's when not given; the steering
    /// switch speaks to unix sockets only).
    fn switch(&self, own: &Client) -> Result<Value, ScaleError> {
        let mut steer = Vec::with_capacity(self.steer.len());
        for s in &self.steer {
            let socket = match &s.socket {
                Some(p) => p.display().to_string(),
                None if own.at().starts_with('/') => own.at(),
                None => {
                    return Err(ScaleError::Request(format!(
                        "steering point `{}/{}`: name its braidd's unix socket (`@SOCKET`): this client talks to {}",
                        s.chain,
                        s.nf,
                        own.at()
                    )))
                }
            };
            steer.push(json!({ "socket": socket, "chain": s.chain, "nf": s.nf,
                               "from": self.here, "to": self.there, "port": s.port }));
        }
        Ok(json!({ "redirect": [], "restore": [], "markers": [], "steer": steer }))
    }
}

/// Move share `k` of `n` of the hash space from this client's instance to
/// a new one at `req.to` (deployed empty there if needed). The migration's
/// summary, with `flows`. `progress` gets the operation's progress while
/// it runs.
pub fn scale_out(
    client: &Client,
    req: &ScaleRequest,
    (k, n): (u64, u64),
    progress: impl FnMut(&Value),
) -> Result<Value, ScaleError> {
    req.check()?;
    if n < 2 || k >= n {
        return Err(ScaleError::Request(format!(
            "share {k}/{n}: need N >= 2 and 0 <= K < N (share K of N equal hash ranges moves)"
        )));
    }
    let flows = format!("share:{k}/{n}");
    let mut body = json!({ "to": req.to, "mode": "statelet", "flows": flows,
                           "switch": req.switch(client)?,
                           "timeout_ms": req.timeout.as_millis() as u64 });
    if let Some((i, o)) = &req.deploy {
        body["deploy"] = json!({ "in": i, "out": o });
    }
    migrate(client, req, &body, progress)
}

/// Give every bucket this client's instance owns to the instance at
/// `req.to` (which merges them with its own flows), then remove this
/// client's chain. The migration's summary, with `flows` and `removed`.
pub fn scale_in(
    client: &Client,
    req: &ScaleRequest,
    progress: impl FnMut(&Value),
) -> Result<Value, ScaleError> {
    req.check()?;
    let mut owned: Option<(usize, usize, u32)> = None;
    for s in &req.steer {
        let c = match &s.socket {
            Some(p) => Client::new(p),
            None => client.clone(),
        };
        let range = owned_buckets(&c, s, req.here)?;
        match owned {
            Some(o) if o != range => {
                return Err(ScaleError::Request(format!(
                    "the steering tables disagree: instance {} owns buckets {}-{} of {} at `{}/{}`, {}-{} of {} at the first",
                    req.here, range.0, range.1, range.2, s.chain, s.nf, o.0, o.1, o.2
                )))
            }
            _ => owned = Some(range),
        }
    }
    let (lo, hi, buckets) = owned.ok_or_else(|| ScaleError::Request("no steering point".into()))?;
    let first = braid_nf::HashRange::share(lo as u64, u64::from(buckets)).first;
    let last = braid_nf::HashRange::share(hi as u64, u64::from(buckets)).last;
    let flows = format!("hash:{first:x}-{last:x}");
    let body = json!({ "to": req.to, "mode": "statelet", "flows": flows,
                       "switch": req.switch(client)?,
                       "timeout_ms": req.timeout.as_millis() as u64 });
    let mut summary = migrate(client, req, &body, progress)?;
    client
        .remove(&req.chain)
        .map_err(|source| ScaleError::Remove { chain: req.chain.clone(), source })?;
    summary["removed"] = json!(req.chain);
    summary["buckets"] = json!([lo, hi]);
    Ok(summary)
}

/// The buckets instance `instance` owns on steering NF `s`: one
/// contiguous range `(first, last, buckets)`.
fn owned_buckets(
    c: &Client,
    s: &SteerPoint,
    instance: u16,
) -> Result<(usize, usize, u32), ScaleError> {
    let chain = c.chain(&s.chain)?;
    let nfs = chain["descriptor"]["nfs"].as_array().cloned().unwrap_or_default();
    let Some(decl) = nfs.iter().find(|d| d["name"] == s.nf.as_str()) else {
        return Err(ScaleError::Request(format!("chain `{}` has no NF `{}`", s.chain, s.nf)));
    };
    let params: braid_nf::Params = serde_json::from_value(decl["params"].clone())
        .map_err(|e| ScaleError::Request(format!("`{}/{}`: parameters: {e}", s.chain, s.nf)))?;
    let cfg: braid_nf::steer::Config = braid_nf::params::parse(&params).map_err(|e| {
        ScaleError::Request(format!("`{}/{}` is not a steer NF: {e}", s.chain, s.nf))
    })?;
    let table = cfg.table.unwrap_or_else(|| vec![0; cfg.buckets as usize]);
    let mine: Vec<usize> = (0..table.len()).filter(|b| table[*b] == instance).collect();
    let (Some(&lo), Some(&hi)) = (mine.first(), mine.last()) else {
        return Err(ScaleError::Request(format!(
            "instance {instance} owns no bucket at `{}/{}`: nothing to merge",
            s.chain, s.nf
        )));
    };
    if hi - lo + 1 != mine.len() {
        return Err(ScaleError::Request(format!(
            "instance {instance}'s buckets at `{}/{}` are not one contiguous range ({} buckets between {lo} and {hi})",
            s.chain,
            s.nf,
            mine.len()
        )));
    }
    Ok((lo, hi, cfg.buckets))
}

/// Run the migration as an operation of this client's braidd and follow
/// it to its end.
fn migrate(
    client: &Client,
    req: &ScaleRequest,
    body: &Value,
    mut progress: impl FnMut(&Value),
) -> Result<Value, ScaleError> {
    let id = client.migrate_async(&req.chain, &req.nf, body)?;
    let t = Instant::now();
    let op = loop {
        let op = client.operation(&id)?;
        if op["state"] != "running" {
            break op;
        }
        progress(&op["progress"]);
        if t.elapsed() > Duration::from_secs(3600) {
            return Err(ScaleError::Migration {
                chain: req.chain.clone(),
                nf: req.nf.clone(),
                operation: id,
                message: "still running after an hour".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if op["state"] != "succeeded" {
        return Err(ScaleError::Migration {
            chain: req.chain.clone(),
            nf: req.nf.clone(),
            operation: id,
            message: op["error"]["message"].as_str().unwrap_or("no reason given").to_string(),
        });
    }
    Ok(op["result"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_points_parse_or_say_what_is_expected() {
        let p: SteerPoint = "su/st:in@/run/s.sock".parse().unwrap();
        assert_eq!(
            p,
            SteerPoint {
                socket: Some("/run/s.sock".into()),
                chain: "su".into(),
                nf: "st".into(),
                port: "in".into()
            }
        );
        let p: SteerPoint = "sd/st:out".parse().unwrap();
        assert_eq!((p.socket, p.port.as_str()), (None, "out"));
        for bad in ["su/st", "su/st:up", "sust:in", "/st:in", "su/st:in@"] {
            let e = bad.parse::<SteerPoint>().unwrap_err();
            assert_eq!(e.field, format!("steering point `{bad}`"), "{e}");
            assert!(e.problem.contains("CHAIN/NF:PORT"), "{e}");
        }
    }

    #[test]
    fn bad_requests_are_refused_before_any_call() {
        // A socket nobody listens on: a refusal must come before any call.
        let c = Client::new("/nonexistent/braid-scale-test.sock");
        let mut r = ScaleRequest {
            chain: "c".into(),
            nf: "fw".into(),
            to: "10.0.0.2".into(),
            steer: vec![],
            here: 0,
            there: 1,
            deploy: None,
            timeout: Duration::from_secs(1),
        };
        let e = scale_out(&c, &r, (1, 2), |_| {}).unwrap_err().to_string();
        assert!(e.contains("no steering point"), "{e}");
        r.steer.push("su/st:in".parse().unwrap());
        for share in [(2, 2), (0, 1)] {
            let e = scale_out(&c, &r, share, |_| {}).unwrap_err().to_string();
            assert!(e.contains("need N >= 2"), "{e}");
        }
        r.there = 0;
        let e = scale_in(&c, &r, |_| {}).unwrap_err().to_string();
        assert!(e.contains("both instances are 0"), "{e}");
    }
}
