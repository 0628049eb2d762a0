//! The bounded abort of [`super::Comm::abort`]: `ncclCommAbort` on a helper
//! thread, waited for at most [`ABORT_WAIT`], so that an abort which itself
//! hung could not hold a rank that has an error to report.

use std::time::Duration;

use super::sys;

/// The longest [`super::Comm::abort`] (and a drop after a failure) waits for
/// `ncclCommAbort`.
pub const ABORT_WAIT: Duration = Duration::from_secs(10);

/// A communicator and the CUDA context current where it was used, handed to
/// the helper thread of [`abort_bounded`].
struct AbortJob {
    comm: sys::ncclComm_t,
    ctx: cust::sys::CUcontext,
}

// SAFETY: the job moves the only remaining handle of the communicator (its
// Comm has set its own to null) to one thread, which calls ncclCommAbort on
// it once; a CUDA context may be made current on any thread.
unsafe impl Send for AbortJob {}

impl AbortJob {
    fn run(self) {
        // SAFETY: ctx was current on the calling thread (or null: then
        // nothing is made current); the communicator is live and aborted
        // once, by this thread only (see the Send impl).
        unsafe {
            if !self.ctx.is_null() {
                cust::sys::cuCtxSetCurrent(self.ctx);
            }
            sys::ncclCommAbort(self.comm);
        }
    }
}

/// `ncclCommAbort(comm)` on a helper thread (with this thread's CUDA
/// context), waited for at most `limit`; whether it finished.
pub(super) fn abort_bounded(comm: sys::ncclComm_t, limit: Duration) -> bool {
    let mut ctx: cust::sys::CUcontext = std::ptr::null_mut();
    // SAFETY: writes one context handle (left null if none is current or
    // the call fails).
    unsafe { cust::sys::cuCtxGetCurrent(&mut ctx) };
    let job = AbortJob { comm, ctx };
    run_bounded(move || job.run(), limit)
}

/// Runs `f` on a helper thread and waits for it at most `limit`; whether it
/// finished (if not, the thread runs on, detached). Where no thread can be
/// started, runs `f` here.
fn run_bounded<F: FnOnce() + Send + 'static>(f: F, limit: Duration) -> bool {
    use std::sync::mpsc;
    let (done_tx, done_rx) = mpsc::channel();
    let (job_tx, job_rx) = mpsc::channel::<F>();
    let spawned = std::thread::Builder::new()
        .name("nccl-abort".into())
        .spawn(move || {
            if let Ok(f) = job_rx.recv() {
                f();
                let _ = done_tx.send(());
            }
        });
    // A failed spawn drops the thread's closure and with it the receiver:
    // then the job comes back from send and runs here.
    match job_tx.send(f) {
        Ok(()) if spawned.is_ok() => done_rx.recv_timeout(limit).is_ok(),
        Ok(()) => false,
        Err(mpsc::SendError(f)) => {
            f();
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_bounded_run_returns_at_its_limit_or_when_done() {
        let t0 = Instant::now();
        let finished = run_bounded(
            || std::thread::sleep(Duration::from_secs(3)),
            Duration::from_millis(100),
        );
        let waited = t0.elapsed();
        assert!(!finished);
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(run_bounded(
            move || tx.send(7).unwrap(),
            Duration::from_secs(30)
        ));
        assert_eq!(rx.try_recv(), Ok(7));
    }

    #[test]
    fn aborting_no_communicator_finishes() {
        // ncclCommAbort(NULL) returns at once (NCCL: success; the stub: its
        // error): the helper thread's round trip, no GPU needed.
        assert!(abort_bounded(std::ptr::null_mut(), Duration::from_secs(30)));
    }
}
