//! Declares the `loom` cfg, so `--cfg loom` model-checking builds are not "unexpected".
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
