//! `cargo xtask setup`: installs what a fresh Debian 12 host lacks to build and test Chokepoint, and only that.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{self, say};

/// Debian packages the build and the integration tests rely on, with why.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "postgresql",
        "server and client; tests start private clusters with initdb/pg_ctl",
    ),
    (
        "postgresql-contrib",
        "the extensions a stock PostgreSQL install has",
    ),
    (
        "pgbouncer",
        "the pooler the PostgreSQL path is measured against",
    ),
    ("libclang-dev", "bindgen, for crates that generate bindings"),
    ("clang", "C compiler for crates that build C"),
    ("iproute2", "ip/ss, for network checks in tests"),
    ("procps", "ps/pkill/sysctl, for process checks in tests"),
];

/// Pinned so a fresh machine gets the linker that was verified with this nightly; bump together
/// with the nightly when its LLVM major version changes.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Checks each prerequisite and installs only the missing ones; quick when nothing is missing.
pub fn setup() -> Result<()> {
    let mut installed = Vec::new();
    if apt_packages()? {
        installed.push("Debian packages");
    }
    if nightly_rust_src()? {
        installed.push("nightly rust-src");
    }
    if bpf_linker()? {
        installed.push("bpf-linker");
    }
    report_postgres_bin();
    if installed.is_empty() {
        say("setup: everything was already present");
    } else {
        say(format!("setup: installed {}", installed.join(", ")));
    }
    Ok(())
}

/// Installs missing Debian packages; returns whether it installed any.
fn apt_packages() -> Result<bool> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|(name, _)| *name).collect();
    // One query for all: unknown packages print nothing on stdout (and exit 1), so parse rather than
    // trust the exit status.
    let out = util::capture(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(&names),
    )
    .context("dpkg-query is needed to check Debian packages: setup supports Debian 12 hosts")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let missing = missing_packages(&names, &stdout);
    if missing.is_empty() {
        say(format!("ok: Debian packages {}", names.join(" ")));
        return Ok(false);
    }
    for name in &missing {
        let why = APT_PACKAGES
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, why)| why);
        say(format!("missing: Debian package {name} ({why})"));
    }
    util::require_root("setup", "installing Debian packages needs apt-get as root")?;
    util::run(
        Command::new("apt-get").arg("update"),
        "check network access to the Debian mirrors and /etc/apt/sources.list",
    )?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        "see apt's message above; `dpkg --configure -a` fixes an interrupted install",
    )?;
    Ok(true)
}

/// The packages among `names` that dpkg-query's `${Package} ${Status}` lines do not show as installed.
fn missing_packages<'a>(names: &[&'a str], dpkg_query_stdout: &str) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|name| {
            !dpkg_query_stdout.lines().any(|line| {
                line.split_once(' ')
                    .is_some_and(|(pkg, status)| pkg == *name && status == "install ok installed")
            })
        })
        .collect()
}

/// Ensures the nightly toolchain and its rust-src (needed by `-Z build-std=core` for the BPF target);
/// returns whether it installed anything.
fn nightly_rust_src() -> Result<bool> {
    let mut changed = false;
    let toolchains = util::stdout(
        Command::new("rustup").args(["toolchain", "list"]),
        "rustup is needed to manage the nightly toolchain",
    )?;
    let has_nightly = toolchains.lines().any(|l| l.starts_with("nightly"));
    if !has_nightly {
        say("missing: nightly toolchain (builds the eBPF programs)");
        util::run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "check network access to the Rust distribution server",
        )?;
        changed = true;
    }
    let components = util::stdout(
        Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]),
        "rustup could not list nightly's components",
    )?;
    if components.lines().any(|l| l.trim() == "rust-src") {
        say("ok: nightly toolchain with rust-src");
    } else {
        say("missing: rust-src for nightly (build-std=core for bpfel-unknown-none)");
        util::run(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "check network access to the Rust distribution server",
        )?;
        changed = true;
    }
    Ok(changed)
}

/// cargo-fuzz version checked here; `--locked` so a fresh machine builds the same.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Ensures `cargo fuzz` works (for `cargo xtask fuzz`; not part of setup so
/// CI does not pay for it); returns whether it installed it.
pub fn cargo_fuzz() -> Result<bool> {
    if util::probe(Command::new("cargo").args(["fuzz", "--version"])) {
        say("ok: cargo-fuzz");
        return Ok(false);
    }
    say("missing: cargo-fuzz (runs the protocol fuzz targets); installing");
    util::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION),
        "cargo install failed: check that crates.io is reachable",
    )?;
    Ok(true)
}

/// Ensures `bpf-linker` is on PATH, building it against nightly's own LLVM so the bitcode rustc emits
/// and the LLVM that links it are the same version; returns whether it installed it.
fn bpf_linker() -> Result<bool> {
    if util::probe(Command::new("bpf-linker").arg("--version")) {
        say("ok: bpf-linker");
        return Ok(false);
    }
    say("missing: bpf-linker (links the eBPF object); building it, this takes a few minutes");
    let sysroot = util::stdout(
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]),
        "the nightly toolchain should have been installed just above",
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let files: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading nightly's library directory {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let Some(llvm) = LlvmDylib::find(&files) else {
        bail!(
            "no libLLVM-<major>-….so in {} (found: {}); bpf-linker needs nightly's shared LLVM",
            lib_dir.display(),
            files.join(", ")
        );
    };
    say(format!(
        "linking bpf-linker against {} (LLVM {})",
        llvm.file, llvm.major
    ));
    let lib = lib_dir.display();
    util::run(
        Command::new("cargo")
            // Would override the RUSTFLAGS below if inherited.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env(
                "RUSTFLAGS",
                format!(
                    "-L {lib} -l dylib={} -C link-arg=-Wl,-rpath,{lib}",
                    llvm.link_name
                ),
            )
            .args(["+nightly", "install", "bpf-linker", "--locked", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{},no-llvm-linking", llvm.major)),
        "if the feature is unknown, nightly moved to a newer LLVM: bump BPF_LINKER_VERSION in xtask/src/setup.rs",
    )?;
    if !util::probe(Command::new("bpf-linker").arg("--version")) {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` still fails: add cargo's bin directory (~/.cargo/bin) to PATH"
        );
    }
    Ok(true)
}

/// Nightly's shared LLVM library, as named in its sysroot (e.g. `libLLVM-22-rust-1.97.0-nightly.so`).
#[derive(Debug, PartialEq)]
struct LlvmDylib {
    file: String,
    /// What `-l dylib=` takes: the file name without `lib` and `.so`.
    link_name: String,
    /// LLVM major version, selecting bpf-linker's `llvm-<major>` feature.
    major: u32,
}

impl LlvmDylib {
    fn find(files: &[String]) -> Option<Self> {
        files.iter().find_map(|file| {
            let link_name = file.strip_prefix("lib")?.strip_suffix(".so")?;
            let rest = link_name.strip_prefix("LLVM-")?;
            let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            Some(Self {
                file: file.clone(),
                link_name: link_name.to_owned(),
                major: digits.parse().ok()?,
            })
        })
    }
}

/// Tells where initdb/pg_ctl are: Debian keeps them off PATH, in /usr/lib/postgresql/<ver>/bin.
fn report_postgres_bin() {
    let found = fs::read_dir("/usr/lib/postgresql").ok().and_then(|dirs| {
        dirs.filter_map(|d| Some(d.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
    });
    match found {
        Some(bin) => say(format!("PostgreSQL server binaries: {}", bin.display())),
        None => say("warning: no /usr/lib/postgresql/<ver>/bin/initdb found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_dylib_is_derived_from_the_sysroot_listing() {
        let files = [
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "libLLVM-22-rust-1.97.0-nightly.so",
            "rustlib",
        ]
        .map(String::from);
        assert_eq!(
            LlvmDylib::find(&files),
            Some(LlvmDylib {
                file: "libLLVM-22-rust-1.97.0-nightly.so".into(),
                link_name: "LLVM-22-rust-1.97.0-nightly".into(),
                major: 22,
            })
        );
        assert_eq!(LlvmDylib::find(&["libLLVM.so.22.1".into()]), None);
    }

    #[test]
    fn packages_not_reported_installed_are_missing() {
        let stdout = "postgresql install ok installed\n\
                      clang deinstall ok config-files\n";
        assert_eq!(
            missing_packages(&["postgresql", "clang", "pgbouncer"], stdout),
            ["clang", "pgbouncer"]
        );
    }
}
