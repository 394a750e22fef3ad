//! Named crash points for crash-recovery tests.
//!
//! `BITVELOCITY_CRASH_AT=<point>:<n>` makes the process kill itself with
//! SIGKILL the `n`-th time execution reaches `<point>`: no destructor runs, no
//! buffer is flushed, exactly as `kill -9` from outside. Without the variable a
//! point costs one relaxed atomic load. We keep this small module instead of the
//! `fail` crate because its actions (panic, return, sleep) cannot model a
//! process that vanishes mid-commit.
//!
//! `BITVELOCITY_STALL_AT=<point>:<millis>` makes every pass through a [`stall`] point
//! wait that long (asynchronously), so tests can make a commit outlast a server timeout.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Target {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var("BITVELOCITY_CRASH_AT").ok()?;
            let (name, nth) = match spec.rsplit_once(':') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Target {
                name,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks a place where a crash must be survivable; kills the process if it is the configured one.
pub fn point(name: &str) {
    let Some(t) = target() else { return };
    if t.name != name {
        return;
    }
    let hit = t.hits.fetch_add(1, Ordering::Relaxed) + 1;
    if hit == t.nth {
        eprintln!("crash point {name} (hit {hit}): killing the process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        std::process::abort();
    }
}

/// A place where slow storage would make the process wait; waits if it is the configured
/// stall point (`BITVELOCITY_STALL_AT`), else costs one load.
pub async fn stall(name: &str) {
    static STALL: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let stall = STALL.get_or_init(|| {
        let spec = std::env::var("BITVELOCITY_STALL_AT").ok()?;
        let (name, ms) = spec.rsplit_once(':')?;
        Some((name.to_string(), ms.parse().ok()?))
    });
    if let Some((point, ms)) = stall
        && point == name
    {
        tracing::warn!(point = name, ms, "stall point: waiting");
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}
