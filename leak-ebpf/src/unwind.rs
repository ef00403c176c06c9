//! Unwinding per-call allocator events in the kernel side, through code
//! built without frame pointers: each frame steps to its caller by the rule
//! user space read from its module's CFI for that code address
//! (`UNWIND_RULES`), one hash lookup per frame. At an address without a
//! rule the event goes with a copy of the stack from that frame on
//! (`shared::emit_site_event`): user space unwinds the copy and writes the
//! rules of every address it stepped through (`STOP` for one that is not
//! code), so that the next event of that stack is whole here.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::map, maps::LruHashMap};
use leak_common::UnwindRule;

use crate::shared::{now_ns, MAX_STACK_BYTES};

/// Rules by code address (a return address − 1), written by user space,
/// and `ASKED` here. An evicted rule is asked about again.
#[map]
static UNWIND_RULES: LruHashMap<u64, UnwindRule> = LruHashMap::with_max_entries(64 * 1024, 0);

/// 1: per-call events are unwound by `UNWIND_RULES` (user space answers the
/// stack copies); 0: by the frame-pointer chain alone. Set by user space at load.
#[unsafe(no_mangle)]
static UNWIND_BY_RULES: u32 = 0;

/// How long an asked rule is waited for (in `asked_at` units, ~1 ms)
/// before stack copies ask again, and how many events reaching the address
/// bring a copy meanwhile (so that a few calls in a row have whole stacks);
/// the walks of later ones go on by frame pointers from there (`shared`).
const ASKED_UNITS: u32 = 10;
const COPIES_PER_ASK: u32 = 32;

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub fn by_rules() -> bool {
    // SAFETY: a read of a constant the loader patched; volatile so the
    // compiler cannot fold the initial value.
    unsafe { core::ptr::read_volatile(&UNWIND_BY_RULES) != 0 }
}

/// The `asked_at` clock: CLOCK_MONOTONIC in units of 2^20 ns.
#[inline(always)]
fn asked_at() -> u32 {
    (now_ns() >> 20) as u32
}

/// Where one step of the walk led.
pub enum Step {
    /// The caller: its return address, stack pointer (the CFA) and %rbp.
    Caller { ret: u64, sp: u64, bp: u64 },
    /// The stack ends here: whole, or where the rules end it.
    End,
    /// No rule for the address yet: user space needs the stack from here.
    Unknown,
    /// Asked for the rule, which has not come yet.
    Asked,
}

/// Steps from the frame at return address `pc`, whose stack pointer and
/// %rbp are `sp` and `bp`, to its caller.
#[inline(always)]
pub fn step(pc: u64, sp: u64, bp: u64) -> Step {
    // A return address is looked up at the call instruction before it.
    let at = pc.wrapping_sub(1);
    // SAFETY: map values are plain data.
    let Some(rule) = UNWIND_RULES.get_ptr_mut(at) else {
        let asked = UnwindRule {
            kind: UnwindRule::ASKED,
            asked_at: asked_at(),
            copies: 1,
            ..UnwindRule::default()
        };
        // Not over a rule user space wrote meanwhile.
        let _ = UNWIND_RULES.insert(at, asked, BPF_NOEXIST);
        return Step::Unknown;
    };
    // SAFETY: map values are plain data; a concurrent update of a count
    // only miscounts a copy.
    let rule = unsafe { &mut *rule };
    let (cfa, ret_at, saved_bp) = match rule.kind {
        UnwindRule::CFA_SP | UnwindRule::CFA_BP => {
            let base = if rule.kind == UnwindRule::CFA_SP { sp } else { bp };
            let cfa = base.wrapping_add_signed(i64::from(rule.cfa_offset));
            (cfa, rule.return_address, rule.saved_bp)
        }
        UnwindRule::ASKED => {
            let now = asked_at();
            if now.wrapping_sub(rule.asked_at) >= ASKED_UNITS {
                // No answer (its copy dropped, or still being read): ask again.
                (rule.asked_at, rule.copies) = (now, 0);
            }
            if rule.copies >= COPIES_PER_ASK {
                return Step::Asked;
            }
            rule.copies += 1;
            return Step::Unknown;
        }
        // The frame pointer points at the saved %rbp, under the return address.
        UnwindRule::FRAME_POINTER if bp > sp && bp - sp <= MAX_STACK_BYTES => (bp.wrapping_add(16), -8, -16),
        _ => return Step::End,
    };
    // A stack only grows down: a caller's frame is above its callee's.
    if cfa <= sp || cfa - sp > MAX_STACK_BYTES {
        return Step::End;
    }
    let ret_addr = cfa.wrapping_add_signed(i64::from(ret_at));
    let (ret, bp) = if saved_bp == 0 {
        // SAFETY: reads user memory through the checked helper.
        match unsafe { bpf_probe_read_user(ret_addr as *const u64) } {
            Ok(ret) => (ret, bp),
            Err(_) => return Step::End,
        }
    } else if saved_bp == ret_at - 8 {
        // The usual frame: %rbp saved right under the return address, one read.
        // SAFETY: as above.
        match unsafe { bpf_probe_read_user((ret_addr - 8) as *const [u64; 2]) } {
            Ok([bp, ret]) => (ret, bp),
            Err(_) => return Step::End,
        }
    } else {
        let bp_addr = cfa.wrapping_add_signed(i64::from(saved_bp));
        // SAFETY: as above.
        match unsafe {
            (
                bpf_probe_read_user(ret_addr as *const u64),
                bpf_probe_read_user(bp_addr as *const u64),
            )
        } {
            (Ok(ret), Ok(bp)) => (ret, bp),
            _ => return Step::End,
        }
    };
    if ret == 0 {
        return Step::End;
    }
    Step::Caller { ret, sp: cfa, bp }
}
