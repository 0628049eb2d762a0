//! NCCL point-to-point communication (feature `nccl`): the raw calls in
//! [`sys`] (declared by hand like the driver calls of [`crate::sys`]), and a
//! safe [`Comm`] whose errors keep NCCL's `ncclResult_t`
//! ([`crate::Error::Nccl`]).
//!
//! One communicator per process and GPU (rank); every call enqueues on the
//! [`Gpu`]'s stream, so transfers are ordered with the kernels around them.
//!
//! # A peer that dies or stalls: no wait is unbounded
//!
//! * Setup ([`Comm::init_rank`], then [`Comm::connect`]) blocks on the host
//!   until every peer has made the same call; the caller bounds it from
//!   outside (wdmoe-sim's `dist` rank exits its process after `--timeout-s`).
//! * [`Comm::connect`] makes NCCL open its point-to-point connections to
//!   the given peers (both directions) at setup. NCCL opens them lazily, at
//!   the first send or receive to a peer, inside `ncclGroupEnd`, which then
//!   blocks on the host until the peer makes a matching call (an exchange
//!   over NCCL's bootstrap sockets, with no timeout of its own). A rank whose
//!   first receive was also its first contact with a peer that stalled
//!   (alive, sending nothing) therefore hung there forever, before any
//!   deadline could apply: by NCCL's source (2.28, `transport.cc`: the
//!   setup's `bootstrapRecv`) the cause of the hang of the 2-GPU test of a
//!   silent base station in run W3.
//!   After `connect`, a group call only enqueues on the stream; a peer that
//!   died or stalls is then seen by the wait (NCCL's asynchronous error, or
//!   the deadline).
//! * Every wait on transfers is [`Comm::wait`]: it polls the stream
//!   (`cuStreamQuery`) and NCCL's asynchronous error, never synchronizes,
//!   and at its deadline aborts the communicator and returns
//!   [`crate::Error::Timeout`] naming the rank and what it waited for.
//! * [`Comm::abort`] (`ncclCommAbort`) raises NCCL's abort flag, which ends
//!   the transfer kernels still waiting on the peer, and frees the
//!   communicator; it runs on a helper thread and is waited for at most
//!   [`ABORT_WAIT`], so an abort that itself hung could not hold the rank.
//!
//! The communicators are blocking ones (`ncclCommInitRank`). NCCL's
//! non-blocking mode (`ncclConfig_t::blocking = 0`) would also bound the
//! lazy connection, but from NCCL 2.23 on (2.28 on the H200 machine) it
//! runs every group call on a new host thread, and the next call must wait
//! (poll) until that thread is done: a cost at each of the three groups of
//! every layer's step, on the decode path, that `connect` avoids.
//!
//! Linking: build.rs links `libnccl.so.2` from `NCCL_LIBRARY_PATH` (a folder
//! holding it), else from python3's `nvidia.nccl` wheel (`nvidia/nccl/lib`);
//! without NCCL (CI) point `NCCL_LIBRARY_PATH` at the stub folder of
//! `stub/make-stub.sh`. At run time the loader must find the real
//! `libnccl.so.2` (`LD_LIBRARY_PATH`; `run-gpu-dist.sh` sets it).

mod abort;
pub mod sys;

use std::ffi::CStr;
use std::time::{Duration, Instant};

use cust::memory::{DeviceCopy, DeviceSlice};
use half::f16;

use crate::error::{Error, Result};
use crate::runtime::Gpu;
use abort::abort_bounded;
pub use abort::ABORT_WAIT;

/// The NCCL element type of a Rust element type.
pub trait NcclType: DeviceCopy {
    /// `ncclDataType_t`.
    const NCCL: sys::ncclDataType_t;
}
impl NcclType for f16 {
    const NCCL: sys::ncclDataType_t = sys::NCCL_FLOAT16;
}
impl NcclType for f32 {
    const NCCL: sys::ncclDataType_t = sys::NCCL_FLOAT32;
}
impl NcclType for u32 {
    const NCCL: sys::ncclDataType_t = sys::NCCL_UINT32;
}
impl NcclType for i32 {
    const NCCL: sys::ncclDataType_t = sys::NCCL_INT32;
}

/// NCCL's text for a result code.
pub fn error_string(code: sys::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a pointer to a static
    // NUL-terminated string for every code (or null, checked).
    let p = unsafe { sys::ncclGetErrorString(code) };
    if p.is_null() {
        return format!("ncclResult_t {code}");
    }
    // SAFETY: non-null, static and NUL-terminated (above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A raw NCCL result as this crate's error, keeping its code.
pub(crate) fn check(
    code: sys::ncclResult_t,
    op: &str,
    detail: impl FnOnce() -> String,
) -> Result<()> {
    if code == sys::NCCL_SUCCESS {
        return Ok(());
    }
    Err(Error::Nccl {
        op: op.to_string(),
        detail: detail(),
        code,
        message: error_string(code),
    })
}

/// The NCCL library's version (`ncclGetVersion`, e.g. 22703 for 2.27.3).
pub fn version() -> Result<i32> {
    let mut v = 0;
    // SAFETY: writes one int.
    let rc = unsafe { sys::ncclGetVersion(&mut v) };
    check(rc, "ncclGetVersion", String::new)?;
    Ok(v)
}

/// The id every rank of a communicator starts from (`ncclGetUniqueId` on one
/// rank, handed to the others, e.g. as [`UniqueId::to_hex`] in a file).
#[derive(Clone, Copy)]
pub struct UniqueId(sys::ncclUniqueId);

impl std::fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UniqueId(..)")
    }
}

impl UniqueId {
    /// A new id (`ncclGetUniqueId`; also starts NCCL's bootstrap listener in
    /// this process, which must live until every rank has joined).
    pub fn new() -> Result<UniqueId> {
        let mut id = sys::ncclUniqueId {
            internal: [0; sys::NCCL_UNIQUE_ID_BYTES],
        };
        // SAFETY: writes the 128-byte struct.
        let rc = unsafe { sys::ncclGetUniqueId(&mut id) };
        check(rc, "ncclGetUniqueId", String::new)?;
        Ok(UniqueId(id))
    }

    /// The 128 bytes as 256 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0
            .internal
            .iter()
            .map(|&b| format!("{:02x}", b as u8))
            .collect()
    }

    /// Parses [`UniqueId::to_hex`] (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<UniqueId> {
        let t = text.trim();
        let bad = || Error::Dist {
            op: "UniqueId::from_hex",
            detail: format!(
                "expected {} hex digits, got {} characters",
                2 * sys::NCCL_UNIQUE_ID_BYTES,
                t.len()
            ),
        };
        if t.len() != 2 * sys::NCCL_UNIQUE_ID_BYTES || !t.is_ascii() {
            return Err(bad());
        }
        let mut id = sys::ncclUniqueId {
            internal: [0; sys::NCCL_UNIQUE_ID_BYTES],
        };
        for (i, b) in id.internal.iter_mut().enumerate() {
            let v = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
            *b = v as std::ffi::c_char;
        }
        Ok(UniqueId(id))
    }
}

/// One rank's NCCL communicator, bound to the GPU it was created on.
/// Dropping it destroys it (`ncclCommDestroy`), or aborts it
/// (`ncclCommAbort`) after an error or timeout, so a drop never waits on a
/// dead peer.
pub struct Comm {
    raw: sys::ncclComm_t,
    rank: usize,
    world: usize,
    failed: bool,
    /// Per rank: connected by [`Comm::connect`].
    connected: Vec<bool>,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comm")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("failed", &self.failed)
            .field("connected", &self.connected)
            .finish()
    }
}

impl Comm {
    /// Joins communicator `id` as rank `rank` of `world` on `gpu` (whose
    /// context is current on this thread: the thread that made the Gpu).
    /// Blocks until every rank has joined; a launcher bounds that wait (see
    /// wdmoe-sim's `dist` module).
    pub fn init_rank(gpu: &Gpu, world: usize, rank: usize, id: &UniqueId) -> Result<Comm> {
        let _ = gpu;
        if world == 0 || rank >= world || world > i32::MAX as usize {
            return Err(Error::Dist {
                op: "Comm::init_rank",
                detail: format!("rank {rank} of world {world}"),
            });
        }
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: writes one communicator handle; the id is passed by value.
        let rc = unsafe { sys::ncclCommInitRank(&mut raw, world as i32, id.0, rank as i32) };
        check(rc, "ncclCommInitRank", || format!("rank {rank} of {world}"))?;
        Ok(Comm {
            raw,
            rank,
            world,
            failed: false,
            connected: vec![false; world],
        })
    }

    /// Opens NCCL's point-to-point connections to `peers`, both ways, with
    /// a handshake: this rank sends `[HELLO, rank]` to every peer and checks
    /// that every peer sent it `[HELLO, peer]`. Every peer must call it with
    /// this rank among its peers (the BS with every device rank, a device
    /// rank with the BS). Blocks on the host until they do (bound it from
    /// outside, as the setup); the transfer itself is waited for with
    /// [`Comm::wait`] and `timeout`. Afterwards a group call with these
    /// peers never blocks the host on them (see the module docs).
    pub fn connect(&mut self, gpu: &Gpu, peers: &[usize], timeout: Duration) -> Result<()> {
        const OP: &str = "Comm::connect";
        check_peers(self.rank, self.world, peers)?;
        if peers.is_empty() {
            return Ok(());
        }
        let hello = gpu.upload(&[HELLO, self.rank as u32])?;
        let mut got = gpu.alloc::<u32>(2 * peers.len())?;
        gpu.fill_u16(&mut got, 0xFFFF)?;
        self.group(|c| {
            for (i, &p) in peers.iter().enumerate() {
                c.send(gpu, &hello, p)?;
                c.recv(gpu, &mut got.index(2 * i..2 * i + 2), p)?;
            }
            Ok(())
        })?;
        let what = format!("the connection handshake with ranks {peers:?}");
        if let Err(e) = self.wait(gpu, &what, timeout) {
            // Aborted: the buffers are left to the process exit rather than
            // freed (a free waits for the device, see `Comm::abort`).
            std::mem::forget((hello, got));
            return Err(e);
        }
        let words = gpu.download(&got)?;
        for (i, &p) in peers.iter().enumerate() {
            let w = &words[2 * i..2 * i + 2];
            if w != [HELLO, p as u32] {
                self.failed = true;
                return Err(Error::Dist {
                    op: OP,
                    detail: format!(
                        "rank {} got {w:08x?} from rank {p}, expected [{HELLO:08x}, {p:08x}] \
                         (a peer of another run, or ranks that disagree on the world)",
                        self.rank
                    ),
                });
            }
        }
        for &p in peers {
            self.connected[p] = true;
        }
        Ok(())
    }

    /// Whether [`Comm::connect`] connected this rank to `peer`.
    pub fn is_connected(&self, peer: usize) -> bool {
        self.connected.get(peer).copied().unwrap_or(false)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in all.
    pub fn world(&self) -> usize {
        self.world
    }

    fn peer(&self, op: &'static str, peer: usize) -> Result<i32> {
        if peer >= self.world || peer == self.rank {
            return Err(Error::Dist {
                op,
                detail: format!("peer {peer} (rank {} of {})", self.rank, self.world),
            });
        }
        Ok(peer as i32)
    }

    fn fail<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Runs `f` (sends and receives) between `ncclGroupStart` and
    /// `ncclGroupEnd`: NCCL launches them together, so transfers to and from
    /// several peers proceed at once and cannot deadlock on their order. The
    /// group is always ended, also when `f` fails.
    pub fn group<R>(&mut self, f: impl FnOnce(&mut Comm) -> Result<R>) -> Result<R> {
        // SAFETY: no arguments.
        let rc = unsafe { sys::ncclGroupStart() };
        let r = check(rc, "ncclGroupStart", String::new);
        let r = self.fail(r);
        r?;
        let out = f(self);
        // SAFETY: no arguments; closes the group opened above.
        let rc = unsafe { sys::ncclGroupEnd() };
        let end = check(rc, "ncclGroupEnd", || format!("rank {}", self.rank));
        let end = self.fail(end);
        let out = self.fail(out)?;
        end?;
        Ok(out)
    }

    /// Enqueues a send of `buf` to `peer` on `gpu`'s stream (the peer posts
    /// a receive of the same length).
    pub fn send<T: NcclType>(
        &mut self,
        gpu: &Gpu,
        buf: &DeviceSlice<T>,
        peer: usize,
    ) -> Result<()> {
        let p = self.peer("Comm::send", peer)?;
        // SAFETY: buf is a live device allocation of buf.len() elements of
        // T (NCCL's type T::NCCL), read by the transfer in stream order;
        // the caller keeps it alive until the stream passes it (every
        // caller in this crate waits for the stream before freeing).
        let rc = unsafe {
            sys::ncclSend(
                buf.as_device_ptr().as_raw() as *const std::ffi::c_void,
                buf.len(),
                T::NCCL,
                p,
                self.raw,
                gpu.stream().as_inner(),
            )
        };
        let r = check(rc, "ncclSend", || {
            format!(
                "{} elements to rank {peer} from rank {}",
                buf.len(),
                self.rank
            )
        });
        self.fail(r)
    }

    /// Enqueues a receive into `buf` from `peer` on `gpu`'s stream.
    pub fn recv<T: NcclType>(
        &mut self,
        gpu: &Gpu,
        buf: &mut DeviceSlice<T>,
        peer: usize,
    ) -> Result<()> {
        let p = self.peer("Comm::recv", peer)?;
        // SAFETY: buf is a live device allocation of buf.len() elements,
        // written by the transfer in stream order (as for send).
        let rc = unsafe {
            sys::ncclRecv(
                buf.as_device_ptr().as_raw() as *mut std::ffi::c_void,
                buf.len(),
                T::NCCL,
                p,
                self.raw,
                gpu.stream().as_inner(),
            )
        };
        let r = check(rc, "ncclRecv", || {
            format!(
                "{} elements from rank {peer} to rank {}",
                buf.len(),
                self.rank
            )
        });
        self.fail(r)
    }

    /// NCCL's asynchronous error of this communicator (a peer's failure,
    /// a network error), as an error.
    pub fn async_error(&mut self) -> Result<()> {
        let mut e = sys::NCCL_SUCCESS;
        // SAFETY: writes one ncclResult_t.
        let rc = unsafe { sys::ncclCommGetAsyncError(self.raw, &mut e) };
        let r = check(rc, "ncclCommGetAsyncError", String::new)
            .and_then(|()| check(e, "NCCL (asynchronous)", || format!("rank {}", self.rank)));
        self.fail(r)
    }

    /// Waits until `gpu`'s stream has finished everything enqueued, polling
    /// it and NCCL's asynchronous error (never a blocking synchronize);
    /// after `timeout` it aborts the communicator ([`Comm::abort`], bounded)
    /// and returns [`Error::Timeout`] naming `op` and this rank. Spins for
    /// the first 200 µs (decode steps), then sleeps 50 µs between polls.
    pub fn wait(&mut self, gpu: &Gpu, op: &str, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            // SAFETY: queries the Gpu's live stream.
            let rc = unsafe { cust::sys::cuStreamQuery(gpu.stream().as_inner()) };
            if rc == cust::sys::cudaError_enum::CUDA_SUCCESS {
                return Ok(());
            }
            if rc != cust::sys::cudaError_enum::CUDA_ERROR_NOT_READY {
                self.failed = true;
                crate::error::check_cu(rc, || "cuStreamQuery".into(), || op.to_string())?;
            }
            self.async_error()?;
            let waited = t0.elapsed();
            if waited >= timeout {
                let aborted = self.abort();
                return Err(Error::Timeout {
                    op: format!(
                        "{op} (rank {} of {}; communicator aborted{})",
                        self.rank,
                        self.world,
                        if aborted {
                            ""
                        } else {
                            ", the abort still running"
                        }
                    ),
                    waited_s: waited.as_secs_f64(),
                });
            }
            if waited > Duration::from_micros(200) {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Aborts the communicator (`ncclCommAbort`): transfers in flight end
    /// (NCCL's kernels see its abort flag), later calls fail. Idempotent.
    ///
    /// Never blocks for long: the abort runs on a helper thread (with this
    /// thread's CUDA context current) and is waited for at most
    /// [`ABORT_WAIT`]. Returns whether it finished in that time; if not, the
    /// helper thread keeps the communicator (abandoned: the process is
    /// expected to exit, which ends it), and this rank goes on to report
    /// its error.
    pub fn abort(&mut self) -> bool {
        self.failed = true;
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        if raw.is_null() {
            return true;
        }
        abort_bounded(raw, ABORT_WAIT)
    }
}

/// The first word of [`Comm::connect`]'s handshake (ASCII "WDMo").
const HELLO: u32 = 0x5744_4d6f;

/// Checks the peers of [`Comm::connect`] for rank `rank` of `world`: in
/// range, not `rank` itself, none twice.
fn check_peers(rank: usize, world: usize, peers: &[usize]) -> Result<()> {
    let mut seen = vec![false; world];
    for &p in peers {
        if p >= world || p == rank {
            return Err(Error::Dist {
                op: "Comm::connect",
                detail: format!("peer {p} (rank {rank} of {world})"),
            });
        }
        if std::mem::replace(&mut seen[p], true) {
            return Err(Error::Dist {
                op: "Comm::connect",
                detail: format!("peer {p} listed twice"),
            });
        }
    }
    Ok(())
}

impl Drop for Comm {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // Abort rather than destroy after a failure (destroy may wait on a
        // dead or stalled peer); the abort is bounded (Comm::abort).
        if self.failed {
            let _ = self.abort();
            return;
        }
        // SAFETY: a live communicator after no failure, destroyed once.
        unsafe { sys::ncclCommDestroy(self.raw) };
        self.raw = std::ptr::null_mut();
    }
}

/// The deadline of [`Comm::wait`] from `WDMOE_DIST_TIMEOUT_S` (seconds,
/// default 120).
pub fn timeout_from_env() -> Duration {
    crate::env::number(
        "WDMOE_DIST_TIMEOUT_S",
        |v: &f64| v.is_finite() && *v > 0.0,
        "seconds > 0",
    )
    .map_or(Duration::from_secs(120), Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_id_hex_round_trips_and_rejects_bad_text() {
        let mut raw = sys::ncclUniqueId {
            internal: [0; sys::NCCL_UNIQUE_ID_BYTES],
        };
        for (i, b) in raw.internal.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8 as std::ffi::c_char;
        }
        let id = UniqueId(raw);
        let hex = id.to_hex();
        assert_eq!(hex.len(), 256);
        assert_eq!(&hex[..4], "030a");
        let back = UniqueId::from_hex(&format!("  {hex}\n")).unwrap();
        assert_eq!(back.to_hex(), hex);
        assert!(matches!(
            UniqueId::from_hex(&hex[..254]),
            Err(Error::Dist { .. })
        ));
        let mut bad = hex.clone();
        bad.replace_range(10..11, "g");
        assert!(UniqueId::from_hex(&bad).is_err());
    }

    #[test]
    fn connect_checks_its_peers() {
        assert!(check_peers(0, 3, &[1, 2]).is_ok());
        assert!(check_peers(2, 3, &[0]).is_ok());
        assert!(check_peers(1, 2, &[]).is_ok());
        let msg = |r: Result<()>| match r {
            Err(Error::Dist { op, detail }) => format!("{op}: {detail}"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            msg(check_peers(1, 2, &[1])),
            "Comm::connect: peer 1 (rank 1 of 2)"
        );
        assert_eq!(
            msg(check_peers(0, 2, &[2])),
            "Comm::connect: peer 2 (rank 0 of 2)"
        );
        assert_eq!(
            msg(check_peers(0, 3, &[2, 1, 2])),
            "Comm::connect: peer 2 listed twice"
        );
    }

    #[test]
    fn the_stub_library_fails_with_a_typed_error() {
        // Against the stub (CI) every call returns ncclSystemError; against
        // a real NCCL this creates an id. Either way: no panic, and a
        // failure keeps NCCL's code.
        match UniqueId::new() {
            Ok(_) => {}
            Err(Error::Nccl { code, op, .. }) => {
                assert_eq!(op, "ncclGetUniqueId");
                assert_ne!(code, sys::NCCL_SUCCESS);
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}
