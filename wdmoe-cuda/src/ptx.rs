//! The kernels of `kernels/*.cu`, compiled by build.rs: an sm_90a cubin (used
//! on compute capability 9.0) and compute_80 PTX (JIT-compiled elsewhere).
#![allow(missing_docs)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
