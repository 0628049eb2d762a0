//! Raw layer for driver calls newer than cust_raw's CUDA 11.4 bindings,
//! declared by hand from CUDA 13.0's `cuda.h` (layouts checked against it).

#![allow(non_camel_case_types, non_snake_case, missing_docs)]

use std::ffi::c_void;

use cust::sys::{CUfunction, CUresult, CUstream};

/// `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION` (cuda.h: 6).
pub const CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: u32 = 6;

/// `CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION` (cuda.h: 4; value: `struct {
/// unsigned x, y, z; } clusterDim`).
pub const CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION: u32 = 4;

/// `CUlaunchAttribute`: id, 4 bytes padding, a 64-byte value union.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct CUlaunchAttribute {
    pub id: u32,
    pub pad: [u8; 4],
    pub value: [u8; 64],
}

/// `CUlaunchConfig`.
#[repr(C)]
pub struct CUlaunchConfig {
    pub gridDimX: u32,
    pub gridDimY: u32,
    pub gridDimZ: u32,
    pub blockDimX: u32,
    pub blockDimY: u32,
    pub blockDimZ: u32,
    pub sharedMemBytes: u32,
    pub hStream: CUstream,
    pub attrs: *mut CUlaunchAttribute,
    pub numAttrs: u32,
}

/// `CUtensorMap` (cuda.h): 128 opaque bytes, 64-byte aligned (the kernels
/// take it by value as a `__grid_constant__` parameter).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct CUtensorMap {
    pub opaque: [u64; 16],
}

/// `CU_TENSOR_MAP_DATA_TYPE_FLOAT16` (cuda.h: 6).
pub const CU_TENSOR_MAP_DATA_TYPE_FLOAT16: u32 = 6;
/// `CU_TENSOR_MAP_INTERLEAVE_NONE`.
pub const CU_TENSOR_MAP_INTERLEAVE_NONE: u32 = 0;
/// `CU_TENSOR_MAP_SWIZZLE_128B` (cuda.h: 3).
pub const CU_TENSOR_MAP_SWIZZLE_128B: u32 = 3;
/// `CU_TENSOR_MAP_L2_PROMOTION_L2_256B` (cuda.h: 3).
pub const CU_TENSOR_MAP_L2_PROMOTION_L2_256B: u32 = 3;
/// `CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE` (zeros out of bounds).
pub const CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: u32 = 0;

#[link(name = "cuda")]
extern "C" {
    /// `CUresult cuTensorMapEncodeTiled(CUtensorMap*, CUtensorMapDataType,
    /// cuuint32_t rank, void* globalAddress, const cuuint64_t* globalDim,
    /// const cuuint64_t* globalStrides, const cuuint32_t* boxDim, const
    /// cuuint32_t* elementStrides, interleave, swizzle, l2Promotion, oobFill)`
    /// (CUDA >= 12.0; the enums are C enums, i.e. 32-bit).
    pub fn cuTensorMapEncodeTiled(
        tensorMap: *mut CUtensorMap,
        tensorDataType: u32,
        tensorRank: u32,
        globalAddress: *mut c_void,
        globalDim: *const u64,
        globalStrides: *const u64,
        boxDim: *const u32,
        elementStrides: *const u32,
        interleave: u32,
        swizzle: u32,
        l2Promotion: u32,
        oobFill: u32,
    ) -> CUresult;

    /// `CUresult cuLaunchKernelEx(const CUlaunchConfig*, CUfunction, void**, void**)` (CUDA >= 11.8).
    pub fn cuLaunchKernelEx(
        config: *const CUlaunchConfig,
        f: CUfunction,
        kernelParams: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> CUresult;
}

// Layouts of the hand-declared structs as cuda.h (CUDA 13.0, 64-bit)
// lays them out: checked at compile time.
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<CUlaunchAttribute>() == 72);
    assert!(offset_of!(CUlaunchAttribute, value) == 8);
    assert!(size_of::<CUlaunchConfig>() == 56);
    assert!(offset_of!(CUlaunchConfig, sharedMemBytes) == 24);
    assert!(offset_of!(CUlaunchConfig, hStream) == 32);
    assert!(offset_of!(CUlaunchConfig, attrs) == 40);
    assert!(offset_of!(CUlaunchConfig, numAttrs) == 48);
    assert!(size_of::<CUtensorMap>() == 128);
    assert!(align_of::<CUtensorMap>() == 64);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_cuda_h() {
        assert_eq!(std::mem::size_of::<CUlaunchAttribute>(), 72);
        assert_eq!(std::mem::size_of::<CUlaunchConfig>(), 56);
        assert_eq!(std::mem::offset_of!(CUlaunchConfig, hStream), 32);
        assert_eq!(std::mem::offset_of!(CUlaunchConfig, numAttrs), 48);
        assert_eq!(std::mem::size_of::<CUtensorMap>(), 128);
    }
}
