//! `cargo xtask`: Chokepoint's developer tasks (setup, build, run, test, install, bench) in Rust rather than shell.

mod bench;
mod build_cmd;
mod install;
mod run;
mod setup;
mod test;
mod util;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Chokepoint developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this Debian 12 host lacks to build and test (apt packages, nightly rust-src,
    /// bpf-linker); quick when nothing is missing.
    Setup,
    /// Build the `chokepoint` binary with its eBPF programs embedded and print its path.
    Build {
        /// Build the debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Setup, build, then run the gateway in the foreground with examples/chokepoint.toml.
    Run {
        /// Extra arguments for `chokepoint run`, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Setup, build, then run every test in the workspace (needs root: cgroups and BPF) and,
    /// on a full run, the fuzz targets briefly.
    Test {
        /// Skip the fuzz pass (its sanitizer build takes ~10 minutes the first time).
        #[arg(long)]
        no_fuzz: bool,
        /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build and install the gateway as a systemd service (needs root); never overwrites
    /// /etc/chokepoint/chokepoint.toml.
    Install,
    /// Run the protocol fuzz targets briefly (cargo-fuzz, nightly).
    Fuzz,
    /// Build, then run the benchmarks (cp-bench from chokepoint-tests).
    Bench {
        /// Suite to run instead of the default gateway benchmark.
        #[arg(value_enum)]
        suite: Option<bench::Suite>,
        /// Extra arguments for the suite's runner (cp-bench, cp-pgbench), after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Build { debug } => {
            let profile = if debug {
                build_cmd::Profile::Debug
            } else {
                build_cmd::Profile::Release
            };
            // The path on stdout alone, so scripts can capture it.
            build_cmd::build(profile).map(|bin| println!("{}", bin.display()))
        }
        Task::Run { args } => run::run(&args),
        Task::Test { no_fuzz, args } => test::test(&args, !no_fuzz),
        Task::Install => install::install(),
        Task::Bench { suite, args } => bench::bench(suite, &args),
        Task::Fuzz => test::fuzz(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            // Exit as the failed command did (cargo test's 101, say), so callers see the same code.
            let code = err
                .downcast_ref::<util::Failed>()
                .and_then(|f| f.status.code())
                .and_then(|c| u8::try_from(c).ok())
                .filter(|&c| c != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
