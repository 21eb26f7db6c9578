//! Ctrl-C and SIGTERM for the benchmark binaries. Killed by a signal's
//! default action, a benchmark would leave its PostgreSQL server (pg_ctl
//! detaches it), PgBouncer, gateways and test cgroups behind, because no
//! destructor runs. With [`install`], the first signal only marks the run
//! interrupted: the next [`check`] fails, the error unwinds through every
//! guard, and each one stops or removes what it owns. A second signal
//! exits at once, for a cleanup that hangs.
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap and _exit.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { libc::_exit(130) };
    }
}

/// Catches SIGINT, SIGTERM and SIGHUP for the rest of the process.
/// `SA_RESTART` keeps the harness's blocking calls (waiting for a child,
/// reading its output) from failing with `EINTR`.
pub fn install() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler above is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .map_err(|e| anyhow::anyhow!("cannot catch {signal}: {e}"))?;
    }
    Ok(())
}

/// Whether a signal asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once a signal asked the run to stop; call it between steps.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted by a signal; stopping what was started");
    }
    Ok(())
}
