//! Picks the linker script of the target and, when `WDMOE_CAPI_LIB_DIR`
//! names a directory with `libwdmoe_core.a` (the C static library built for
//! the same target by `../staticlib.sh`), links it and enables the C-ABI
//! measurements (`--cfg wdmoe_capi`).
use std::env;
use std::path::PathBuf;

fn main() {
    let target = env::var("TARGET").unwrap_or_default();
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rustc-check-cfg=cfg(wdmoe_capi)");
    println!("cargo:rustc-env=FW_TARGET={target}");
    println!("cargo:rerun-if-env-changed=WDMOE_CAPI_LIB_DIR");
    let script = if target.starts_with("thumbv") {
        "link-arm.ld"
    } else if target.starts_with("riscv32") {
        "link-riscv.ld"
    } else {
        return; // host: `cargo check` only
    };
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rustc-link-arg=-T{}", dir.join(script).display());
    if let Ok(lib) = env::var("WDMOE_CAPI_LIB_DIR") {
        if !lib.is_empty() {
            println!("cargo:rustc-link-search=native={lib}");
            println!("cargo:rustc-link-lib=static=wdmoe_core");
            println!("cargo:rustc-cfg=wdmoe_capi");
            println!("cargo:rerun-if-changed={lib}/libwdmoe_core.a");
        }
    }
}
