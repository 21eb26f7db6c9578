//! `cargo xtask test`: the project's whole test suite, as CI runs it (`.ci/run`).

use std::ffi::OsString;

use anyhow::{Context, Result};

use crate::{
    build_cmd::{self, Profile},
    setup,
    util::{self, say},
};

/// Installs what is missing, builds the release binary the integration tests spawn, then runs
/// every test in the workspace; `extra` (after `--`) goes to `cargo test`, e.g. a filter.
/// A full run (no `extra`) ends with the fuzz pass unless `fuzz` is false.
pub fn test(extra: &[OsString], fuzz: bool) -> Result<()> {
    util::require_root(
        "test",
        "the integration tests create cgroups and attach BPF programs",
    )?;
    setup::setup()?;
    let bin = build_cmd::build(Profile::Release)?;
    let mut cmd = util::cargo();
    cmd.env("CHOKEPOINT_BIN", &bin)
        .env("RUST_BACKTRACE", "1")
        // gateway-ebpf only compiles for the BPF target; its code is exercised through the binary.
        .args([
            "test",
            "--workspace",
            "--exclude",
            "gateway-ebpf",
            "--release",
        ])
        .args(extra);
    util::run(
        &mut cmd,
        "see cargo's output above (a compile error or failing tests); rerun one test with `cargo xtask test -- <name>`",
    )?;
    say("tests passed");
    if !fuzz {
        say("fuzz pass skipped (--no-fuzz)");
    } else if !extra.is_empty() {
        say("fuzz pass skipped: a filtered run (run it with `cargo xtask fuzz`)");
    } else {
        fuzz_pass()?;
        say("fuzz pass found nothing");
    }
    Ok(())
}

/// How long each fuzz target runs in a test pass: long enough to shake out
/// shallow framing bugs on every change, short enough for CI's budget.
const FUZZ_SECONDS: u32 = 30;

/// `cargo xtask fuzz`: runs every fuzz target briefly with libFuzzer; a
/// crash fails the task and leaves the reproducer under fuzz/artifacts/.
pub fn fuzz() -> Result<()> {
    setup::setup()?;
    fuzz_pass()
}

/// The fuzz run shared by `fuzz` and `test`. On a fresh machine it costs
/// cargo-fuzz's install (~2 min) and a sanitizer build of the gateway
/// library (~9 min on 2 cores), then FUZZ_SECONDS per target.
fn fuzz_pass() -> Result<()> {
    setup::cargo_fuzz()?;
    let fuzz_dir = util::workspace_root().join("fuzz");
    for target in FUZZ_TARGETS {
        let mut cmd = std::process::Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            // The fuzz crate builds gateway-user; the eBPF object is not needed
            // to exercise the codecs, and sanitizer flags must not reach it.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz", "run", target]);
        // Committed seeds join the (ignored) working corpus, which comes
        // first so that libFuzzer writes what it finds there.
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            let corpus = fuzz_dir.join("corpus").join(target);
            // cargo-fuzz creates only the corpus it picks itself.
            std::fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
            cmd.arg(corpus).arg(seeds);
        }
        cmd.arg("--").arg(format!("-max_total_time={FUZZ_SECONDS}"));
        if let Some(dict) = FUZZ_DICTIONARIES
            .iter()
            .find_map(|(t, dict)| (*t == target).then(|| fuzz_dir.join(dict)))
        {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        util::run(
            &mut cmd,
            &format!(
                "the fuzzer found a crash: the input is in fuzz/artifacts/{target}/; reproduce with `cargo +nightly fuzz run {target} <file>`"
            ),
        )?;
    }
    Ok(())
}

/// Every target in fuzz/fuzz_targets/, each run for FUZZ_SECONDS.
const FUZZ_TARGETS: [&str; 4] = [
    "pg_codec",
    "dns_message",
    "classify_paths",
    "recording_verify",
];

/// libFuzzer dictionaries (under fuzz/) for targets whose input is text.
const FUZZ_DICTIONARIES: [(&str, &str); 1] = [("classify_paths", "sql.dict")];
