//! Kernel side of leakscope: one module per probe family.
//!
//! Every program starts by checking that the current process is the target
//! (`TARGET_TGID`, set at load time): uprobes on a shared library fire for
//! every process whose breakpoint is installed, and syscall tracepoints fire
//! system-wide.
#![no_std]
#![no_main]

mod libc_alloc;
mod mmap;
mod node;
mod page_fault;
mod sampling;
mod shared;
mod stack_copy;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
