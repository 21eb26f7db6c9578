//! Compiles `gateway-ebpf` for the BPF target (nightly + bpf-linker, both
//! installed by `cargo xtask setup`) so the object is embedded in the
//! `chokepoint` binary and the daemon ships as one file.
use std::{env, fs, path::PathBuf};

fn main() -> aya_build::Result<()> {
    println!("cargo:rerun-if-changed=../gateway-common/src");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("gateway-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: "../gateway-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    if !object.exists() {
        // AYA_BUILD_SKIP=1 (host-only iteration): embed nothing, and the
        // loader says so at run time instead of failing to compile here.
        fs::write(&object, b"")?;
    }
    Ok(())
}
