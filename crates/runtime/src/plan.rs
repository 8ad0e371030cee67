//! Where each NF runs: the CALVIN classifier.
//!
//! Elementary and basic NFs go to the kernel (XDP) when an XDP version
//! exists (`Placement::Kernel` in the NF's `placements`), because the kernel
//! fast path avoids the trip to user space; advanced NFs (crypto, coding,
//! DPI) go to user space, where heavy per-packet work belongs. A descriptor
//! may pin an NF with `placement: kernel|user`; pinning to a side the NF
//! cannot run on is a validation error (see [`crate::validate`]).

use braid_io::virtual_port::{self, Backend, Location};
use braid_nf::{NfClass, Placement};

use crate::descriptor::{ChainDescriptor, PlacementChoice};

/// The decision for one NF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEntry {
    pub name: String,
    /// NF kind.
    pub kind: &'static str,
    pub class: NfClass,
    pub placement: Placement,
    /// Why, in a few words.
    pub reason: String,
}

/// Error from [`plan`]: a descriptor that did not pass validation.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("nfs[{index}] ({name}): unknown NF type `{kind}`")]
    UnknownKind { index: usize, name: String, kind: String },
    #[error("nfs[{index}] ({name}): `{kind}` cannot run in {placement} space")]
    Impossible { index: usize, name: String, kind: String, placement: PlacementChoice },
    /// Pinned to the kernel with parameters its XDP version cannot express.
    #[error("nfs[{index}] ({name}): cannot run in the kernel: {error}")]
    KernelInexpressible {
        index: usize,
        name: String,
        #[source]
        error: braid_nf::kernel::KernelError,
    },
}

/// Decide the placement of every NF of `d`.
pub fn plan(d: &ChainDescriptor) -> Result<Vec<PlanEntry>, PlanError> {
    d.nfs
        .iter()
        .enumerate()
        .map(|(index, decl)| {
            let spec = braid_nf::find(&decl.kind).ok_or_else(|| PlanError::UnknownKind {
                index,
                name: decl.name.clone(),
                kind: decl.kind.clone(),
            })?;
            let has = |p: Placement| spec.placements.contains(&p);
            let impossible = || PlanError::Impossible {
                index,
                name: decl.name.clone(),
                kind: decl.kind.clone(),
                placement: decl.placement,
            };
            // Whether the XDP version can do what these parameters say (an
            // NF without one is not offered the kernel at all).
            let kernel = if has(Placement::Kernel) {
                braid_nf::kernel::translate(spec.name, &decl.params).map(|_| ())
            } else {
                Ok(())
            };
            let (placement, reason) = match decl.placement {
                PlacementChoice::Kernel if has(Placement::Kernel) => {
                    if let Err(error) = kernel {
                        return Err(PlanError::KernelInexpressible {
                            index,
                            name: decl.name.clone(),
                            error,
                        });
                    }
                    (Placement::Kernel, "pinned to kernel by the descriptor".to_string())
                }
                PlacementChoice::User if has(Placement::User) => {
                    (Placement::User, "pinned to user space by the descriptor".to_string())
                }
                PlacementChoice::Kernel | PlacementChoice::User => return Err(impossible()),
                PlacementChoice::Auto => match kernel {
                    Err(e) if has(Placement::User) => (
                        Placement::User,
                        format!(
                            "{} NF whose parameters its XDP version cannot express: {e}",
                            spec.class
                        ),
                    ),
                    _ => auto(spec.class, has(Placement::Kernel), has(Placement::User))
                        .ok_or_else(impossible)?,
                },
            };
            Ok(PlanEntry {
                name: decl.name.clone(),
                kind: spec.name,
                class: spec.class,
                placement,
                reason,
            })
        })
        .collect()
}

/// How the NFs of a chain are mapped onto threads, processes and hosts. The
/// mapping, with each NF's placement, decides what carries packets from one
/// NF to the next (the "virtual port" backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Every user-space NF in one thread of one process (`braid run`,
    /// `braid bench`): batches are handed on directly.
    Thread,
    /// One process, one thread per NF.
    Threads,
    /// One process per NF on one host (`braid run-procs`).
    Processes,
    /// One NF per host (CALVIN's distributed mapping, `braid deploy`).
    Hosts,
    /// Consecutive NFs with the same placement share a host (CALVIN's
    /// compact mapping, `braid deploy --mapping compact`): kernel NFs as
    /// one XDP chain program, user-space NFs as one thread.
    Compact,
}

impl Mapping {
    /// The name on the command line (`--mapping threads`).
    pub fn name(self) -> &'static str {
        match self {
            Mapping::Thread => "thread",
            Mapping::Threads => "threads",
            Mapping::Processes => "processes",
            Mapping::Hosts => "hosts",
            Mapping::Compact => "compact",
        }
    }
}

/// The backend chosen for the link between two consecutive NFs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LinkPlan {
    pub from: String,
    pub to: String,
    pub backend: Backend,
    /// Why, in a few words.
    pub reason: String,
}

/// Where NF number `index` with `placement` runs under `mapping`;
/// `run` is the index of its run of consecutive NFs placed alike.
fn location(mapping: Mapping, index: usize, run: usize, placement: Placement) -> Location {
    let host = match mapping {
        Mapping::Hosts => format!("host{index}"),
        Mapping::Compact => format!("host{run}"),
        _ => "host0".to_string(),
    };
    if placement == Placement::Kernel {
        return Location::kernel(&host);
    }
    let (process, thread) = match mapping {
        Mapping::Thread | Mapping::Hosts | Mapping::Compact => (0, 0),
        Mapping::Threads => (0, index as u32),
        Mapping::Processes => (index as u32, 0),
    };
    Location::user(&host, process, thread)
}

/// The backend of every link between consecutive NFs of a plan.
/// `af_xdp_available` says whether links between hosts can use AF_XDP.
pub fn links(entries: &[PlanEntry], mapping: Mapping, af_xdp_available: bool) -> Vec<LinkPlan> {
    let runs = runs(entries);
    entries
        .windows(2)
        .enumerate()
        .map(|(i, pair)| {
            let a = location(mapping, i, runs[i], pair[0].placement);
            let b = location(mapping, i + 1, runs[i + 1], pair[1].placement);
            let both_kernel =
                pair[0].placement == Placement::Kernel && pair[1].placement == Placement::Kernel;
            let (backend, reason) = if both_kernel && a.host == b.host {
                // Two kernel NFs on one host are stages of braid's XDP chain
                // program: a tail call, no socket involved.
                (
                    Backend::Direct,
                    "both in the kernel on one host: XDP chain program (tail call)".to_string(),
                )
            } else {
                (
                    virtual_port::choose(&a, &b, af_xdp_available),
                    virtual_port::reason(&a, &b).to_string(),
                )
            };
            LinkPlan { from: pair[0].name.clone(), to: pair[1].name.clone(), backend, reason }
        })
        .collect()
}

/// How a unit of a deployment runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunsAs {
    /// A dataplane worker thread running the unit's NFs as one graph.
    Worker { process: u32, thread: u32 },
    /// An XDP program in the kernel (one NF, or braid's XDP chain program
    /// for several).
    Xdp,
}

/// One unit of a deployment: NFs that run together.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnitPlan {
    /// `host0/p0/t0` for a worker, `host0/xdp` for a kernel program.
    pub name: String,
    pub host: String,
    pub runs_as: RunsAs,
    /// The unit's NFs in chain order (indices into the descriptor's `nfs`).
    pub nfs: Vec<usize>,
}

/// The executable plan: the units of a chain under a mapping and the
/// links between them. `braid plan` prints it; `braid run --mapping`
/// runs it (offline: every unit a worker); `braid deploy` places its
/// units on testbed hosts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeploymentSpec {
    pub chain: String,
    pub mapping: &'static str,
    pub units: Vec<UnitPlan>,
    /// Between consecutive units, in chain order.
    pub links: Vec<LinkPlan>,
}

/// Group a plan into units: consecutive NFs at the same location (host,
/// process, thread, or kernel of one host) form one unit.
pub fn deployment(
    chain: &str,
    entries: &[PlanEntry],
    mapping: Mapping,
    af_xdp_available: bool,
) -> DeploymentSpec {
    let runs = runs(entries);
    let mut units: Vec<UnitPlan> = Vec::new();
    let mut unit_of = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let loc = location(mapping, i, runs[i], e.placement);
        let runs_as = match loc.process {
            None => RunsAs::Xdp,
            Some(process) => RunsAs::Worker { process, thread: loc.thread },
        };
        let name = match &runs_as {
            RunsAs::Xdp => format!("{}/xdp", loc.host),
            RunsAs::Worker { process, thread } => format!("{}/p{process}/t{thread}", loc.host),
        };
        match units.last_mut() {
            Some(u) if u.name == name => u.nfs.push(i),
            _ => units.push(UnitPlan { name, host: loc.host.clone(), runs_as, nfs: vec![i] }),
        }
        unit_of.push(units.len() - 1);
    }
    let links = links(entries, mapping, af_xdp_available)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| unit_of[*i] != unit_of[*i + 1])
        .map(|(_, l)| l)
        .collect();
    DeploymentSpec { chain: chain.to_string(), mapping: mapping.name(), units, links }
}

/// The index of each entry's run of consecutive NFs placed alike.
fn runs(entries: &[PlanEntry]) -> Vec<usize> {
    let mut runs = vec![0usize; entries.len()];
    for i in 1..entries.len() {
        let same = entries[i].placement == entries[i - 1].placement;
        runs[i] = runs[i - 1] + usize::from(!same);
    }
    runs
}

fn auto(class: NfClass, kernel: bool, user: bool) -> Option<(Placement, String)> {
    let pick = match class {
        NfClass::Elementary | NfClass::Basic if kernel => {
            (Placement::Kernel, format!("{class} NF with an XDP version: kernel fast path"))
        }
        NfClass::Elementary | NfClass::Basic if user => {
            (Placement::User, format!("{class} NF without an XDP version: user space"))
        }
        NfClass::Advanced if user => {
            (Placement::User, "advanced NF: heavy per-packet work, user space with fast I/O".into())
        }
        NfClass::Advanced if kernel => {
            (Placement::Kernel, "advanced NF with only an XDP version: kernel".into())
        }
        _ => return None,
    };
    Some(pick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_rules() {
        assert_eq!(auto(NfClass::Elementary, true, true).unwrap().0, Placement::Kernel);
        assert_eq!(auto(NfClass::Basic, true, true).unwrap().0, Placement::Kernel);
        assert_eq!(auto(NfClass::Basic, false, true).unwrap().0, Placement::User);
        assert_eq!(auto(NfClass::Advanced, true, true).unwrap().0, Placement::User);
        assert!(auto(NfClass::Advanced, false, false).is_none());
    }

    #[test]
    fn plans_pins_and_auto() {
        let d = ChainDescriptor::from_yaml(
            "name: p\nnfs:\n  - {name: a, type: fwd}\n  - {name: b, type: fwd, placement: user}\n",
        )
        .unwrap();
        let p = plan(&d).unwrap();
        assert_eq!(p[0].placement, Placement::Kernel);
        assert!(p[0].reason.contains("elementary"), "{}", p[0].reason);
        assert_eq!(p[1].placement, Placement::User);
        assert!(p[1].reason.contains("pinned"));
        let d = ChainDescriptor::from_yaml("name: p\nnfs:\n  - {name: a, type: nope}\n").unwrap();
        assert!(plan(&d).unwrap_err().to_string().contains("unknown NF type `nope`"));
    }

    #[test]
    fn parameters_xdp_cannot_express_keep_an_nf_in_user_space() {
        // A default firewall (conntrack on, default drop) has an XDP
        // version but not for these parameters: user space, with why.
        let d = ChainDescriptor::from_yaml(
            "name: p\nnfs:\n  - {name: fw, type: firewall}\n  - {name: fw2, type: firewall, params: {conntrack: false}}\n",
        )
        .unwrap();
        let p = plan(&d).unwrap();
        assert_eq!(p[0].placement, Placement::User);
        assert!(p[0].reason.contains("conntrack: true"), "{}", p[0].reason);
        assert_eq!(p[1].placement, Placement::Kernel, "{}", p[1].reason);
        // Pinned there, it is an error naming the parameter.
        let d = ChainDescriptor::from_yaml(
            "name: p\nnfs:\n  - {name: fw, type: firewall, placement: kernel}\n",
        )
        .unwrap();
        let e = plan(&d).unwrap_err();
        assert!(matches!(e, PlanError::KernelInexpressible { index: 0, .. }), "{e}");
        assert!(
            e.to_string().starts_with("nfs[0] (fw): cannot run in the kernel: conntrack: true"),
            "{e}"
        );
    }

    #[test]
    fn links_follow_the_mapping() {
        let d = ChainDescriptor::from_yaml(
            "name: p\nnfs:\n  - {name: k, type: fwd}\n  - {name: a, type: fwd, placement: user}\n  - {name: b, type: fwd, placement: user}\n",
        )
        .unwrap();
        let p = plan(&d).unwrap();
        let backends = |m, xdp| links(&p, m, xdp).iter().map(|l| l.backend).collect::<Vec<_>>();
        // Kernel k hands over to user-space a by AF_XDP on the same host.
        assert_eq!(backends(Mapping::Thread, true), [Backend::AfXdp, Backend::Direct]);
        assert_eq!(backends(Mapping::Threads, true), [Backend::AfXdp, Backend::Channel]);
        assert_eq!(backends(Mapping::Processes, true), [Backend::AfXdp, Backend::SharedMemory]);
        assert_eq!(backends(Mapping::Hosts, true), [Backend::AfXdp, Backend::AfXdp]);
        assert_eq!(backends(Mapping::Hosts, false), [Backend::AfPacket, Backend::AfPacket]);
        // Compact: k alone on host 0, a and b in one thread on host 1.
        assert_eq!(backends(Mapping::Compact, true), [Backend::AfXdp, Backend::Direct]);
        let l = links(&p, Mapping::Compact, true);
        assert!(l[1].reason.contains("same thread"), "{}", l[1].reason);
        let l = links(&p, Mapping::Processes, true);
        assert_eq!((l[1].from.as_str(), l[1].to.as_str()), ("a", "b"));
        assert!(l[1].reason.contains("shared memory"), "{}", l[1].reason);
    }

    #[test]
    fn deployment_groups_nfs_into_units() {
        let d = ChainDescriptor::from_yaml(
            "name: p\nnfs:\n  - {name: k, type: fwd}\n  - {name: a, type: fwd, placement: user}\n  - {name: b, type: fwd, placement: user}\n",
        )
        .unwrap();
        let p = plan(&d).unwrap();
        let units = |m| {
            deployment("p", &p, m, true)
                .units
                .iter()
                .map(|u| (u.name.clone(), u.nfs.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            units(Mapping::Thread),
            [("host0/xdp".into(), vec![0]), ("host0/p0/t0".into(), vec![1, 2])]
        );
        assert_eq!(
            units(Mapping::Threads),
            [
                ("host0/xdp".into(), vec![0]),
                ("host0/p0/t1".into(), vec![1]),
                ("host0/p0/t2".into(), vec![2])
            ]
        );
        assert_eq!(units(Mapping::Processes)[2].0, "host0/p2/t0");
        assert_eq!(units(Mapping::Hosts).len(), 3);
        let s = deployment("p", &p, Mapping::Thread, true);
        assert_eq!(s.links.len(), 1, "only the link between units: {:?}", s.links);
        assert_eq!(s.links[0].backend, Backend::AfXdp);
    }
}
