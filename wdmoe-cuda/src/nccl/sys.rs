//! Raw NCCL calls, declared by hand from NCCL 2.x's `nccl.h` (the ABI has
//! been stable since 2.7: these signatures and enum values are the same in
//! every later release). Linked against `libnccl.so.2` by build.rs (feature
//! `nccl`); on a machine with no NCCL, against the stub of
//! `stub/make-stub.sh`.

#![allow(non_camel_case_types, non_snake_case, missing_docs)]

use std::ffi::{c_char, c_int, c_void};

use cust::sys::CUstream;

/// `ncclResult_t` (a C enum: 32-bit).
pub type ncclResult_t = u32;
/// `ncclSuccess`.
pub const NCCL_SUCCESS: ncclResult_t = 0;
/// `ncclUnhandledCudaError`.
pub const NCCL_UNHANDLED_CUDA_ERROR: ncclResult_t = 1;
/// `ncclSystemError` (what the stub library returns).
pub const NCCL_SYSTEM_ERROR: ncclResult_t = 2;
/// `ncclInternalError`.
pub const NCCL_INTERNAL_ERROR: ncclResult_t = 3;
/// `ncclInvalidArgument`.
pub const NCCL_INVALID_ARGUMENT: ncclResult_t = 4;
/// `ncclInvalidUsage`.
pub const NCCL_INVALID_USAGE: ncclResult_t = 5;
/// `ncclRemoteError` (a peer failed or went away).
pub const NCCL_REMOTE_ERROR: ncclResult_t = 6;
/// `ncclInProgress` (non-blocking communicators).
pub const NCCL_IN_PROGRESS: ncclResult_t = 7;

/// `ncclDataType_t` (a C enum).
pub type ncclDataType_t = u32;
/// `ncclInt32`.
pub const NCCL_INT32: ncclDataType_t = 2;
/// `ncclUint32`.
pub const NCCL_UINT32: ncclDataType_t = 3;
/// `ncclFloat16`.
pub const NCCL_FLOAT16: ncclDataType_t = 6;
/// `ncclFloat32`.
pub const NCCL_FLOAT32: ncclDataType_t = 7;

/// `NCCL_UNIQUE_ID_BYTES`.
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// `ncclUniqueId`: 128 opaque bytes, passed by value to `ncclCommInitRank`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ncclUniqueId {
    pub internal: [c_char; NCCL_UNIQUE_ID_BYTES],
}

/// `struct ncclComm` (opaque).
#[repr(C)]
pub struct ncclComm {
    _private: [u8; 0],
}
/// `ncclComm_t`.
pub type ncclComm_t = *mut ncclComm;

extern "C" {
    /// `ncclResult_t ncclGetVersion(int* version)`.
    pub fn ncclGetVersion(version: *mut c_int) -> ncclResult_t;
    /// `ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId)`.
    pub fn ncclGetUniqueId(uniqueId: *mut ncclUniqueId) -> ncclResult_t;
    /// `ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank)`.
    pub fn ncclCommInitRank(
        comm: *mut ncclComm_t,
        nranks: c_int,
        commId: ncclUniqueId,
        rank: c_int,
    ) -> ncclResult_t;
    /// `ncclResult_t ncclCommDestroy(ncclComm_t comm)`.
    pub fn ncclCommDestroy(comm: ncclComm_t) -> ncclResult_t;
    /// `ncclResult_t ncclCommAbort(ncclComm_t comm)`.
    pub fn ncclCommAbort(comm: ncclComm_t) -> ncclResult_t;
    /// `ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError)`.
    pub fn ncclCommGetAsyncError(comm: ncclComm_t, asyncError: *mut ncclResult_t) -> ncclResult_t;
    /// `const char* ncclGetErrorString(ncclResult_t result)`.
    pub fn ncclGetErrorString(result: ncclResult_t) -> *const c_char;
    /// `ncclResult_t ncclGroupStart()`.
    pub fn ncclGroupStart() -> ncclResult_t;
    /// `ncclResult_t ncclGroupEnd()`.
    pub fn ncclGroupEnd() -> ncclResult_t;
    /// `ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t
    /// datatype, int peer, ncclComm_t comm, cudaStream_t stream)`.
    pub fn ncclSend(
        sendbuff: *const c_void,
        count: usize,
        datatype: ncclDataType_t,
        peer: c_int,
        comm: ncclComm_t,
        stream: CUstream,
    ) -> ncclResult_t;
    /// `ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t
    /// datatype, int peer, ncclComm_t comm, cudaStream_t stream)`.
    pub fn ncclRecv(
        recvbuff: *mut c_void,
        count: usize,
        datatype: ncclDataType_t,
        peer: c_int,
        comm: ncclComm_t,
        stream: CUstream,
    ) -> ncclResult_t;
}

/// The symbols above, for the stub generator's check (`stub/make-stub.sh`
/// declares exactly these).
pub const SYMBOLS: [&str; 11] = [
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclCommGetAsyncError",
    "ncclGetErrorString",
    "ncclGroupStart",
    "ncclGroupEnd",
    "ncclSend",
    "ncclRecv",
];

const _: () = {
    assert!(std::mem::size_of::<ncclUniqueId>() == 128);
};
