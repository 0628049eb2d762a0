//! Safe layer: a CUDA context on one device, its stream, the loaded kernel
//! modules, and small helpers (events, fills, copies).

use cust::context::Context;
use cust::device::{Device, DeviceAttribute};
use cust::event::{Event, EventFlags};
use cust::memory::{DeviceBuffer, DeviceCopy, DeviceSlice};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::CudaFlags;
use half::f16;

use crate::error::{CudaCtx, Error, Result};
use crate::launch::{kernel_params, Kernels, Shape};
use crate::ptx;

/// Static facts about the device, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name (`"NVIDIA H100 80GB HBM3"`).
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Number of streaming multiprocessors.
    pub sm_count: u32,
    /// L2 cache size in bytes.
    pub l2_bytes: u32,
    /// Whether the sm_90a cubin was loaded (else the compute_80 PTX).
    pub cubin: bool,
    /// Unified addressing: page-locked host memory is addressable by kernels.
    pub unified_addressing: bool,
}

/// One GPU: context, stream and the wdmoe kernels, ready to launch.
///
/// All launches of this crate go to [`Gpu::stream`] in order; results are
/// visible to the host after [`Gpu::sync`].
pub struct Gpu {
    pub(crate) stream: Stream,
    /// Small host-device copies that need not wait in line with the
    /// kernels ([`Gpu::copy_stream`]).
    copy_stream: Stream,
    pub(crate) ffn: Module,
    pub(crate) router: Module,
    pub(crate) prefill: Module,
    pub(crate) model: Module,
    pub(crate) moe_route: Module,
    pub(crate) kernels: Kernels,
    /// The packed GEMM's stream-K switch and workspace.
    pub(crate) stream_k: crate::prefill::StreamK,
    /// The decode GEMVs' early loads ([`Gpu::set_gemv_preload`]).
    gemv_pre2: std::sync::atomic::AtomicBool,
    info: DeviceInfo,
    // Dropped last: everything above lives in this context.
    _ctx: Context,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish()
    }
}

fn load(cubin: bool, bin: &[u8], ptx_src: &str, name: &str) -> Result<Module> {
    if cubin {
        Module::from_cubin(bin, &[]).ctx("cuModuleLoadData (cubin)", || name.to_string())
    } else {
        Module::from_ptx(ptx_src, &[]).ctx("cuModuleLoadData (ptx)", || name.to_string())
    }
}

impl Gpu {
    /// Opens device `ordinal`: initialises the driver, creates a context and a
    /// stream, and loads the kernels (sm_90a cubin on compute capability 9.0,
    /// PTX on other GPUs of compute capability >= 8.0).
    ///
    /// Errors: [`Error::NoDevice`] where there is no driver or device (also
    /// with the stub libcuda used to link on machines without a GPU),
    /// [`Error::Unsupported`] for GPUs older than compute capability 8.0.
    pub fn new(ordinal: u32) -> Result<Gpu> {
        cust::init(CudaFlags::empty()).map_err(|e| Error::NoDevice {
            detail: format!("cuInit failed: {e:?} (code {})", e as u32),
        })?;
        let n = Device::num_devices().map_err(|e| Error::NoDevice {
            detail: format!("cuDeviceGetCount failed: {e:?}"),
        })?;
        if ordinal >= n {
            return Err(Error::NoDevice {
                detail: format!("device {ordinal} requested, {n} present"),
            });
        }
        let dev =
            Device::get_device(ordinal).ctx("cuDeviceGet", || format!("ordinal {ordinal}"))?;
        let attr = |a: DeviceAttribute| {
            dev.get_attribute(a)
                .ctx("cuDeviceGetAttribute", || format!("{a:?}"))
        };
        let cc = (
            attr(DeviceAttribute::ComputeCapabilityMajor)?,
            attr(DeviceAttribute::ComputeCapabilityMinor)?,
        );
        if cc.0 < 8 {
            return Err(Error::Unsupported {
                op: "Gpu::new",
                detail: format!(
                    "compute capability {}.{} < 8.0 (mma.sync m16n8k16 needs sm_80+)",
                    cc.0, cc.1
                ),
            });
        }
        let info = DeviceInfo {
            name: dev.name().ctx("cuDeviceGetName", String::new)?,
            cc,
            sm_count: attr(DeviceAttribute::MultiprocessorCount)? as u32,
            l2_bytes: attr(DeviceAttribute::L2CacheSize)? as u32,
            cubin: cc == (9, 0),
            unified_addressing: attr(DeviceAttribute::UnifiedAddressing)? != 0,
        };
        let ctx = Context::new(dev).ctx("cuCtxCreate", || format!("ordinal {ordinal}"))?;
        let ffn = load(
            info.cubin,
            ptx::FFN_DECODE_CUBIN,
            ptx::FFN_DECODE_PTX,
            "ffn_decode",
        )?;
        let router = load(info.cubin, ptx::ROUTER_CUBIN, ptx::ROUTER_PTX, "router")?;
        let prefill = load(
            info.cubin,
            ptx::FFN_PREFILL_CUBIN,
            ptx::FFN_PREFILL_PTX,
            "ffn_prefill",
        )?;
        let model = load(info.cubin, ptx::MODEL_CUBIN, ptx::MODEL_PTX, "model")?;
        let moe_route = load(
            info.cubin,
            ptx::MOE_ROUTE_CUBIN,
            ptx::MOE_ROUTE_PTX,
            "moe_route",
        )?;
        if info.cubin {
            crate::prefill::raise_smem_limits(&prefill)?;
        }
        let stream = Stream::new(StreamFlags::DEFAULT, None).ctx("cuStreamCreate", String::new)?;
        let copy_stream = Stream::new(StreamFlags::NON_BLOCKING, None)
            .ctx("cuStreamCreate", || "copies".into())?;
        Ok(Gpu {
            stream,
            copy_stream,
            ffn,
            router,
            prefill,
            model,
            moe_route,
            kernels: Kernels::default(),
            stream_k: crate::prefill::StreamK::new(),
            gemv_pre2: std::sync::atomic::AtomicBool::new(crate::ffn::gemv_pre2_default()),
            info,
            _ctx: ctx,
        })
    }

    /// Whether the packed GEMM's fp16-output launches (the experts' gate/up
    /// and down GEMMs at prefill sizes) share out the k blocks of a sparse
    /// last wave of tiles over all blocks (stream-K, kernels/stream_k.cuh;
    /// default on for waves at most half full, `WDMOE_PACKED_SK=P` for
    /// another share in percent, `0` off). Off, every tile runs whole; on,
    /// a split tile's fp32 sums are added in another order, the same in
    /// every run.
    pub fn packed_stream_k(&self) -> bool {
        self.stream_k.max_pct() > 0
    }

    /// Turns [`Gpu::packed_stream_k`] on (at the default share) or off for
    /// later launches (comparisons and bitwise tests).
    pub fn set_packed_stream_k(&self, on: bool) {
        self.stream_k.set(on);
    }

    /// Whether the decode GEMVs whose blocks become resident while their
    /// predecessor runs (the attention projections at 1-8 tokens, the
    /// experts' down kernel of a device-planned step) load two groups of
    /// k-tiles per warp before waiting for it instead of one (default on;
    /// `WDMOE_GEMV_PRE2=0` off). The same arithmetic either way: only when
    /// the weights are loaded changes.
    pub fn gemv_preload(&self) -> bool {
        self.gemv_pre2.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns [`Gpu::gemv_preload`] on or off for later launches
    /// (comparisons and bitwise tests).
    pub fn set_gemv_preload(&self, on: bool) {
        self.gemv_pre2
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Device facts.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream all launches go to.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// A second stream for small copies between host and device (a prompt
    /// step's latencies up, its selections and logits down): ordered
    /// against the kernels by events ([`Gpu::order_after`]), so that they
    /// do not sit between two kernels of [`Gpu::stream`] (each such copy
    /// held the kernels ~10 µs, run I6).
    pub(crate) fn copy_stream(&self) -> &Stream {
        &self.copy_stream
    }

    /// Makes later work of `waiter` wait for the work enqueued so far on
    /// `on` (a fresh event, recorded on `on`; cust's wait consumes it).
    pub(crate) fn order_after(&self, waiter: &Stream, on: &Stream) -> Result<()> {
        let e = Event::new(EventFlags::DISABLE_TIMING).ctx("cuEventCreate", String::new)?;
        e.record(on).ctx("cuEventRecord", String::new)?;
        waiter
            .wait_event(e, cust::stream::StreamWaitEventFlags::DEFAULT)
            .ctx("cuStreamWaitEvent", String::new)
    }

    /// Waits for all launched work; returns the first asynchronous error.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .ctx("cuStreamSynchronize", String::new)
    }

    /// Whether every launched operation has finished (`cuStreamQuery`,
    /// without waiting); an asynchronous error of the stream is returned.
    pub fn stream_idle(&self) -> Result<bool> {
        // SAFETY: cuStreamQuery only reads the state of this Gpu's live
        // stream.
        let rc = unsafe { cust::sys::cuStreamQuery(self.stream.as_inner()) };
        if rc == cust::sys::cudaError_enum::CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        crate::error::check_cu(rc, || "cuStreamQuery".into(), String::new)?;
        Ok(true)
    }

    /// Allocates `n` elements (uninitialised contents are never read by the
    /// kernels before being written; poison them for tests with [`Gpu::fill_u16`]).
    pub fn alloc<T: DeviceCopy + bytemuck::Zeroable>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        DeviceBuffer::zeroed(n.max(1)).ctx("cuMemAlloc", || {
            format!("{n} x {}", std::mem::size_of::<T>())
        })
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceCopy>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        DeviceBuffer::from_slice(host).ctx("cuMemcpyHtoD", || format!("{} elements", host.len()))
    }

    /// Synchronises, then copies a device slice to the host.
    pub fn download<T: DeviceCopy + Default + Clone>(
        &self,
        dev: &DeviceSlice<T>,
    ) -> Result<Vec<T>> {
        self.sync()?;
        let mut v = vec![T::default(); dev.len()];
        cust::memory::CopyDestination::copy_to(dev, &mut v[..])
            .ctx("cuMemcpyDtoH", || format!("{} elements", dev.len()))?;
        Ok(v)
    }

    /// Copies `src` to `dst` on the device (same length), after the work
    /// already launched (synchronises first).
    pub fn copy_d2d<T: DeviceCopy>(
        &self,
        src: &DeviceSlice<T>,
        dst: &mut DeviceSlice<T>,
    ) -> Result<()> {
        if src.len() != dst.len() {
            return Err(crate::error::shape(
                "Gpu::copy_d2d",
                format!("{} elements into {}", src.len(), dst.len()),
            ));
        }
        self.sync()?;
        cust::memory::CopyDestination::copy_from(dst, src)
            .ctx("cuMemcpyDtoD", || format!("{} elements", src.len()))
    }

    /// A new timing event (record it with [`Gpu::record_on`]).
    pub fn event(&self) -> Result<Event> {
        Event::new(EventFlags::DEFAULT).ctx("cuEventCreate", String::new)
    }

    /// Records `e` on the stream (reusing an event avoids creating one on a
    /// latency-critical path).
    pub fn record_on(&self, e: &Event) -> Result<()> {
        e.record(&self.stream).ctx("cuEventRecord", String::new)
    }

    /// Records `e` on `stream` (one of this Gpu's).
    pub(crate) fn record_on_stream(&self, e: &Event, stream: &Stream) -> Result<()> {
        e.record(stream).ctx("cuEventRecord", String::new)
    }

    /// Records an event on the stream (for timing with [`elapsed_ms`]).
    pub fn record(&self) -> Result<Event> {
        let e = Event::new(EventFlags::DEFAULT).ctx("cuEventCreate", String::new)?;
        e.record(&self.stream).ctx("cuEventRecord", String::new)?;
        Ok(e)
    }

    fn grid_for(&self, n: u64) -> u32 {
        self.grid_1d(n, 32)
    }

    /// Blocks of 256 threads for `n` independent work items (grid-stride
    /// loops), at most `per_sm` blocks per SM, at least 1.
    pub(crate) fn grid_1d(&self, n: u64, per_sm: u64) -> u32 {
        n.div_ceil(256)
            .min(self.info.sm_count as u64 * per_sm)
            .max(1) as u32
    }

    /// Fills `dst` with pseudo-random fp16 values uniform in `[-scale, scale)`
    /// drawn from `seed` (a hash per element; reproducible).
    pub fn fill_uniform(&self, dst: &mut DeviceSlice<f16>, seed: u64, scale: f32) -> Result<()> {
        kernel_params! {
            struct FillUniform { p: u64, n: i64, seed: u64, scale: f32 }
        }
        let n = dst.len() as i64;
        let params = FillUniform {
            p: dst.as_device_ptr().as_raw(),
            n,
            seed,
            scale,
        };
        let grid = self.grid_for(n as u64);
        // SAFETY: fill_uniform_f16(half*, long long, unsigned long long, float)
        // = FillUniform; it writes exactly n elements of dst, which owns n
        // elements.
        unsafe {
            self.launch(
                &self.ffn,
                "fill_uniform_f16",
                Shape::new(grid, 256),
                params,
                || format!("n={n}"),
            )
        }
    }

    /// Fills a 16-bit buffer with `bits` (0x7E00 = fp16 NaN: poison).
    pub fn fill_u16<T: DeviceCopy>(&self, dst: &mut DeviceSlice<T>, bits: u16) -> Result<()> {
        let bytes = dst.len() * std::mem::size_of::<T>();
        kernel_params! {
            struct FillU16 { p: u64, n: i64, bits: u16 }
        }
        let n = (bytes / 2) as i64;
        let params = FillU16 {
            p: dst.as_device_ptr().as_raw(),
            n,
            bits,
        };
        let grid = self.grid_for(n as u64);
        // SAFETY: fill_u16(unsigned short*, long long, unsigned short) =
        // FillU16; writes n = bytes/2 16-bit words inside dst.
        unsafe {
            self.launch(&self.ffn, "fill_u16", Shape::new(grid, 256), params, || {
                format!("n={n}")
            })
        }
    }
}

/// Milliseconds between two recorded events (synchronises on `end`).
pub fn elapsed_ms(start: &Event, end: &Event) -> Result<f32> {
    end.synchronize().ctx("cuEventSynchronize", String::new)?;
    end.elapsed_time_f32(start)
        .ctx("cuEventElapsedTime", String::new)
}

/// Device address of a slice (for alignment checks and raw arguments).
pub(crate) fn addr<T: DeviceCopy>(s: &DeviceSlice<T>) -> u64 {
    s.as_device_ptr().as_raw()
}

impl Gpu {
    /// Streams `buf` once with 16-byte loads (a read-bandwidth ceiling for
    /// the memory-bound kernels; time it with events). `buf` must be
    /// 16-byte aligned and a multiple of 8 elements long.
    pub fn read_probe(&self, buf: &DeviceSlice<f16>, scratch: &mut DeviceSlice<f32>) -> Result<()> {
        const OP: &str = "read_probe";
        crate::error::check_align(OP, "buf", addr(buf), 16)?;
        let blocks = self.info.sm_count * 8;
        if buf.len() % 8 != 0 || scratch.len() < blocks as usize {
            return Err(Error::Shape {
                op: OP,
                detail: format!(
                    "buf {} (multiple of 8), scratch {} (>= {blocks})",
                    buf.len(),
                    scratch.len()
                ),
            });
        }
        kernel_params! {
            struct ReadProbe { p: u64, n16: i64, out: u64 }
        }
        let n16 = (buf.len() / 8) as i64;
        let params = ReadProbe {
            p: addr(buf),
            n16,
            out: addr(scratch),
        };
        // SAFETY: read_probe(const uint4*, long long, float*) = ReadProbe;
        // it reads n16 16-byte words of buf (aligned, checked) and writes at
        // most one float per block into scratch (>= blocks floats, checked).
        unsafe {
            self.launch(
                &self.ffn,
                "read_probe",
                Shape::new(blocks, 512),
                params,
                || format!("n16={n16}"),
            )
        }
    }
}
