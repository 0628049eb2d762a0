//! Typed errors: every failure names the CUDA error (if any), the operation
//! or kernel, and the shapes involved.

use std::fmt;

pub use cust::error::CudaError;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in wdmoe-cuda. More variants may be added
/// (`#[non_exhaustive]`); [`std::error::Error::source`] gives the driver's
/// [`CudaError`] of [`Error::Cuda`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// No usable CUDA device/driver (none present, a stub libcuda, or the
    /// device ordinal does not exist).
    NoDevice {
        /// What was tried and what the driver said.
        detail: String,
    },
    /// A CUDA driver call failed.
    Cuda {
        /// The driver operation or kernel (`"launch gemv_gated_nt2_u4"`).
        op: String,
        /// Shapes/arguments of the call.
        detail: String,
        /// The CUDA error (cust's name for `code`; `UnknownError` for a
        /// code cust does not know).
        error: CudaError,
        /// The driver's `CUresult`, as returned (also for the calls
        /// declared by hand in [`crate::sys`]).
        code: u32,
    },
    /// Arguments whose shapes do not fit together (lengths, token counts).
    Shape {
        /// The operation.
        op: &'static str,
        /// What does not fit.
        detail: String,
    },
    /// A device buffer is not aligned as the kernel's vector loads need.
    Misaligned {
        /// The operation.
        op: &'static str,
        /// Which buffer.
        what: &'static str,
        /// Its device address.
        addr: u64,
        /// Alignment needed, in bytes.
        align: u64,
    },
    /// The selection policy's parameters or inputs, as wdmoe-core rejects
    /// them (the one validation of a policy).
    Policy(wdmoe_core::Error),
    /// Valid input that these kernels do not support (e.g. a dimension that
    /// is not a multiple of 16, or a GPU older than compute capability 8.0).
    Unsupported {
        /// The operation.
        op: &'static str,
        /// Why.
        detail: String,
    },
    /// A model weight could not be read or does not fit (its checkpoint
    /// tensor name and why).
    Weights {
        /// Hugging Face tensor name.
        name: String,
        /// What went wrong.
        detail: String,
    },
    /// The model's output holds a NaN or an infinity.
    NonFinite {
        /// Where.
        what: String,
    },
    /// An NCCL call failed (feature `nccl`; `crate::nccl`).
    Nccl {
        /// The NCCL call (`"ncclSend"`).
        op: String,
        /// Arguments of the call (peer, count, rank).
        detail: String,
        /// NCCL's `ncclResult_t`, as returned.
        code: u32,
        /// `ncclGetErrorString` of the code.
        message: String,
    },
    /// A wait for GPU work or a peer gave up (a peer that died or hangs);
    /// the communicator, if any, was aborted.
    Timeout {
        /// What was waited for.
        op: String,
        /// Seconds waited.
        waited_s: f64,
    },
    /// The distributed protocol or its configuration (a placement that leaves
    /// an expert nowhere, a malformed header from a peer).
    Dist {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl Error {
    /// A cust call's error, with the operation and shapes (keeps its code).
    pub fn cuda(op: impl Into<String>, detail: impl Into<String>, error: CudaError) -> Error {
        Error::Cuda {
            op: op.into(),
            detail: detail.into(),
            error,
            code: error as u32,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDevice { detail } => write!(f, "no usable CUDA device: {detail}"),
            Error::Cuda {
                op,
                detail,
                error,
                code,
            } => write!(f, "CUDA error {error:?} (code {code}) in {op} [{detail}]"),
            Error::Shape { op, detail } => write!(f, "shape error in {op}: {detail}"),
            Error::Misaligned {
                op,
                what,
                addr,
                align,
            } => write!(
                f,
                "{op}: buffer {what} at {addr:#x} is not {align}-byte aligned"
            ),
            Error::Unsupported { op, detail } => write!(f, "{op} unsupported: {detail}"),
            Error::Policy(e) => write!(f, "selection policy: {e}"),
            Error::Weights { name, detail } => write!(f, "weight {name}: {detail}"),
            Error::NonFinite { what } => write!(f, "non-finite values in {what}"),
            Error::Nccl {
                op,
                detail,
                code,
                message,
            } => write!(f, "NCCL error {code} ({message}) in {op} [{detail}]"),
            Error::Timeout { op, waited_s } => {
                write!(f, "timed out after {waited_s:.1} s waiting for {op}")
            }
            Error::Dist { op, detail } => write!(f, "{op}: {detail}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Cuda { error, .. } => Some(error),
            Error::Policy(e) => Some(e),
            _ => None,
        }
    }
}

/// Every [`CudaError`] of cust 0.3.2, to name a raw `CUresult` code.
const CUDA_ERRORS: [CudaError; 60] = {
    use CudaError::*;
    [
        InvalidValue,
        OutOfMemory,
        NotInitialized,
        Deinitialized,
        ProfilerDisabled,
        ProfilerNotInitialized,
        ProfilerAlreadyStarted,
        ProfilerAlreadyStopped,
        NoDevice,
        InvalidDevice,
        InvalidImage,
        InvalidContext,
        ContextAlreadyCurrent,
        MapFailed,
        UnmapFailed,
        ArrayIsMapped,
        AlreadyMapped,
        NoBinaryForGpu,
        AlreadyAcquired,
        NotMapped,
        NotMappedAsArray,
        NotMappedAsPointer,
        EccUncorrectable,
        UnsupportedLimit,
        ContextAlreadyInUse,
        PeerAccessUnsupported,
        InvalidPtx,
        InvalidGraphicsContext,
        NvlinkUncorrectable,
        InvalidSource,
        FileNotFound,
        SharedObjectSymbolNotFound,
        SharedObjectInitFailed,
        OperatingSystemError,
        InvalidHandle,
        NotFound,
        NotReady,
        IllegalAddress,
        LaunchOutOfResources,
        LaunchTimeout,
        LaunchIncompatibleTexturing,
        PeerAccessAlreadyEnabled,
        PeerAccessNotEnabled,
        PrimaryContextActive,
        ContextIsDestroyed,
        AssertError,
        TooManyPeers,
        HostMemoryAlreadyRegistered,
        HostMemoryNotRegistered,
        HardwareStackError,
        IllegalInstruction,
        MisalignedAddress,
        InvalidAddressSpace,
        InvalidProgramCounter,
        LaunchFailed,
        NotPermitted,
        NotSupported,
        UnknownError,
        InvalidMemoryAllocation,
        OptixError,
    ]
};

/// cust's name for a raw driver `CUresult` code (`UnknownError` if it has none).
pub fn cuda_error_of(code: u32) -> CudaError {
    CUDA_ERRORS
        .iter()
        .copied()
        .find(|e| *e as u32 == code)
        .unwrap_or(CudaError::UnknownError)
}

/// A raw driver result (`CUresult`) as this crate's error, keeping its code.
pub(crate) fn check_cu(
    rc: cust::sys::CUresult,
    op: impl FnOnce() -> String,
    detail: impl FnOnce() -> String,
) -> Result<()> {
    if rc == cust::sys::cudaError_enum::CUDA_SUCCESS {
        return Ok(());
    }
    let code = rc as u32;
    Err(Error::Cuda {
        op: op(),
        detail: detail(),
        error: cuda_error_of(code),
        code,
    })
}

/// Result-wrapper layer: attach the operation and shapes to a raw CUDA error.
pub(crate) trait CudaCtx<T> {
    fn ctx(self, op: &str, detail: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CudaCtx<T> for std::result::Result<T, CudaError> {
    fn ctx(self, op: &str, detail: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error::Cuda {
            op: op.to_string(),
            detail: detail(),
            error,
            code: error as u32,
        })
    }
}

pub(crate) fn shape(op: &'static str, detail: String) -> Error {
    Error::Shape { op, detail }
}

pub(crate) fn check_align(
    op: &'static str,
    what: &'static str,
    addr: u64,
    align: u64,
) -> Result<()> {
    if addr % align != 0 {
        return Err(Error::Misaligned {
            op,
            what,
            addr,
            align,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn raw_codes_keep_their_value_and_name() {
        assert_eq!(cuda_error_of(1), CudaError::InvalidValue);
        assert_eq!(cuda_error_of(700), CudaError::IllegalAddress);
        assert_eq!(cuda_error_of(12345), CudaError::UnknownError);
        let e = check_cu(
            cust::sys::cudaError_enum::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            || "launch k".into(),
            || "grid 1".into(),
        )
        .unwrap_err();
        match &e {
            Error::Cuda { error, code, .. } => {
                assert_eq!((*error, *code), (CudaError::LaunchOutOfResources, 701));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("code 701"), "{e}");
        assert!(e.source().is_some());
        let s = shape("op", "bad".into());
        assert!(s.source().is_none());
    }

    #[test]
    fn every_listed_error_is_distinct() {
        for (i, a) in CUDA_ERRORS.iter().enumerate() {
            for b in &CUDA_ERRORS[i + 1..] {
                assert_ne!(*a as u32, *b as u32, "{a:?} {b:?}");
            }
        }
    }
}
