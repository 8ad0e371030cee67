//! Test helpers shared by braid's crates (a dev-dependency only).
//!
//! Some tests need things a developer's machine may lack: root (network
//! namespaces, veth, BPF), braid's XDP objects (clang and libbpf-dev at build
//! time), or a tool such as `tshark` or `iperf3`. On a laptop such a test says
//! why and passes without running. In CI that would hide a broken set-up
//! behind a green run, so with `BRAID_REQUIRE_ROOT=1` (set by
//! `scripts/test.sh`) a missing prerequisite fails the test instead.
//!
//! ```
//! # fn is_root() -> bool { true }
//! # fn main() {
//! if braid_testkit::skip_unless(is_root(), "my_test", "needs root") {
//!     return;
//! }
//! // ... the test proper
//! # }
//! ```

#![forbid(unsafe_code)]

use std::process::Command;

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_VAR: &str = "BRAID_REQUIRE_ROOT";

/// Whether missing prerequisites must fail tests (`BRAID_REQUIRE_ROOT=1`).
pub fn skipping_forbidden() -> bool {
    std::env::var_os(REQUIRE_VAR).is_some_and(|v| v == "1")
}

/// The message a test gives when `test` cannot run because of `reason`.
fn skip_message(test: &str, reason: &str) -> String {
    format!("skipping {test}: {reason}")
}

/// True when `test` must skip because `available` is false: prints why and
/// returns true. Panics (so the test fails) instead when
/// [`skipping_forbidden`]. Returns false, silently, when `available`.
#[track_caller]
pub fn skip_unless(available: bool, test: &str, reason: &str) -> bool {
    if available {
        return false;
    }
    let msg = skip_message(test, reason);
    if skipping_forbidden() {
        panic!("{msg} ({REQUIRE_VAR}=1 forbids skipping)");
    }
    eprintln!("{msg}");
    true
}

/// Whether `tool` can be run (`tool --version` starts and succeeds).
pub fn tool_installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// [`skip_unless`] for an external program: true (skip) when `tool` is not
/// installed, a failure instead when skipping is forbidden.
#[track_caller]
pub fn skip_unless_tool(tool: &str, test: &str) -> bool {
    skip_unless(
        tool_installed(tool),
        test,
        &format!("{tool} is not installed (scripts/install-deps.sh installs it)"),
    )
}

/// Run the heavy tests of one test binary one at a time: hold the guard
/// for the whole test. Tests that each start daemons, traffic generators
/// and migrations on the two vCPUs starve each other when the harness runs
/// them side by side (timeouts waiting for a starved peer, not bugs), so
/// such files take this lock in every test. A test that panics poisons
/// the lock; the next one takes it anyway.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The environment is process-wide and tests run on threads, so the
    // env-dependent cases run in one test, in sequence.
    #[test]
    fn skip_passes_without_the_variable_and_fails_with_it() {
        std::env::remove_var(REQUIRE_VAR);
        assert!(!skip_unless(true, "t", "r"), "an available prerequisite never skips");
        assert!(skip_unless(false, "t", "r"));
        std::env::set_var(REQUIRE_VAR, "0");
        assert!(skip_unless(false, "t", "r"), "only 1 forbids skipping");
        std::env::set_var(REQUIRE_VAR, "1");
        assert!(!skip_unless(true, "t", "r"));
        let e = std::panic::catch_unwind(|| skip_unless(false, "my_test", "needs root"))
            .expect_err("a skip must fail when forbidden");
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("skipping my_test: needs root"), "{msg}");
        assert!(msg.contains("BRAID_REQUIRE_ROOT=1"), "{msg}");
        let e = std::panic::catch_unwind(|| skip_unless_tool("braid-no-such-tool", "t2"))
            .expect_err("a missing tool must fail when forbidden");
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("braid-no-such-tool is not installed"), "{msg}");
        std::env::remove_var(REQUIRE_VAR);
    }

    #[test]
    fn tool_installed_sees_a_real_program_and_not_a_missing_one() {
        // `cargo` runs this test, so it exists and answers --version.
        assert!(tool_installed(env!("CARGO")));
        assert!(!tool_installed("braid-no-such-tool"));
    }
}
