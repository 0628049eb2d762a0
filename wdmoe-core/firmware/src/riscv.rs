//! RV32IMAC on QEMU `virt` (`-bios none`): startup code, the NS16550 UART
//! for output, the SiFive test device for the exit status, and `minstret`,
//! which under `-icount shift=0` counts retired instructions exactly.

use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    la sp, _stack_top
    la t0, _sbss
    la t1, _ebss
1:  bgeu t0, t1, 2f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 1b
2:  la t0, trap
    csrw mtvec, t0
    call firmware_main
3:  j 3b
    .align 2
trap:
    call crate_fault
"#
);

#[no_mangle]
extern "C" fn crate_fault() -> ! {
    write0(b"FAIL: trap (illegal instruction or access fault)\n\0");
    exit(false)
}

const UART: *mut u8 = 0x1000_0000 as *mut u8;
const TEST: *mut u32 = 0x0010_0000 as *mut u32;

/// Prints a NUL-terminated byte string on the serial port (QEMU's stdout).
pub fn write0(s: &[u8]) {
    for &b in s.iter().take_while(|&&b| b != 0) {
        // SAFETY: the UART's transmit register (QEMU needs no set-up).
        unsafe { UART.write_volatile(b) };
    }
}

/// Ends QEMU: exit status 0 on success, 1 otherwise.
pub fn exit(ok: bool) -> ! {
    let v = if ok { 0x5555 } else { (1 << 16) | 0x3333 };
    loop {
        // SAFETY: the SiFive test finisher of the virt machine.
        unsafe { TEST.write_volatile(v) };
    }
}

/// Nothing to start: `minstret` always counts.
pub fn counter_init() {}

/// Retired instructions (low 32 bits).
#[inline(always)]
pub fn ticks() -> u32 {
    let v: u32;
    // SAFETY: reads a counter CSR (machine mode).
    unsafe { asm!("csrr {0}, minstret", out(reg) v, options(nomem, nostack)) };
    v
}

/// Instructions from `t0` to `t1`.
#[inline(always)]
pub fn elapsed(t0: u32, t1: u32) -> u32 {
    t1.wrapping_sub(t0)
}

/// A loop of exactly `2·n` instructions (`addi`, `bnez`).
#[inline(never)]
pub fn spin(n: u32) {
    // SAFETY: registers only.
    unsafe {
        asm!("1: addi {0}, {0}, -1", "bnez {0}, 1b", inout(reg) n => _, options(nomem, nostack));
    }
}

/// The stack pointer.
#[inline(always)]
pub fn sp() -> usize {
    let sp: usize;
    // SAFETY: reads a register.
    unsafe { asm!("mv {0}, sp", out(reg) sp, options(nomem, nostack)) };
    sp
}
