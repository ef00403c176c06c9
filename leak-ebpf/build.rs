// Rebuild when bpf-linker changes: it is part of this crate's toolchain.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
