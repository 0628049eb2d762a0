//! Typed errors: every failure names the CUDA error (if any), the operation
//! or kernel, and the shapes involved.

use std::fmt;

pub use cust::error::CudaError;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong in wdmoe-cuda.
#[derive(Debug, Clone, PartialEq)]
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
        /// The CUDA error.
        error: CudaError,
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
    /// Valid input that these kernels do not support (e.g. a dimension that
    /// is not a multiple of 16, or a GPU older than compute capability 8.0).
    Unsupported {
        /// The operation.
        op: &'static str,
        /// Why.
        detail: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDevice { detail } => write!(f, "no usable CUDA device: {detail}"),
            Error::Cuda { op, detail, error } => {
                write!(
                    f,
                    "CUDA error {error:?} (code {}) in {op} [{detail}]",
                    *error as u32
                )
            }
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
        }
    }
}

impl std::error::Error for Error {}

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
