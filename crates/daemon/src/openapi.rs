//! The OpenAPI 3.1 document the daemon serves at `/v1/openapi.json`. A
//! test checks that its paths and methods are exactly the router's.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn chain_response(description: &str) -> Value {
    json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Chain" } } } })
}

fn accepted_response() -> Value {
    json!({ "description": "accepted (the client sent `Prefer: respond-async`): the operation, to follow at its `Location`",
            "headers": { "Location": { "description": "/v1/operations/{id}", "schema": { "type": "string" } } },
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Operation" } } } })
}

fn prefer_param() -> Value {
    json!({ "name": "Prefer", "in": "header", "required": false,
            "description": "`respond-async`: answer 202 at once with the operation's Location instead of waiting",
            "schema": { "type": "string" } })
}

fn name_param(name: &str, what: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": what,
            "schema": { "type": "string" } })
}

/// Every NF type the registry knows.
fn nf_types() -> Vec<&'static str> {
    braid_nf::registry::REGISTRY.iter().map(|s| s.name).collect()
}

/// `POST /v1/chains/{name}/nfs/{nf}/migrate` (its own `json!`: the
/// document's macro would exceed the recursion limit).
fn migrate_path() -> Value {
    json!({
        "parameters": [ name_param("name", "chain name"), name_param("nf", "NF name in the chain") ],
        "post": {
            "operationId": "migrateNf",
            "parameters": [ prefer_param() ],
            "summary": "Move an NF's state live to the braidd of another host (its `migrate_listen`) and switch the traffic there: statelets, duplication or stop-and-copy; rolled back on any failure (docs/migration.md)",
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["to", "switch"], "additionalProperties": false,
                "properties": {
                    "to": { "type": "string", "description": "HOST[:PORT] of the destination's migration listener (port 9480 by default)" },
                    "mode": { "type": "string", "enum": ["statelet", "duplicate", "stop-copy"] },
                    "flows": { "type": "string", "description": "all, share:I/N or hash:FIRST-LAST (hexadecimal)" },
                    "switch": { "type": "object", "required": ["redirect", "restore", "markers"], "additionalProperties": false,
                        "properties": {
                            "redirect": { "type": "array", "items": { "$ref": "#/components/schemas/Route" } },
                            "restore": { "type": "array", "items": { "$ref": "#/components/schemas/Route" } },
                            "markers": { "type": "array", "items": { "type": "object", "required": ["dev", "port"], "additionalProperties": false,
                                "properties": { "netns": { "type": "string" }, "dev": { "type": "string" },
                                    "port": { "type": "string", "enum": ["in", "out"] } } } },
                            "steer": steer_items() } },
                    "deploy": { "type": "object", "required": ["in", "out"], "additionalProperties": false,
                        "description": "deploy the chain (empty) at the destination if it does not run it, on these interfaces",
                        "properties": { "in": { "type": "string" }, "out": { "type": "string" } } },
                    "timeout_ms": { "type": "integer", "minimum": 1 },
                    "marker_timeout_ms": { "type": "integer", "minimum": 1 },
                    "backpressure": { "type": "boolean", "default": true,
                        "description": "queue state only while few bytes are in flight on the state link, and switch when they are few (false: the behaviour before, for comparisons)" } } } } } },
            "responses": {
                "200": { "description": "migrated: the summary (time, state bytes, statelets, packets buffered, outcome)",
                    "content": { "application/json": { "schema": { "type": "object" } } } },
                "202": accepted_response(),
                "400": error_response("bad request (the field named), mode or flows"),
                "404": error_response("no such chain or NF"),
                "409": error_response("the chain is not running, or runs with mapping processes (processes_chain), or this braidd has no migrate_key_file to authenticate the offer with (no_migrate_key), or another migration or scale of the NF runs or waits (busy)"),
                "422": error_response("the migration failed and was rolled back (the source keeps serving), or the chain runs in the kernel (kernel_chain); the message says why")
            }
        }
    })
}

/// `switch.steer` of a migration request.
fn steer_items() -> Value {
    json!({ "type": "array", "description": "steering NFs that move the flows' hash buckets at the switch (partial migration, braid scale)",
        "items": { "type": "object", "required": ["chain", "nf", "from", "to", "port"], "additionalProperties": false,
            "properties": { "socket": { "type": "string", "description": "the API socket of the braidd running it; left out: this braidd" },
                "chain": { "type": "string" }, "nf": { "type": "string" },
                "from": { "type": "integer", "minimum": 0 }, "to": { "type": "integer", "minimum": 0 },
                "port": { "type": "string", "enum": ["in", "out"] } } } })
}

/// `POST /v1/chains/{name}/nfs/{nf}/scale`.
fn scale_path() -> Value {
    json!({
        "parameters": [ name_param("name", "chain name"), name_param("nf", "the per-flow NF behind the steering NFs") ],
        "post": {
            "operationId": "scaleNf",
            "parameters": [ prefer_param() ],
            "summary": "Scale an NF out (move share K of N of its flows, whole buckets of the `steer` NFs, with their state to an instance at another braidd, deployed there if asked) or in (give every bucket of this instance to the other one, then remove this chain) as one operation `scale-out` or `scale-in`: the steering tables are checked first, then the migration runs with the steering NFs as its switch; each step (check_steering, steer, steer_back, migrate, remove) is recorded in the operation's progress.steps (docs/migration.md, Scale out and in)",
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["direction", "to", "steer"], "additionalProperties": false,
                "properties": {
                    "direction": { "type": "string", "enum": ["out", "in"] },
                    "to": { "type": "string", "description": "HOST[:PORT] of the other instance's braidd migration listener (port 9480 by default)" },
                    "share": { "type": "object", "required": ["k", "n"], "additionalProperties": false,
                        "description": "out only: share K of N equal hash ranges moves (default 1/2); N must divide the steering tables' bucket count",
                        "properties": { "k": { "type": "integer", "minimum": 0 }, "n": { "type": "integer", "minimum": 2 } } },
                    "steer": { "type": "array", "minItems": 1, "description": "the steering NFs in front of the instances",
                        "items": { "type": "object", "required": ["chain", "nf", "port"], "additionalProperties": false,
                            "properties": { "socket": { "type": "string", "description": "the API socket of the braidd running it; left out: this braidd" },
                                "chain": { "type": "string" }, "nf": { "type": "string" },
                                "port": { "type": "string", "enum": ["in", "out"], "description": "the instance chain's port its traffic enters" } } } },
                    "here": { "type": "integer", "minimum": 0, "default": 0, "description": "this instance's index in the steering tables" },
                    "there": { "type": "integer", "minimum": 0, "default": 1, "description": "the other instance's index" },
                    "deploy": { "type": "object", "required": ["in", "out"], "additionalProperties": false,
                        "description": "out only: deploy the chain (empty) at the destination if it does not run it, on these interfaces",
                        "properties": { "in": { "type": "string" }, "out": { "type": "string" } } },
                    "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 600000, "default": 5000 } } } } } },
            "responses": {
                "200": { "description": "scaled: the migration's summary with direction, buckets, here, there, steps and (in) removed",
                    "content": { "application/json": { "schema": { "type": "object" } } } },
                "202": accepted_response(),
                "400": error_response("bad body (bad_body) or a bad field, named (bad_request): steering points, instances, share, deploy, timeout, a steering point that is not a `steer` NF, a share that is not whole buckets"),
                "404": error_response("no such chain or NF here (unknown_chain, unknown_nf), or a steering point's braidd has no such chain or NF (unknown_steering_point)"),
                "409": error_response("the chain is not running or runs with mapping processes (processes_chain), no migrate_key_file (no_migrate_key), another migration or scale of the NF runs or waits (busy), or the steering tables do not allow it: the share's buckets are not all this instance's, it owns none or not one range, the tables disagree (conflict); nothing changed"),
                "422": error_response("a steering point's braidd did not answer (steering_unreachable; nothing changed), the migration failed and was rolled back (migration_failed), or the chain runs in the kernel (kernel_chain)"),
                "500": error_response("scale in: the flows moved, but removing this chain failed (remove_failed); the message says how to remove it")
            }
        }
    })
}

/// `POST /v1/chains/{name}/nfs/{nf}/steer`.
fn steer_path() -> Value {
    json!({
        "parameters": [ name_param("name", "chain name"), name_param("nf", "a `steer` NF of the chain") ],
        "post": {
            "operationId": "steerBuckets",
            "summary": "Move the hash buckets of a flow set on a `steer` NF from one instance to another (between two batches), then optionally inject a drain marker out of the old instance's gate (docs/migration.md, Scale out and in)",
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["flows", "from", "to"], "additionalProperties": false,
                "properties": {
                    "flows": { "type": "string", "description": "all, share:I/N or hash:FIRST-LAST: whole buckets" },
                    "from": { "type": "integer", "minimum": 0 }, "to": { "type": "integer", "minimum": 0 },
                    "marker": { "type": "integer", "minimum": 0, "description": "migration id of a drain marker to send out of `from`'s gate" } } } } } },
            "responses": {
                "200": { "description": "moved: the bucket range, from, to", "content": { "application/json": { "schema": { "type": "object" } } } },
                "400": error_response("bad body, not a steer NF, unknown instance, flows not whole buckets"),
                "404": error_response("no such chain or NF"),
                "409": error_response("a bucket of the range is not on `from` (nothing moved), or the chain is not running"),
                "422": error_response("the worker refused the change")
            }
        }
    })
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "braidd API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The per-host braid daemon: deploy, inspect, reconfigure and remove live chains; follow operations and the event stream. Served on a unix socket (peers must be root or the daemon's uid) and, when configured, on TCP with TLS 1.3 and a bearer token (401 without it)."
        },
        "paths": {
            "/v1/status": { "get": {
                "operationId": "status", "summary": "The daemon: version, pid, uptime, chain counts",
                "responses": { "200": { "description": "status",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } } }
            } },
            "/v1/chains": {
                "get": {
                    "operationId": "listChains", "summary": "Every declared chain with its state and live counters",
                    "responses": { "200": { "description": "the chains",
                        "content": { "application/json": { "schema": { "type": "object", "required": ["chains"],
                            "properties": { "chains": { "type": "array", "items": { "$ref": "#/components/schemas/Chain" } } } } } } } }
                },
                "post": {
                    "operationId": "deployChain",
                    "parameters": [ prefer_param() ],
                    "summary": "Deploy a chain from its descriptor (YAML or JSON, as `braid validate` reads it); its `in` and `out` ports must be af_packet or af_xdp",
                    "requestBody": { "required": true, "content": {
                        "application/yaml": { "schema": { "type": "string" } },
                        "application/json": { "schema": { "$ref": "#/components/schemas/Descriptor" } } } },
                    "responses": {
                        "201": chain_response("deployed and running"),
                        "202": accepted_response(),
                        "400": error_response("invalid descriptor: every problem with line, column and field path; nothing changed"),
                        "409": error_response("a chain of that name exists"),
                        "413": error_response("body larger than the limit"),
                        "422": error_response("valid, but could not start (start_failed: a port did not open, or the XDP program of a kernel chain did not load or attach), or an NF pinned to the kernel shares the chain with one that must run in user space (placement_refused)")
                    }
                }
            },
            "/v1/chains/{name}": {
                "parameters": [ name_param("name", "chain name") ],
                "get": {
                    "operationId": "getChain", "summary": "One chain: state, descriptor as running, live per-NF and per-port counters",
                    "responses": { "200": chain_response("the chain"), "404": error_response("no such chain") }
                },
                "delete": {
                    "operationId": "deleteChain", "summary": "Stop a chain and forget it; its final counters",
                    "parameters": [ prefer_param() ],
                    "responses": { "200": { "description": "removed",
                        "content": { "application/json": { "schema": { "type": "object" } } } },
                        "202": accepted_response(),
                        "404": error_response("no such chain") }
                }
            },
            "/v1/chains/{name}/nfs/{nf}": {
                "parameters": [ name_param("name", "chain name"), name_param("nf", "NF name in the chain") ],
                "patch": {
                    "operationId": "reconfigureNf",
                    "parameters": [ prefer_param() ],
                    "summary": "Either replace an NF's parameters live (`params`: new instance, state moved over, swapped between batches; operation `reconfigure`) or its `sched` block (`sched`: the scheduling, batch size, idle policy and EEVDF slice of the worker that runs it, applied between two batches; operation `reschedule`); one at a time; kept across restarts",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "additionalProperties": false,
                        "oneOf": [ { "required": ["params"] }, { "required": ["sched"] } ],
                        "properties": {
                            "params": { "description": "the NF's parameters, as in a descriptor" },
                            "sched": { "$ref": "#/components/schemas/Sched" } } } } } },
                    "responses": {
                        "200": chain_response("changed (for `sched`, with `worker_sched`: the worker's resolved settings)"),
                        "202": accepted_response(),
                        "400": error_response("invalid parameters or sched (field paths as `braid validate` gives them) or body"),
                        "404": error_response("no such chain or NF"),
                        "409": error_response("the chain is not running (not_running)"),
                        "422": error_response("refused: the worker or the kernel refused the change (state does not fit, no privilege: refused_by_worker), or the coordinator did (real-time busy polling on every CPU, NFs of the worker disagree: sched_refused), or a kernel chain's program cannot take the parameters (refused_by_kernel), or `sched` on a kernel chain (kernel_chain); nothing changed")
                    }
                }
            },
            "/v1/chains/{name}/profile": {
                "parameters": [ name_param("name", "chain name") ],
                "get": {
                    "operationId": "profileChain",
                    "summary": "A live profile of the running chain over an interval: per NF at the call edge (calls, vectors, vectors per call, ns per packet, max batch, drops) and per worker thread with its OS counters (CPU user/system/on-CPU, run-queue wait, context switches, migrations, page faults), a per-packet cost breakdown, hardware counters or why not; the model of `braid profile --json` with mapping `live`. Answers after the interval; no control message reaches the worker",
                    "parameters": [
                        { "name": "interval_ms", "in": "query", "required": false,
                          "description": "how long to watch (default 1000)",
                          "schema": { "type": "integer", "minimum": 10, "maximum": 60000 } },
                        { "name": "calibrate", "in": "query", "required": false,
                          "description": "calibrate context-switch and system-call costs first, so they are modelled (default false)",
                          "schema": { "type": "boolean" } },
                        { "name": "hardware", "in": "query", "required": false,
                          "description": "open hardware counters on the worker threads (default true)",
                          "schema": { "type": "boolean" } } ],
                    "responses": {
                        "200": { "description": "the profile",
                            "content": { "application/json": { "schema": { "type": "object",
                                "required": ["chain", "mapping", "nfs", "workers", "hardware", "breakdown", "not_measured"] } } } },
                        "400": error_response("bad query (the parameter named)"),
                        "404": error_response("no such chain"),
                        "409": error_response("the chain is not running (not_running)"),
                        "422": error_response("the chain runs in the kernel: no worker thread to profile (kernel_chain)")
                    }
                }
            },
            "/v1/chains/{name}/nfs/{nf}/migrate": migrate_path(),
            "/v1/chains/{name}/nfs/{nf}/steer": steer_path(),
            "/v1/chains/{name}/nfs/{nf}/scale": scale_path(),
            "/v1/operations": { "get": {
                "operationId": "listOperations", "summary": "The last 1000 operations (deploy, remove, reconfigure, reschedule, migrate, migrate-in, scale-out, scale-in), oldest first",
                "responses": { "200": { "description": "the operations",
                    "content": { "application/json": { "schema": { "type": "object", "required": ["operations"],
                        "properties": { "operations": { "type": "array", "items": { "$ref": "#/components/schemas/Operation" } } } } } } } }
            } },
            "/v1/operations/{id}": {
                "parameters": [ name_param("id", "operation id, `op-N`") ],
                "get": {
                    "operationId": "getOperation", "summary": "One operation: state (running, succeeded, failed), outcome",
                    "responses": { "200": { "description": "the operation",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Operation" } } } },
                        "404": error_response("no such operation (or no longer kept)") }
                }
            },
            "/v1/events": { "get": {
                "operationId": "events",
                "summary": "The change feed, one JSON object per line, streamed until the client goes away: daemon_started, chain_deployed, chain_removed, chain_reconfigured, chain_rescheduled, chain_state, worker_stopped, migration_progress, chain_migrated, migration_in, chain_steered, chain_scaled, operation_finished (and `lagged` with the number missed)",
                "parameters": [ { "name": "since", "in": "query", "required": false,
                    "description": "replay the kept events (the last 1024) after this seq first",
                    "schema": { "type": "integer", "minimum": 0 } } ],
                "responses": { "200": { "description": "JSON lines, each {seq, time, type, ...}",
                    "content": { "application/jsonl": { "schema": { "type": "string" } } } },
                    "400": error_response("bad query") }
            } },
            "/v1/chains/{name}/capture": {
                "parameters": [ name_param("name", "chain name") ],
                "post": {
                    "operationId": "captureNf",
                    "summary": "Mirror the packets entering, leaving or dropped by one NF of the running chain, streamed as pcapng until the packet count or time limit, the chain's end or the client's (docs/capture.md)",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["nf"], "additionalProperties": false,
                        "properties": {
                            "nf": { "type": "string", "description": "NF name in the chain" },
                            "points": { "type": "array", "items": { "enum": ["in", "out", "drops"] }, "description": "what to mirror (default: all three)" },
                            "filter": { "type": "string", "description": "tcpdump-style filter (host, net, port, portrange, tcp, udp, icmp, ip, ip6, vlan, and/or/not)" },
                            "count": { "type": ["integer", "null"], "minimum": 0, "description": "stop after this many packets" },
                            "seconds": { "type": ["number", "null"], "exclusiveMinimum": 0, "description": "stop after this many seconds" } } } } } },
                    "responses": {
                        "200": { "description": "the capture, streamed", "content": { "application/x-pcapng": { "schema": { "type": "string", "format": "binary" } } } },
                        "400": error_response("bad request body or filter"),
                        "404": error_response("no such chain or NF"),
                        "409": error_response("the chain is not running (not_running)"),
                        "422": error_response("the worker or the kernel refused the tap")
                    }
                }
            },
            "/v1/openapi.json": { "get": {
                "operationId": "openapi", "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3.1",
                    "content": { "application/json": { "schema": { "type": "object" } } } } }
            } },
            "/metrics": { "get": {
                "operationId": "metrics",
                "summary": "OpenMetrics text: per NF packets/bytes in and out, drops by reason, batches, busy ns; per port rx/tx/drops; per worker turns; API requests",
                "responses": { "200": { "description": "metrics",
                    "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } } }
            } }
        },
        "components": {
          "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
              "description": "TCP listener only (the unix socket checks peer credentials instead)" } },
          "schemas": {
            "Error": { "type": "object", "required": ["error", "message"], "properties": {
                "error": { "type": "string", "description": "stable kind: invalid_descriptor, duplicate_chain, unknown_chain, unknown_nf, not_running, start_failed, refused_by_worker, refused_by_kernel, sched_refused, placement_refused, kernel_chain, processes_chain, profile_failed, bad_request, no_migrate_key, busy, conflict, migration_failed, unknown_steering_point, steering_unreachable, remove_failed, body_too_large, body_timeout, bad_body, bad_query, unknown_operation, forbidden, unauthorized, no_route, store, internal" },
                "message": { "type": "string" },
                "problems": { "type": "array", "items": { "type": "object", "properties": {
                    "line": { "type": ["integer", "null"] }, "column": { "type": ["integer", "null"] },
                    "path": { "type": "string" }, "message": { "type": "string" },
                    "accepted": { "type": ["string", "null"] }, "text": { "type": "string" } } } }
            } },
            "Operation": { "type": "object", "required": ["id", "kind", "chain", "state", "created"], "properties": {
                "id": { "type": "string" }, "kind": { "type": "string", "enum": ["deploy", "remove", "reconfigure", "reschedule", "migrate", "migrate-in", "scale-out", "scale-in"] },
                "chain": { "type": "string" }, "nf": { "type": "string" },
                "state": { "type": "string", "enum": ["running", "succeeded", "failed"] },
                "created": { "type": "number" }, "finished": { "type": ["number", "null"] },
                "status": { "type": ["integer", "null"], "description": "the HTTP status a synchronous call gets" },
                "result": { "description": "what a synchronous call answers" },
                "error": { "description": "{error, message, problems} as the API's errors" },
                "progress": { "description": "what it has done, kept after it ends: a migration's {phase, state_bytes, frames, backlog}; for a scale, and a migration with steering NFs, `steps`: [{step, outcome (done, failed), at_ms, ...}] in order (check_steering, steer, steer_back, migrate, remove)" } } },
            "Sched": { "type": "object", "additionalProperties": false,
                "description": "an NF's `sched` block (docs/profiling.md): how the worker that runs it is scheduled; fields left out keep the chain's or the daemon's default; {} removes the NF's block",
                "properties": {
                    "policy": { "type": "string", "enum": ["other", "batch", "idle", "fifo", "rr"] },
                    "priority": { "type": "integer", "minimum": 1, "maximum": 99, "description": "fifo and rr only (and required by them)" },
                    "nice": { "type": "integer", "minimum": -20, "maximum": 19 },
                    "cpus": { "type": "array", "items": { "type": "integer", "minimum": 0 }, "minItems": 1 },
                    "batch_size": { "type": "integer", "minimum": 1, "maximum": 1024 },
                    "idle": { "type": "string", "enum": ["busy", "poll", "sleep"] },
                    "adapt": { "type": "boolean" },
                    "slice_us": { "type": "integer", "minimum": 100, "maximum": 100000, "description": "EEVDF slice (µs), other and batch only; Linux 6.12+" } } },
            "Route": { "type": "object", "required": ["to"], "additionalProperties": false,
                "description": "`ip [-n netns] route replace to [via via] [dev dev]`",
                "properties": { "netns": { "type": "string" }, "to": { "type": "string" },
                    "via": { "type": "string" }, "dev": { "type": "string" } } },
            "Descriptor": { "type": "object", "required": ["name", "nfs"],
                "description": "a chain descriptor (docs/chains.md); the daemon also needs `in` and `out` ports of kind af_packet or af_xdp on interfaces that exist (422 otherwise), and each NF's parameters as docs/nfs.md gives them (400 otherwise)",
                "properties": {
                    "name": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" },
                    "batch_size": { "type": "integer", "minimum": 1 },
                    "ports": { "type": "object", "additionalProperties": { "type": "object", "required": ["kind"],
                        "properties": { "kind": { "type": "string" } } } },
                    "nfs": { "type": "array", "minItems": 1, "items": { "type": "object", "required": ["name", "type"],
                        "properties": { "name": { "type": "string", "minLength": 1 },
                                        "type": { "type": "string", "enum": nf_types() },
                                        "params": { "type": "object" },
                                        "worker": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                                            "description": "with mapping threads: the worker thread this NF shares with its neighbours of the same worker" } } } },
                    "sched": { "type": "object" },
                    "mapping": { "type": "string", "enum": ["thread", "threads", "processes"],
                        "description": "thread (default): every NF on one worker thread; threads: a worker per NF (or per run of neighbouring NFs with the same `worker`) joined by in-process channels; processes: a supervised process per NF (braidd re-executed) joined by shared-memory ports, braidd's edge worker on `in` and `out`" } } },
            "Chain": { "type": "object", "required": ["name", "state", "descriptor"], "properties": {
                "name": { "type": "string" },
                "state": { "type": "string", "enum": ["running", "exited", "failed", "stopped"] },
                "error": { "type": ["string", "null"] },
                "uptime_seconds": { "type": "number" },
                "descriptor": { "$ref": "#/components/schemas/Descriptor" },
                "placement": { "type": "string", "enum": ["kernel", "user"],
                    "description": "kernel: one XDP chain program on `in` and `out`; user: worker threads" },
                "nfs": { "type": "array", "description": "where each NF runs and why",
                    "items": { "type": "object", "required": ["name", "kind", "placement", "reason"], "properties": {
                        "name": { "type": "string" }, "kind": { "type": "string" },
                        "placement": { "type": "string", "enum": ["kernel", "user"] },
                        "reason": { "type": "string" } } } },
                "stats": { "type": "object", "description": "per-NF stages, ports and loop counters (every worker's together; with mapping processes the NF processes' counters, at most 200 ms old, and the edge worker's ports); for a kernel chain the XDP program's per-NF counters (packets_in, bytes_in, packets_out, passed, dropped, drops, matched, tap) and its interfaces with their XDP mode" },
                "workers": { "type": "array", "description": "the chain's worker threads in chain order: name, nfs, ports, loop counters (none for a kernel chain; with mapping processes braidd's edge worker)",
                    "items": { "type": "object" } },
                "mapping": { "type": "string", "enum": ["thread", "threads", "processes"] },
                "processes": { "type": "array", "description": "with mapping processes: each NF process, its pid (null while down) and restarts",
                    "items": { "type": "object", "required": ["name", "pid", "restarts"], "properties": {
                        "name": { "type": "string" }, "pid": { "type": ["integer", "null"] }, "restarts": { "type": "integer" } } } },
                "process_events": { "type": "array", "items": { "type": "string" },
                    "description": "with mapping processes: the supervisor's latest events (starts, exits, restarts, hangs, given up), oldest first" } } },
            "Status": { "type": "object", "properties": {
                "daemon": { "type": "string" }, "version": { "type": "string" }, "pid": { "type": "integer" },
                "uptime_seconds": { "type": "number" }, "chains": { "type": "integer" }, "running": { "type": "integer" },
                "checkpoints": { "type": "integer" }, "last_event": { "type": "integer" } } }
        } }
    })
}
