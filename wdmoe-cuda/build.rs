//! Compiles every `kernels/*.cu` with nvcc into an sm_90a cubin (Hopper, the
//! machine code that runs) and compute_80 PTX (JIT-compiled by the driver on
//! any other GPU of compute capability >= 8.0), written to OUT_DIR and embedded
//! by `src/ptx.rs`.
//!
//! With feature `nccl` it links `libnccl.so.2` ([`link_nccl`]).
//!
//! nvcc is found via `NVCC`, `CUDA_PATH`/`CUDA_ROOT`/`CUDA_HOME` (`bin/nvcc`),
//! `PATH`, `/usr/local/cuda/bin`, then the pip wheels (`nvidia/cu13/bin/nvcc`
//! in python3's site-packages). See the panic message for how to install it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "wdmoe-cuda needs nvcc (CUDA 13.0) to build its kernels. Install it with\n  \
    pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85\n\
    or point NVCC / CUDA_PATH at a CUDA toolkit. Linking also needs libcuda: on a machine with no \
    driver, run wdmoe-cuda/stub/make-stub.sh DIR and export CUDA_LIBRARY_PATH=DIR (see .ci/cuda.sh).";

fn is_file(p: &Path) -> bool {
    p.is_file()
}

fn pip_nvcc() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import site,sys; print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .map(|l| Path::new(l.trim()).join("nvidia/cu13/bin/nvcc"))
        .find(|p| is_file(p))
}

fn find_nvcc() -> PathBuf {
    if let Ok(p) = env::var("NVCC") {
        let p = PathBuf::from(p);
        if is_file(&p) {
            return p;
        }
    }
    for var in ["CUDA_PATH", "CUDA_ROOT", "CUDA_HOME"] {
        if let Ok(root) = env::var(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if is_file(&p) {
                return p;
            }
        }
    }
    if let Ok(path) = env::var("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if is_file(&p) {
                return p;
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if is_file(&p) {
        return p;
    }
    if let Some(p) = pip_nvcc() {
        return p;
    }
    panic!("nvcc not found.\n{INSTALL_HINT}");
}

fn nvcc(nvcc: &Path, args: &[&str], src: &Path, out: &Path) {
    let status = Command::new(nvcc)
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("could not run {}: {e}\n{INSTALL_HINT}", nvcc.display()));
    if !status.success() {
        panic!("nvcc failed on {} ({status})", src.display());
    }
}

/// Feature `nccl`: links `libnccl.so.2` by its file name (the pip wheels and
/// the GPU image ship no unversioned `libnccl.so`) from `NCCL_LIBRARY_PATH`
/// (a folder holding it), else from python3's `nvidia.nccl` wheel
/// (`nvidia/nccl/lib`). The run-time loader finds the library through
/// `LD_LIBRARY_PATH` (wdmoe-cuda/run-gpu-dist.sh sets it).
fn link_nccl() {
    println!("cargo:rerun-if-env-changed=NCCL_LIBRARY_PATH");
    let dir = match env::var("NCCL_LIBRARY_PATH") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))",
                ])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            match out {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => panic!(
                    "feature `nccl`: libnccl.so.2 not found. Set NCCL_LIBRARY_PATH to a folder \
                     holding libnccl.so.2 (pip install nvidia-nccl-cu13 gives one), or, on a \
                     machine with no NCCL, to the stub: bash wdmoe-cuda/stub/make-stub.sh DIR and \
                     NCCL_LIBRARY_PATH=DIR/lib64"
                ),
            }
        }
    };
    if !dir.join("libnccl.so.2").is_file() {
        panic!(
            "feature `nccl`: no libnccl.so.2 in {} (NCCL_LIBRARY_PATH)",
            dir.display()
        );
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib:+verbatim=libnccl.so.2");
}

fn main() {
    if env::var_os("CARGO_FEATURE_NCCL").is_some() {
        link_nccl();
    }
    for var in ["NVCC", "CUDA_PATH", "CUDA_ROOT", "CUDA_HOME", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let nvcc_path = find_nvcc();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let mut names: Vec<String> = fs::read_dir("kernels")
        .expect("kernels/ folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut table = String::from("// generated by build.rs\n");
    for name in &names {
        let src = PathBuf::from("kernels").join(format!("{name}.cu"));
        println!("cargo:rerun-if-changed={}", src.display());
        let cubin = out_dir.join(format!("{name}.sm_90a.cubin"));
        let ptx = out_dir.join(format!("{name}.compute_80.ptx"));
        let common = ["-O3", "-std=c++17", "-lineinfo", "--use_fast_math"];
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["-cubin", "-gencode=arch=compute_90a,code=sm_90a"]);
        nvcc(&nvcc_path, &a, &src, &cubin);
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["-ptx", "-arch=compute_80"]);
        nvcc(&nvcc_path, &a, &src, &ptx);
        table.push_str(&format!(
            "pub const {upper}_CUBIN: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.sm_90a.cubin\"));\n\
             pub const {upper}_PTX: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/{name}.compute_80.ptx\"));\n",
            upper = name.to_uppercase()
        ));
    }
    fs::write(out_dir.join("kernels.rs"), table).expect("write kernels.rs");
}
