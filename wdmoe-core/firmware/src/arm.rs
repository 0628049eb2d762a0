//! Cortex-M4F on QEMU `mps2-an386`: vector table, reset code (FPU on,
//! `.data` copied, `.bss` zeroed), ARM semihosting for output and exit, and
//! the SysTick timer as the instruction counter: under `-icount shift=0`
//! one instruction takes 1 ns of virtual time, and SysTick counts the 25 MHz
//! system clock, so one tick is 40 instructions. `calibrate` measures that
//! ratio with a loop of known length; measurements repeat the call and
//! divide, which gives whole instructions.

use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .section .vectors, "a"
    .align 2
    .word _stack_top
    .word reset
    .rept 14
    .word fault
    .endr

    .section .text.reset, "ax"
    .global reset
    .type reset, %function
    .thumb_func
reset:
    /* CPACR: full access to CP10 and CP11 (the FPU), before any float. */
    ldr r0, =0xE000ED88
    ldr r1, [r0]
    orr r1, r1, #(0xF << 20)
    str r1, [r0]
    dsb
    isb
    /* .data from its load address, .bss zeroed. */
    ldr r0, =_sdata
    ldr r1, =_edata
    ldr r2, =_sidata
1:  cmp r0, r1
    bhs 2f
    ldr r3, [r2], #4
    str r3, [r0], #4
    b 1b
2:  ldr r0, =_sbss
    ldr r1, =_ebss
    movs r2, #0
3:  cmp r0, r1
    bhs 4f
    str r2, [r0], #4
    b 3b
4:  bl firmware_main
    b .

    .type fault, %function
    .thumb_func
fault:
    ldr r0, =fault_msg
    bl crate_fault
    b .
    .section .rodata.fault_msg, "a"
fault_msg:
    .asciz "FAIL: hard fault or unexpected exception"
"#
);

#[no_mangle]
extern "C" fn crate_fault(msg: *const u8) -> ! {
    // SAFETY: a static, NUL-terminated string.
    unsafe { semihost(0x04, msg as usize) };
    exit(false)
}

/// One semihosting call (`bkpt 0xAB`).
///
/// # Safety
/// `arg` is what operation `op` expects.
unsafe fn semihost(op: usize, arg: usize) -> usize {
    let r: usize;
    // SAFETY: QEMU handles `bkpt 0xAB` with semihosting enabled.
    unsafe {
        asm!("bkpt 0xAB", inout("r0") op => r, in("r1") arg, options(nostack));
    }
    r
}

/// Prints a NUL-terminated byte string on the host's stdout.
pub fn write0(s: &[u8]) {
    debug_assert!(s.last() == Some(&0));
    // SAFETY: NUL-terminated (the callers' buffers end in 0).
    unsafe { semihost(0x04, s.as_ptr() as usize) };
}

/// Ends QEMU: exit status 0 on success, 1 otherwise.
pub fn exit(ok: bool) -> ! {
    let reason = if ok { 0x20026 } else { 0x20023 };
    loop {
        // SAFETY: SYS_EXIT with an ADP reason code (AArch32 form).
        unsafe { semihost(0x18, reason) };
    }
}

const SYST_CSR: *mut u32 = 0xE000_E010 as *mut u32;
const SYST_RVR: *mut u32 = 0xE000_E014 as *mut u32;
const SYST_CVR: *mut u32 = 0xE000_E018 as *mut u32;

/// Starts SysTick, free-running from 2^24 − 1 on the processor clock.
pub fn counter_init() {
    // SAFETY: the architectural SysTick registers.
    unsafe {
        SYST_RVR.write_volatile(0x00FF_FFFF);
        SYST_CVR.write_volatile(0);
        SYST_CSR.write_volatile(0b101);
    }
}

/// Ticks elapsed (SysTick counts down; 24 bits).
#[inline(always)]
pub fn ticks() -> u32 {
    // SAFETY: the architectural SysTick registers.
    let v = unsafe { SYST_CVR.read_volatile() };
    0x00FF_FFFFu32.wrapping_sub(v)
}

/// Ticks from `t0` to `t1` (modulo the 24-bit counter).
#[inline(always)]
pub fn elapsed(t0: u32, t1: u32) -> u32 {
    t1.wrapping_sub(t0) & 0x00FF_FFFF
}

/// A loop of exactly `2·n` instructions (`subs`, `bne`).
#[inline(never)]
pub fn spin(n: u32) {
    // SAFETY: registers only.
    unsafe {
        asm!("1: subs {0}, {0}, #1", "bne 1b", inout(reg) n => _, options(nomem, nostack));
    }
}

/// The stack pointer.
#[inline(always)]
pub fn sp() -> usize {
    let sp: usize;
    // SAFETY: reads a register.
    unsafe { asm!("mov {0}, sp", out(reg) sp, options(nomem, nostack)) };
    sp
}
