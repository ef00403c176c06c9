//! Where each uprobe goes inside its function.
//!
//! A uprobe hit costs ~1 µs when the kernel can emulate the probed instruction
//! and 8–13 µs when it must single-step it; on a `lock`-prefixed instruction
//! it never fires at all (field notes). x86 uprobes emulate `push reg`,
//! `jmp`/`call` rel, `jcc` and one-byte `nop`. So an entry probe that needs
//! only its argument registers can sit on the first emulated instruction of
//! the function's straight-line prefix, as long as no earlier instruction
//! wrote those registers.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register};

/// How the kernel handles a uprobe on an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    Emulated,
    SingleStepped,
    /// `lock`-prefixed: the kernel accepts the probe but never fires it.
    Refused,
}

/// The chosen offset past the symbol and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub handling: Handling,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("cannot decode the instruction at +{0:#x}")]
    Undecodable(u64),
    #[error(
        "the first instruction is `{0}`, which the kernel never fires uprobes on, and no later one keeps the arguments"
    )]
    NoUsableInstruction(String),
}

pub fn handling(insn: &Instruction) -> Handling {
    if insn.has_lock_prefix() {
        return Handling::Refused;
    }
    let emulated = matches!(
        insn.code(),
        Code::Push_r64 | Code::Push_r16 | Code::Nopd | Code::Nopw | Code::Nopq
    ) || insn.is_jcc_short_or_near()
        || matches!(
            insn.code(),
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64
        );
    if emulated {
        Handling::Emulated
    } else {
        Handling::SingleStepped
    }
}

fn decode_at(code: &[u8], ip: u64, offset: u64) -> Result<Instruction, PlacementError> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(PlacementError::Undecodable(offset));
    }
    Ok(insn)
}

/// A probe with a return probe must sit on the entry instruction: the kernel
/// hijacks the return address at `[rsp]`, which only holds it at entry.
pub fn place_at_entry(code: &[u8], ip: u64) -> Result<Placement, PlacementError> {
    let insn = decode_at(code, ip, 0)?;
    match handling(&insn) {
        Handling::Refused => Err(PlacementError::NoUsableInstruction(insn.to_string())),
        h => Ok(Placement {
            offset: 0,
            handling: h,
            reason: format!("entry (return probe needs it): `{insn}`"),
        }),
    }
}

/// A probe that only reads `args` (full 64-bit registers): the first emulated
/// instruction of the straight-line prefix at which they are intact; else the
/// first instruction the kernel fires on.
pub fn place_entry_only(code: &[u8], ip: u64, args: &[Register]) -> Result<Placement, PlacementError> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut fallback: Option<Placement> = None;
    let mut first_text = None;
    for insn in &mut decoder {
        let offset = insn.ip() - ip;
        if insn.is_invalid() {
            break;
        }
        first_text.get_or_insert_with(|| insn.to_string());
        let h = handling(&insn);
        if h == Handling::Emulated {
            let reason = if offset == 0 {
                format!("entry is emulated: `{insn}`")
            } else {
                format!("first emulated instruction with arguments intact: `{insn}`")
            };
            return Ok(Placement {
                offset,
                handling: h,
                reason,
            });
        }
        if h == Handling::SingleStepped && fallback.is_none() {
            fallback = Some(Placement {
                offset,
                handling: h,
                reason: format!("no emulated instruction before the arguments change; single-stepped `{insn}`"),
            });
        }
        let writes_arg = info.info(&insn).used_registers().iter().any(|used| {
            args.contains(&used.register().full_register())
                && !matches!(
                    used.access(),
                    OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess | OpAccess::None
                )
        });
        if writes_arg || insn.flow_control() != FlowControl::Next {
            break;
        }
    }
    fallback.ok_or(match first_text {
        Some(text) => PlacementError::NoUsableInstruction(text),
        None => PlacementError::Undecodable(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RDI: &[Register] = &[Register::RDI];

    #[test]
    fn glibc_free_moves_to_the_branch_after_test() {
        // test %rdi,%rdi ; je +0xbf ; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        let p = place_entry_only(&code, 0x1000, RDI).unwrap();
        assert_eq!((p.offset, p.handling), (3, Handling::Emulated));
    }

    #[test]
    fn emulated_entry_stays_at_entry() {
        // push %r12 ; push %rbp (glibc malloc)
        let code = [0x41, 0x54, 0x55];
        let p = place_entry_only(&code, 0, RDI).unwrap();
        assert_eq!((p.offset, p.handling), (0, Handling::Emulated));
        assert_eq!(place_at_entry(&code, 0).unwrap().handling, Handling::Emulated);
    }

    #[test]
    fn lock_prefixed_entry_moves_past_it() {
        // lock subq $1,(%rdi) ; push %rbx  (like node's ArrayBuffer Free)
        let code = [0xf0, 0x48, 0x83, 0x2f, 0x01, 0x53];
        let p = place_entry_only(&code, 0, &[Register::RSI]).unwrap();
        assert_eq!((p.offset, p.handling), (5, Handling::Emulated));
        assert!(matches!(
            place_at_entry(&code, 0),
            Err(PlacementError::NoUsableInstruction(_))
        ));
    }

    #[test]
    fn stops_where_the_argument_is_overwritten() {
        // test %rdi,%rdi ; mov %rsi,%rdi ; push %rbp
        let code = [0x48, 0x85, 0xff, 0x48, 0x89, 0xf7, 0x55];
        let p = place_entry_only(&code, 0, RDI).unwrap();
        assert_eq!((p.offset, p.handling), (0, Handling::SingleStepped));
    }

    #[test]
    fn classifies_kernel_emulated_forms() {
        let decode = |bytes: &[u8]| decode_at(bytes, 0, 0).unwrap();
        assert_eq!(handling(&decode(&[0x90])), Handling::Emulated); // nop
        assert_eq!(handling(&decode(&[0xe8, 0, 0, 0, 0])), Handling::Emulated); // call rel32
        assert_eq!(handling(&decode(&[0xeb, 0x05])), Handling::Emulated); // jmp rel8
        assert_eq!(handling(&decode(&[0x0f, 0x1f, 0x00])), Handling::SingleStepped); // multi-byte nop
        assert_eq!(handling(&decode(&[0xf3, 0x0f, 0x1e, 0xfa])), Handling::SingleStepped); // endbr64
        assert_eq!(handling(&decode(&[0xe3, 0x05])), Handling::SingleStepped); // jrcxz
    }
}
