//! Unwinding a user stack from the registers and stack memory an event
//! brought: with each module's CFI where it covers the code (libraries and
//! programs built without frame pointers), with the frame-pointer chain
//! elsewhere (JIT code), then joined to the kernel side's frame-pointer walk
//! of the same stack where the memory ends.

use std::collections::HashMap;

use leak_common::{StackCopy, UnwindRule, MAX_STACK_FRAMES, STACK_COPY_PAGE_BYTES};

use super::cfi::{CfaBase, Cfi, CfiRow, FrameRule};
use super::maps::ProcessModules;

/// Stack memory from address `base` on.
pub struct StackMemory<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> StackMemory<'a> {
    /// The pages of a stack copy that were read.
    pub fn of_copy(copy: &'a StackCopy) -> Self {
        let pages = copy.pages_read.trailing_ones() as usize;
        let len = (pages * STACK_COPY_PAGE_BYTES).min(copy.bytes.len());
        Self {
            base: copy.base,
            bytes: &copy.bytes[..len],
        }
    }

    /// `bytes` read at `base`.
    pub fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }

    pub fn word(&self, addr: u64) -> Option<u64> {
        let at = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let bytes = self.bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// The registers an unwind starts from, besides the innermost frame's
/// address: %rsp, and %rbp when it is known.
#[derive(Clone, Copy, Debug)]
pub struct Registers {
    pub sp: u64,
    pub bp: Option<u64>,
}

/// How to step from a frame at one address to its caller.
#[derive(Clone, Copy, Debug)]
enum Step {
    Cfi(FrameRule),
    /// Code without CFI: the frame-pointer chain.
    FramePointer,
    /// Code whose CFI this unwinder cannot evaluate.
    Stop,
}

/// Unwinds stacks of one process; caches a step per code address.
#[derive(Default)]
pub struct Unwinder {
    steps: HashMap<u64, Step>,
    /// Of the last unwind, per frame: the frame pointer of the function the
    /// frame is in, where known (0 otherwise), which shows a JS frame's slots.
    frame_pointers: Vec<u64>,
    /// Of the last unwind, per step: the address looked up and its rule, for
    /// the kernel side's walk (`UNWIND_RULES`).
    rules: Vec<(u64, UnwindRule)>,
}

impl Unwinder {
    /// Writes into `frames` the stack from `pc` (an exact instruction
    /// pointer, or a return address when `pc_returns`: stacks taken at a
    /// return probe) through `memory`, innermost first: `pc`, then each
    /// caller's return address. Returns whether it reached the outermost
    /// frame; otherwise it stopped where the memory, the CFI or the code
    /// ended.
    pub fn unwind(
        &mut self,
        modules: &ProcessModules,
        pc: u64,
        pc_returns: bool,
        registers: Registers,
        memory: &StackMemory,
        frames: &mut Vec<u64>,
    ) -> bool {
        frames.clear();
        frames.push(pc);
        self.frame_pointers.clear();
        self.frame_pointers.push(registers.bp.unwrap_or(0));
        self.rules.clear();
        // A return address is looked up at the call instruction before it.
        let mut lookup = if pc_returns { pc.wrapping_sub(1) } else { pc };
        let Registers { mut sp, mut bp } = registers;
        while frames.len() < MAX_STACK_FRAMES {
            let step = self.step(modules, lookup);
            self.rules.push((lookup, kernel_rule(step)));
            let (cfa, return_address, caller_bp) = match step {
                Some(Step::Cfi(rule)) => {
                    let base = match rule.cfa_base {
                        CfaBase::Sp => sp,
                        CfaBase::Bp => match bp {
                            Some(bp) => bp,
                            None => return false,
                        },
                    };
                    let cfa = base.wrapping_add_signed(rule.cfa_offset);
                    let Some(at) = rule.return_address else {
                        return true;
                    };
                    let Some(return_address) = memory.word(cfa.wrapping_add_signed(at)) else {
                        return false;
                    };
                    let caller_bp = match rule.saved_bp {
                        Some(at) => memory.word(cfa.wrapping_add_signed(at)),
                        None => bp,
                    };
                    (cfa, return_address, caller_bp)
                }
                Some(Step::FramePointer) => {
                    let Some(bp) = bp else { return false };
                    let (Some(caller_bp), Some(return_address)) = (memory.word(bp), memory.word(bp.wrapping_add(8)))
                    else {
                        return false;
                    };
                    (bp.wrapping_add(16), return_address, Some(caller_bp))
                }
                Some(Step::Stop) | None => return false,
            };
            // The first thread of some programs ends with a zero return address.
            if return_address == 0 {
                return true;
            }
            // A stack only grows down: a caller's frame is above its callee's.
            if cfa <= sp {
                return false;
            }
            if !modules.is_code(return_address.wrapping_sub(1)) {
                self.rules.push((return_address.wrapping_sub(1), kernel_rule(None)));
                return false;
            }
            frames.push(return_address);
            self.frame_pointers.push(caller_bp.unwrap_or(0));
            (sp, bp) = (cfa, caller_bp);
            lookup = return_address.wrapping_sub(1);
        }
        false
    }

    /// Per frame of the last unwind, the frame pointer of the function it is
    /// in (0: not known).
    pub fn frame_pointers(&self) -> &[u64] {
        &self.frame_pointers
    }

    /// Per step of the last unwind, the address its rule was looked up at
    /// (a return address − 1, or frame 0's exact address) and the rule as the
    /// kernel side's walk takes it; `STOP` where the address is not code.
    pub fn rules(&self) -> &[(u64, UnwindRule)] {
        &self.rules
    }

    /// None when `pc` is in no code the target mapped.
    fn step(&mut self, modules: &ProcessModules, pc: u64) -> Option<Step> {
        if let Some(&step) = self.steps.get(&pc) {
            return Some(step);
        }
        if !modules.is_code(pc) {
            // Not cached: the module may be mapped later.
            return None;
        }
        let row = modules.find(pc).and_then(|mapping| {
            let module = mapping.file.as_ref()?;
            let cfi = module.cfi.get_or_init(|| Cfi::load(&module.file)).as_ref()?;
            Some(cfi.row(cfi.vaddr(mapping.file_offset(pc))?))
        });
        let step = match row {
            Some(CfiRow::Rule(rule)) => Step::Cfi(rule),
            Some(CfiRow::Unsupported) => Step::Stop,
            // JIT code, and modules or code without CFI.
            Some(CfiRow::Uncovered) | None => Step::FramePointer,
        };
        self.steps.insert(pc, step);
        Some(step)
    }
}

/// `step` as the kernel side's `UnwindRule`: None (not code), a rule it does
/// not evaluate or offsets beyond 32 bits end the stack there.
fn kernel_rule(step: Option<Step>) -> UnwindRule {
    let stop = UnwindRule {
        kind: UnwindRule::STOP,
        ..UnwindRule::default()
    };
    let rule = match step {
        Some(Step::Cfi(rule)) => rule,
        Some(Step::FramePointer) => {
            return UnwindRule {
                kind: UnwindRule::FRAME_POINTER,
                ..UnwindRule::default()
            }
        }
        Some(Step::Stop) | None => return stop,
    };
    let Some(return_address) = rule.return_address else {
        return UnwindRule {
            kind: UnwindRule::OUTERMOST,
            ..UnwindRule::default()
        };
    };
    let kind = match rule.cfa_base {
        CfaBase::Sp => UnwindRule::CFA_SP,
        CfaBase::Bp => UnwindRule::CFA_BP,
    };
    // 0 in `saved_bp` means not saved: %rbp is never saved at the CFA itself
    // (the caller's stack).
    let saved_bp = match rule.saved_bp.map(i32::try_from) {
        None => Ok(0),
        Some(Ok(0)) => return stop,
        Some(at) => at,
    };
    match (i32::try_from(rule.cfa_offset), i32::try_from(return_address), saved_bp) {
        (Ok(cfa_offset), Ok(return_address), Ok(saved_bp)) => UnwindRule {
            kind,
            cfa_offset,
            return_address,
            saved_bp,
            ..UnwindRule::default()
        },
        _ => stop,
    }
}

/// How an unwound stack and the kernel side's frame-pointer walk of the same
/// stack make one: the first `unwound` unwound frames, then the walk's from
/// index `walk_from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Splice {
    pub unwound: usize,
    pub walk_from: usize,
}

impl Splice {
    /// `unwound` as `Unwinder::unwind` wrote it (`complete`: it reached the
    /// outermost frame) and `walk` the walk (frame 0 the same).
    pub fn of(unwound: &[u64], complete: bool, walk: &[u64]) -> Splice {
        let whole = |walk_from| Splice {
            unwound: unwound.len(),
            walk_from,
        };
        if complete || walk.is_empty() {
            return whole(walk.len());
        }
        let Some(&last) = unwound.last() else {
            return Splice {
                unwound: 0,
                walk_from: 0,
            };
        };
        if unwound.len() == 1 {
            return whole(1);
        }
        // The walk went on from the last frame unwound.
        if let Some(at) = walk.iter().skip(1).position(|&frame| frame == last) {
            return whole(at + 2);
        }
        // The walk skipped every frame unwound (frameless functions under
        // the first frame-pointer frame, whose frame the walk went on from).
        if !unwound[1..].iter().any(|frame| walk[1..].contains(frame)) {
            return whole(1);
        }
        whole(walk.len())
    }

    /// Whether the spliced stack is the walk itself.
    pub fn is_walk(self, unwound: &[u64], walk: &[u64]) -> bool {
        self.walk_from == self.unwound && walk.get(..self.unwound) == unwound.get(..self.unwound)
    }

    pub fn frames(self, unwound: &[u64], walk: &[u64]) -> Vec<u64> {
        self.frames_iter(unwound, walk).collect()
    }

    pub fn frames_iter<'a>(self, unwound: &'a [u64], walk: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
        let tail = walk.get(self.walk_from..).unwrap_or_default();
        unwound[..self.unwound].iter().chain(tail).copied()
    }

    /// For each frame of `frames`, its index in the walk, if it is one of
    /// the walk's (whose JS slots it then has): unwound frames are matched
    /// in order.
    pub fn walk_indices(self, unwound: &[u64], walk: &[u64]) -> Vec<Option<usize>> {
        let mut next = 0;
        let mut indices: Vec<Option<usize>> = unwound[..self.unwound]
            .iter()
            .map(|frame| {
                let at = walk.get(next..)?.iter().position(|f| f == frame)? + next;
                next = at + 1;
                Some(at)
            })
            .collect();
        indices.extend((self.walk_from..walk.len()).map(Some));
        indices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_the_walk_after_the_unwound_frames() {
        // Complete: the unwound frames alone.
        let s = Splice::of(&[1, 2, 3], true, &[1, 9, 8]);
        assert_eq!(s.frames(&[1, 2, 3], &[1, 9, 8]), [1, 2, 3]);
        // Stopped at a frame the walk has: the walk goes on after it.
        let (unwound, walk) = ([1, 2, 3], [1, 7, 3, 4, 5]);
        let s = Splice::of(&unwound, false, &walk);
        assert_eq!(s.frames(&unwound, &walk), [1, 2, 3, 4, 5]);
        assert_eq!(
            s.walk_indices(&unwound, &walk),
            [Some(0), None, Some(2), Some(3), Some(4)]
        );
        // The walk skipped the unwound frames (frameless callees).
        let (unwound, walk) = ([1, 2, 3], [1, 4, 5]);
        let s = Splice::of(&unwound, false, &walk);
        assert_eq!(s.frames(&unwound, &walk), [1, 2, 3, 4, 5]);
        // Nothing unwound beyond frame 0: the walk.
        let s = Splice::of(&[1], false, &walk);
        assert!(s.is_walk(&[1], &walk));
        assert!(Splice::of(&walk, false, &walk).is_walk(&walk, &walk));
        // Overlapping, but not at the last unwound frame: no guess.
        let (unwound, walk) = ([1, 2, 3], [1, 2, 4]);
        assert_eq!(Splice::of(&unwound, false, &walk).frames(&unwound, &walk), [1, 2, 3]);
    }

    #[test]
    fn kernel_rules_say_what_the_cfi_rows_say() {
        let cfi = |cfa_base, cfa_offset, return_address, saved_bp| {
            Some(Step::Cfi(FrameRule {
                cfa_base,
                cfa_offset,
                return_address,
                saved_bp,
            }))
        };
        let rule = |kind, cfa_offset, return_address, saved_bp| UnwindRule {
            kind,
            cfa_offset,
            return_address,
            saved_bp,
            ..UnwindRule::default()
        };
        // A frameless function's body: the CFA above its locals.
        assert_eq!(
            kernel_rule(cfi(CfaBase::Sp, 24, Some(-8), None)),
            rule(UnwindRule::CFA_SP, 24, -8, 0)
        );
        // A frame-pointer function's body.
        assert_eq!(
            kernel_rule(cfi(CfaBase::Bp, 16, Some(-8), Some(-16))),
            rule(UnwindRule::CFA_BP, 16, -8, -16)
        );
        assert_eq!(kernel_rule(cfi(CfaBase::Sp, 8, None, None)).kind, UnwindRule::OUTERMOST);
        assert_eq!(kernel_rule(Some(Step::FramePointer)).kind, UnwindRule::FRAME_POINTER);
        // Not code, rules not evaluated, offsets it cannot hold: the end.
        for step in [
            None,
            Some(Step::Stop),
            cfi(CfaBase::Sp, 1 << 40, Some(-8), None),
            cfi(CfaBase::Sp, 16, Some(-8), Some(0)),
        ] {
            assert_eq!(kernel_rule(step).kind, UnwindRule::STOP, "{step:?}");
        }
    }

    #[test]
    fn reads_only_the_memory_it_has() {
        let bytes: Vec<u8> = (0u64..4).flat_map(u64::to_le_bytes).collect();
        let memory = StackMemory::new(0x1000, &bytes);
        assert_eq!(memory.word(0x1008), Some(1));
        assert_eq!(memory.word(0x1018), Some(3));
        assert_eq!(memory.word(0x1019), None);
        assert_eq!(memory.word(0xff8), None);
        assert_eq!(memory.word(u64::MAX), None);
    }
}
