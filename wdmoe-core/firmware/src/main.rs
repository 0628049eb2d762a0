//! The firmware measurement harness (see Cargo.toml and run.sh): runs the
//! wdmoe-core entry points a base station calls per token on the target
//! itself, checks their results, and prints one line per measurement:
//!
//! `FIRMWARE target=<triple> api=<rust|c> fn=<name> n=<experts or devices> instructions=<N> stack_bytes=<S>`
//!
//! - instructions: retired instructions of one call, under QEMU
//!   `-icount shift=0` (RISC-V: `minstret`; Cortex-M: SysTick, calibrated
//!   against a loop of known length, the call repeated to resolve single
//!   instructions), minus the harness's own call overhead;
//! - stack_bytes: peak stack below the caller's stack pointer during one
//!   call, by stack painting (a pattern written below SP, then the lowest
//!   overwritten word found), the call's return address included.
//!
//! The C measurements (api=c) call the static library through `extern "C"`
//! declarations that mirror include/wdmoe.h, linked like firmware links it.
#![no_std]
#![no_main]
// The size probe links only a subset of the cases.
#![cfg_attr(feature = "size-probe", allow(dead_code, unused_imports))]

#[cfg(target_arch = "arm")]
mod arm;
#[cfg(target_arch = "arm")]
use arm as arch;
#[cfg(target_arch = "riscv32")]
mod riscv;
#[cfg(target_arch = "riscv32")]
use riscv as arch;

#[cfg(wdmoe_capi)]
mod capi;
mod cases;

use core::fmt::{self, Write};
use core::hint::black_box;

const TARGET: &str = env!("FW_TARGET");

/// One output line, NUL-terminated for semihosting.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len + 2 >= self.buf.len() {
                return Err(fmt::Error);
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints one line.
pub fn print(args: fmt::Arguments<'_>) {
    let mut l = Line {
        buf: [0; 256],
        len: 0,
    };
    let _ = l.write_fmt(args);
    l.buf[l.len] = b'\n';
    l.buf[l.len + 1] = 0;
    arch::write0(&l.buf[..l.len + 2]);
}

macro_rules! say {
    ($($t:tt)*) => { $crate::print(format_args!($($t)*)) };
}

/// The measurement state: instructions per counter tick, and failures.
pub struct Harness {
    per_tick: u32,
    failures: u32,
}

extern "C" {
    static _stack_bottom: u8;
}

const PAINT: u32 = 0xC5C5_C5C5;

impl Harness {
    fn new() -> Self {
        arch::counter_init();
        // Calibration: `spin(n)` retires 2n instructions (+ a few for the call).
        let n = 200_000;
        let t0 = arch::ticks();
        arch::spin(black_box(n));
        let t = arch::elapsed(t0, arch::ticks()).max(1);
        let per_tick = (2 * n + t / 2) / t;
        say!("FIRMWARE-INFO target={TARGET} instructions_per_counter_tick={per_tick} calibration_ticks={t}");
        Harness {
            per_tick: per_tick.max(1),
            failures: 0,
        }
    }

    /// Records a failed check.
    pub fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.failures += 1;
            say!("FAIL: target={TARGET} {what}");
        }
    }

    /// Counter ticks of `reps` calls of `f`.
    #[inline(never)]
    fn ticks_of(&self, f: &mut dyn FnMut(), reps: u32) -> u32 {
        let t0 = arch::ticks();
        for _ in 0..reps {
            f();
        }
        arch::elapsed(t0, arch::ticks())
    }

    /// Instructions of one call of `f` (the loop and call overhead, measured
    /// with an empty function, subtracted).
    fn instructions(&self, f: &mut dyn FnMut()) -> u32 {
        let f = black_box(f);
        let mut empty = || {};
        let empty: &mut dyn FnMut() = black_box(&mut empty);
        // One call to size the repetitions: about 4 M instructions in all.
        let once = self.ticks_of(f, 1).max(1) * self.per_tick;
        let reps = if self.per_tick == 1 {
            1
        } else {
            (4_000_000 / once).clamp(1, 256)
        };
        let t = self.ticks_of(f, reps);
        let base = self.ticks_of(empty, reps);
        let total = t.saturating_sub(base) as u64 * self.per_tick as u64;
        ((total + reps as u64 / 2) / reps as u64) as u32
    }

    /// Peak stack bytes of one call of `f`, by painting.
    #[inline(never)]
    fn stack_bytes(&self, f: &mut dyn FnMut()) -> usize {
        let f = black_box(f);
        // A linker-script symbol: the lowest address of the stack.
        let bottom = core::ptr::addr_of!(_stack_bottom) as usize;
        let sp = arch::sp();
        let mut p = bottom;
        while p < sp {
            // SAFETY: unused stack below the live frames (no interrupts run).
            unsafe { (p as *mut u32).write_volatile(PAINT) };
            p += 4;
        }
        f();
        let mut p = bottom;
        // SAFETY: as above; reads only.
        while p < sp && unsafe { (p as *const u32).read_volatile() } == PAINT {
            p += 4;
        }
        sp - p
    }

    /// Measures `f` and prints the line.
    pub fn measure(&mut self, api: &str, name: &str, n: usize, f: &mut dyn FnMut()) {
        let instructions = self.instructions(f);
        let stack = self.stack_bytes(f);
        say!(
            "FIRMWARE target={TARGET} api={api} fn={name} n={n} instructions={instructions} stack_bytes={stack}"
        );
    }
}

#[cfg(not(feature = "size-probe"))]
#[no_mangle]
extern "C" fn firmware_main() -> ! {
    let mut h = Harness::new();
    cases::rust(&mut h);
    #[cfg(wdmoe_capi)]
    capi::run(&mut h);
    #[cfg(not(wdmoe_capi))]
    say!("FIRMWARE-INFO target={TARGET} C ABI not linked (WDMOE_CAPI_LIB_DIR unset)");
    if h.failures == 0 {
        say!("FIRMWARE-DONE target={TARGET} ok");
    }
    arch::exit(h.failures == 0)
}

#[cfg(feature = "size-probe")]
#[no_mangle]
extern "C" fn firmware_main() -> ! {
    arch::exit(cases::size_probe())
}

#[cfg(not(feature = "size-probe"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL: target={TARGET} panic: {info}");
    arch::exit(false)
}

#[cfg(feature = "size-probe")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    arch::exit(false)
}
