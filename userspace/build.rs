//! Builds the kernel programs (ebpf/programs) for bpfel-unknown-none with Debian's rustc and
//! bpf-linker, so the `airlock` binary always embeds a matching object.
//!
//! The kernel crate needs `-Z build-std=core`, which the rustup toolchain here cannot do (no
//! rust-src), so it is built by a separate cargo invocation with `/usr/bin/rustc`
//! (`cargo xtask setup` installs it). `AIRLOCK_EBPF_OBJECT=path` embeds a prebuilt object
//! instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let root = manifest_dir
        .parent()
        .expect("userspace/ sits in the workspace");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets this"));
    let dest = out_dir.join("airlock.bpf.o");

    println!("cargo:rerun-if-env-changed=AIRLOCK_EBPF_OBJECT");
    if let Ok(prebuilt) = env::var("AIRLOCK_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        replace(std::path::Path::new(&prebuilt), &dest);
        return;
    }
    for dir in ["ebpf/programs/src", "ebpf/common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in ["ebpf/programs/Cargo.toml", "ebpf/common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    for tool in [DEBIAN_RUSTC, DEBIAN_CARGO] {
        if !Path::new(tool).exists() {
            panic!(
                "{tool} is missing: the kernel programs build with Debian's rustc. \
                 Run `cargo xtask setup` first."
            );
        }
    }
    let target_dir = root.join("target").join("ebpf");
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_home = env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let path = format!(
        "{cargo_home}/bin:{}",
        env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    // A clean environment: the outer cargo's RUSTFLAGS, wrappers and target settings must
    // not leak into a build for another target with another compiler.
    let status = Command::new(DEBIAN_CARGO)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF: the socket-storage maps are BTF-defined (the kernel requires it for them).
        .env("RUSTFLAGS", "-C link-arg=--btf")
        .current_dir(root.join("ebpf/programs"))
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("run /usr/bin/cargo for the kernel programs");
    assert!(
        status.success(),
        "building the kernel programs failed (see above)"
    );
    let object = target_dir.join("bpfel-unknown-none/release/airlock");
    replace(&object, &dest);
}

/// Copies `from` over `to` as a new file: removing `to` first means a hard-linked copy of the
/// target directory (another checkout's build) never sees its object overwritten in place.
fn replace(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).expect("copy the kernel object");
}
