//! Typed kernel launches: every kernel's parameters are one `#[repr(C)]`
//! struct declared with [`kernel_params!`] (fields in the order and of the
//! types of the kernel's C signature, which the `// SAFETY:` comment at each
//! launch quotes), launched by [`Gpu::launch`] by value; the pointer array the
//! driver wants is generated from the struct, never built by hand. Function
//! handles are looked up once per kernel name and kept ([`Kernels`]).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use cust::function::{BlockSize, GridSize};
use cust::module::Module;
use cust::sys::CUfunction;

use crate::error::{check_cu, CudaCtx, Result};
use crate::runtime::Gpu;
use crate::sys;

/// A kernel's parameter struct (declared with [`kernel_params!`]).
///
/// # Safety
/// `arg_ptrs` must return one pointer per field of `self`, in declaration
/// order, each pointing at that field.
pub(crate) unsafe trait KernelParams {
    /// Pointers to the fields (the driver's `kernelParams`).
    type Ptrs: AsRef<[*mut c_void]>;
    /// One pointer per field, in order.
    fn arg_ptrs(&mut self) -> Self::Ptrs;
}

/// Declares a kernel parameter struct: `#[repr(C)]`, `Clone + Copy`, and
/// its [`KernelParams`] impl (pointers to the fields in order).
macro_rules! kernel_params {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        $vis struct $name { $($(#[$fm])* pub(crate) $field: $ty),* }
        // SAFETY: one pointer per field, in declaration order.
        unsafe impl $crate::launch::KernelParams for $name {
            type Ptrs = [*mut ::std::ffi::c_void; 0 $(+ { let _ = stringify!($field); 1 })*];
            fn arg_ptrs(&mut self) -> Self::Ptrs {
                [$(&mut self.$field as *mut $ty as *mut ::std::ffi::c_void),*]
            }
        }
    };
}
pub(crate) use kernel_params;

/// A function handle (`CUfunction`) of a loaded module.
#[derive(Clone, Copy)]
struct Func(CUfunction);
// SAFETY: a CUfunction is an opaque driver handle, valid in every thread
// for as long as its module is loaded (the Gpu owns the modules and this
// cache, and drops the cache with them).
unsafe impl Send for Func {}

/// Function handles looked up once per (module, kernel name) and kept for
/// the life of the [`Gpu`] (no `cuModuleGetFunction` per launch). Keyed by
/// the module's place in the Gpu (not its address: a Gpu may move).
#[derive(Default)]
pub(crate) struct Kernels {
    map: Mutex<HashMap<(u8, &'static str), Func>>,
}

impl Kernels {
    fn get(&self, slot: u8, module: &Module, name: &'static str) -> Result<CUfunction> {
        let key = (slot, name);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&key) {
            return Ok(f.0);
        }
        let f = module
            .get_function(name)
            .ctx(name, || "cuModuleGetFunction".into())?
            .to_raw();
        map.insert(key, Func(f));
        Ok(f)
    }
}

/// Where and how to launch: grid, block, dynamic shared memory,
/// programmatic dependent launch, and thread-block clusters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) grid: GridSize,
    pub(crate) block: BlockSize,
    pub(crate) shared: u32,
    pub(crate) pdl: bool,
    /// Blocks per cluster in x, y, z (compute capability >= 9.0).
    pub(crate) cluster: Option<(u32, u32, u32)>,
}

impl Shape {
    /// A plain launch (no PDL, no dynamic shared memory).
    pub(crate) fn new(grid: impl Into<GridSize>, block: impl Into<BlockSize>) -> Shape {
        Shape {
            grid: grid.into(),
            block: block.into(),
            shared: 0,
            pdl: false,
            cluster: None,
        }
    }

    /// With `bytes` of dynamic shared memory.
    pub(crate) fn shared(mut self, bytes: u32) -> Shape {
        self.shared = bytes;
        self
    }

    /// With programmatic dependent launch allowed when `on`.
    pub(crate) fn pdl(mut self, on: bool) -> Shape {
        self.pdl = on;
        self
    }

    /// In thread-block clusters of `dims` blocks (each a divisor of the
    /// grid's; at most 8 blocks in all, the portable size). Needs compute
    /// capability >= 9.0: elsewhere the launch fails (`Unsupported`).
    pub(crate) fn cluster(mut self, dims: (u32, u32, u32)) -> Shape {
        self.cluster = Some(dims);
        self
    }
}

impl Gpu {
    /// The one place a kernel is launched: kernel `name` of `module` with
    /// `params` (copied by the driver at the call; nothing on the host is
    /// read after it returns). With `shape.pdl` (on a GPU of compute
    /// capability >= 9.0) the launch allows programmatic dependent launch:
    /// the kernel may start while the previous kernel of the stream
    /// finishes, and must call `griddepcontrol.wait` before touching memory
    /// that kernel reads or writes. With `shape.cluster` the blocks are
    /// launched in clusters (an error below compute capability 9.0). Driver
    /// errors keep their `CUresult`.
    ///
    /// # Safety
    /// The kernel `name` in `module` must take exactly the fields of `P`
    /// (same count, types and order), every device pointer among them must
    /// be valid for all the accesses the kernel makes for these sizes,
    /// buffers it writes must not be read or freed by the host before the
    /// stream is synchronised, and with `pdl` the kernel must honour the
    /// wait described above.
    pub(crate) unsafe fn launch<P: KernelParams>(
        &self,
        module: &Module,
        name: &'static str,
        shape: Shape,
        mut params: P,
        detail: impl FnOnce() -> String,
    ) -> Result<()> {
        let slot = if std::ptr::eq(module, &self.ffn) {
            0
        } else if std::ptr::eq(module, &self.router) {
            1
        } else if std::ptr::eq(module, &self.prefill) {
            2
        } else if std::ptr::eq(module, &self.model) {
            3
        } else if std::ptr::eq(module, &self.moe_route) {
            4
        } else {
            return Err(crate::error::shape(
                "Gpu::launch",
                format!("{name}: a module this Gpu did not load"),
            ));
        };
        let f = self.kernels.get(slot, module, name)?;
        let ptrs = params.arg_ptrs();
        let args = ptrs.as_ref().as_ptr() as *mut *mut c_void;
        let Shape {
            grid,
            block,
            shared,
            pdl,
            cluster,
        } = shape;
        let op = || format!("launch {name}");
        let hopper = self.info().cc.0 >= 9;
        if cluster.is_some() && !hopper {
            return Err(crate::error::Error::Unsupported {
                op: "Gpu::launch",
                detail: format!("{name}: thread-block clusters need compute capability >= 9.0"),
            });
        }
        if !(pdl && hopper) && cluster.is_none() {
            // SAFETY: forwarded from this function's contract; `params` and
            // `ptrs` outlive the call (the driver copies the values).
            let rc = unsafe {
                cust::sys::cuLaunchKernel(
                    f,
                    grid.x,
                    grid.y,
                    grid.z,
                    block.x,
                    block.y,
                    block.z,
                    shared,
                    self.stream.as_inner(),
                    args,
                    std::ptr::null_mut(),
                )
            };
            return check_cu(rc, op, detail);
        }
        let none = sys::CUlaunchAttribute {
            id: 0,
            pad: [0; 4],
            value: [0; 64],
        };
        let mut attrs = [none; 2];
        let mut n = 0;
        if pdl {
            attrs[n].id = sys::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value[0] = 1; // int programmaticStreamSerializationAllowed = 1 (little endian)
            n += 1;
        }
        if let Some((x, y, z)) = cluster {
            // struct { unsigned x, y, z; } clusterDim (little endian).
            attrs[n].id = sys::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            for (i, v) in [x, y, z].into_iter().enumerate() {
                attrs[n].value[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            n += 1;
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.x,
            gridDimY: grid.y,
            gridDimZ: grid.z,
            blockDimX: block.x,
            blockDimY: block.y,
            blockDimZ: block.z,
            sharedMemBytes: shared,
            hStream: self.stream.as_inner(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        // SAFETY: cfg and attrs outlive the call and follow cuda.h's layouts
        // (asserted at compile time in sys); kernel and arguments as in
        // this function's contract.
        let rc = unsafe { sys::cuLaunchKernelEx(&cfg, f, args, std::ptr::null_mut()) };
        check_cu(rc, op, || format!("{} (cuLaunchKernelEx)", detail()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    kernel_params! {
        struct Probe {
            a: u64,
            b: i32,
            c: [f32; 3],
            d: i64,
        }
    }

    #[test]
    fn pointers_follow_the_fields_in_order() {
        let mut p = Probe {
            a: 1,
            b: 2,
            c: [0.0; 3],
            d: 4,
        };
        let base = &p as *const Probe as usize;
        let ptrs = p.arg_ptrs();
        let offs: Vec<usize> = ptrs.iter().map(|&q| q as usize - base).collect();
        assert_eq!(
            offs,
            vec![
                std::mem::offset_of!(Probe, a),
                std::mem::offset_of!(Probe, b),
                std::mem::offset_of!(Probe, c),
                std::mem::offset_of!(Probe, d),
            ]
        );
        assert_eq!(offs, vec![0, 8, 12, 24]);
    }
}
