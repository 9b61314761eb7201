//! eBPF instructions and a builder whose jumps go to typed labels.
//!
//! Only what the forwarding program needs: 64-bit ALU, byte swaps, loads and stores,
//! conditional jumps, helper calls and map references. Encoding follows the kernel's `struct bpf_insn`
//! (Documentation/bpf/standardization/instruction-set.rst). No I/O here.

use std::sync::atomic::{AtomicU32, Ordering};

/// A register of the eBPF machine. `R1`–`R5` carry helper arguments and are clobbered by
/// calls, `R6`–`R9` survive calls, `R0` holds return values and `R10` is the frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// Width of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// One byte.
    B,
    /// Two bytes.
    H,
    /// Four bytes.
    W,
    /// Eight bytes.
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

/// A jump condition, unsigned unless named otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `&` is not zero (a bit test)
    Set,
}

/// An arithmetic or logic operation on 64-bit registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `|`
    Or,
    /// `&`
    And,
    /// `<<`
    Lsh,
    /// `>>` (logical)
    Rsh,
    /// `^`
    Xor,
}

impl Alu {
    fn op(self) -> u8 {
        match self {
            Alu::Add => 0x00,
            Alu::Sub => 0x10,
            Alu::Mul => 0x20,
            Alu::Or => 0x40,
            Alu::And => 0x50,
            Alu::Lsh => 0x60,
            Alu::Rsh => 0x70,
            Alu::Xor => 0xa0,
        }
    }
}

impl Cond {
    fn op(self) -> u8 {
        match self {
            Cond::Eq => 0x10,
            Cond::Gt => 0x20,
            Cond::Ge => 0x30,
            Cond::Ne => 0x50,
            Cond::Lt => 0xa0,
            Cond::Le => 0xb0,
            Cond::Set => 0x40,
        }
    }
}

/// One 8-byte instruction, as the kernel reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class, size or operation, source.
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Memory offset or jump displacement.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: (dst as u8) | ((src as u8) << 4),
            off,
            imm,
        }
    }

    /// The instruction in the kernel's byte layout (host byte order).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = self.code;
        out[1] = self.regs;
        out[2..4].copy_from_slice(&self.off.to_ne_bytes());
        out[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        out
    }
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_MOV: u8 = 0xb0;
const OP_END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const OP_JA: u8 = 0x00;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by file descriptor.
const PSEUDO_MAP_FD: Reg = Reg::R1;
/// `src_reg` of a call that names a kernel function by BTF type id.
const PSEUDO_KFUNC_CALL: Reg = Reg::R2;

/// A place in a program that jumps go to. Made by [`Asm::new_label`] before any jump to it
/// and placed once with [`Asm::place`]; the code that makes a label hands it to the helpers
/// that jump there, so a jump can only name a target its program declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// The [`Asm`] that made it: a label is meaningless in another program.
    program: u32,
    index: usize,
}

/// One declared label: its name (for errors) and, once placed, its instruction index.
#[derive(Debug)]
struct LabelSlot {
    name: &'static str,
    at: Option<usize>,
}

/// Tells programs apart, so a label of one is refused by another.
static NEXT_PROGRAM: AtomicU32 = AtomicU32::new(0);

/// Builds a program; jumps go to [`Label`]s that [`Asm::finish`] resolves.
#[derive(Debug)]
pub struct Asm {
    program: u32,
    insns: Vec<Insn>,
    labels: Vec<LabelSlot>,
    /// (instruction index, target) of every jump still to patch.
    fixups: Vec<(usize, Label)>,
}

impl Default for Asm {
    fn default() -> Self {
        Self {
            program: NEXT_PROGRAM.fetch_add(1, Ordering::Relaxed),
            insns: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }
}

/// A program that could not be assembled; each names the label concerned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AsmError {
    /// A jump goes to a label that was never placed.
    #[error("jump to label {0}, which was never placed")]
    UnplacedLabel(&'static str),
    /// A label was placed twice.
    #[error("label {0} placed twice")]
    DuplicateLabel(&'static str),
    /// A label made by another program was used in this one.
    #[error("a label of another program was used")]
    ForeignLabel,
    /// A jump is farther than a 16-bit displacement reaches.
    #[error("jump to {0} out of range")]
    OutOfRange(&'static str),
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a label, to be placed later with [`Asm::place`]; `name` only shows in errors.
    pub fn new_label(&mut self, name: &'static str) -> Label {
        self.labels.push(LabelSlot { name, at: None });
        Label {
            program: self.program,
            index: self.labels.len() - 1,
        }
    }

    /// The slot of one of this program's labels.
    fn slot(&mut self, label: Label) -> Result<&mut LabelSlot, AsmError> {
        if label.program != self.program {
            return Err(AsmError::ForeignLabel);
        }
        self.labels
            .get_mut(label.index)
            .ok_or(AsmError::ForeignLabel)
    }

    /// Places `label` at the next instruction.
    pub fn place(&mut self, label: Label) -> Result<&mut Self, AsmError> {
        let at = self.insns.len();
        let slot = self.slot(label)?;
        if slot.at.is_some() {
            return Err(AsmError::DuplicateLabel(slot.name));
        }
        slot.at = Some(at);
        Ok(self)
    }

    /// A jump instruction to `target`, patched by [`Asm::finish`].
    fn push_jump(&mut self, insn: Insn, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(insn)
    }

    fn push(&mut self, insn: Insn) -> &mut Self {
        self.insns.push(insn);
        self
    }

    /// `dst = src`
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(CLASS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0))
    }

    /// `dst = imm` (sign-extended)
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(
            CLASS_ALU64 | OP_MOV | SRC_K,
            dst,
            Reg::R0,
            0,
            imm,
        ))
    }

    /// `dst = imm`, all 64 bits: the two-slot immediate load.
    pub fn mov_imm64(&mut self, dst: Reg, imm: u64) -> &mut Self {
        self.push(Insn::new(
            CLASS_LD | MODE_IMM | Size::DW.bits(),
            dst,
            Reg::R0,
            0,
            imm as u32 as i32,
        ));
        self.push(Insn::new(0, Reg::R0, Reg::R0, 0, (imm >> 32) as u32 as i32))
    }

    /// `dst <op>= imm` (sign-extended)
    pub fn alu_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::new(
            CLASS_ALU64 | op.op() | SRC_K,
            dst,
            Reg::R0,
            0,
            imm,
        ))
    }

    /// `dst <op>= src`
    pub fn alu_reg(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::new(CLASS_ALU64 | op.op() | SRC_X, dst, src, 0, 0))
    }

    /// `dst += imm`
    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu_imm(Alu::Add, dst, imm)
    }

    /// `dst -= imm`
    pub fn sub_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu_imm(Alu::Sub, dst, imm)
    }

    /// The low 16 bits of `dst` in network byte order (the rest cleared), whatever the
    /// host's order.
    pub fn to_be16(&mut self, dst: Reg) -> &mut Self {
        self.push(Insn::new(CLASS_ALU | OP_END | TO_BE, dst, Reg::R0, 0, 16))
    }

    /// `dst = *(size *)(src + off)`
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(Insn::new(
            CLASS_LDX | MODE_MEM | size.bits(),
            dst,
            src,
            off,
            0,
        ))
    }

    /// `*(size *)(dst + off) = src`
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::new(
            CLASS_STX | MODE_MEM | size.bits(),
            dst,
            src,
            off,
            0,
        ))
    }

    /// `*(size *)(dst + off) = imm`
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(Insn::new(
            CLASS_ST | MODE_MEM | size.bits(),
            dst,
            Reg::R0,
            off,
            imm,
        ))
    }

    /// `dst = map` — the two-slot load the verifier turns into a pointer to the map.
    pub fn load_map_fd(&mut self, dst: Reg, map_fd: i32) -> &mut Self {
        self.push(Insn::new(
            CLASS_LD | MODE_IMM | Size::DW.bits(),
            dst,
            PSEUDO_MAP_FD,
            0,
            map_fd,
        ));
        self.push(Insn::new(0, Reg::R0, Reg::R0, 0, 0))
    }

    /// `if dst <cond> imm goto target`
    pub fn jump_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) -> &mut Self {
        let insn = Insn::new(CLASS_JMP | cond.op() | SRC_K, dst, Reg::R0, 0, imm);
        self.push_jump(insn, target)
    }

    /// `if dst <cond> src goto target`
    pub fn jump_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) -> &mut Self {
        let insn = Insn::new(CLASS_JMP | cond.op() | SRC_X, dst, src, 0, 0);
        self.push_jump(insn, target)
    }

    /// `goto target`
    pub fn jump(&mut self, target: Label) -> &mut Self {
        let insn = Insn::new(CLASS_JMP | OP_JA, Reg::R0, Reg::R0, 0, 0);
        self.push_jump(insn, target)
    }

    /// Calls kernel helper number `helper`; the result lands in `R0`.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.push(Insn::new(CLASS_JMP | OP_CALL, Reg::R0, Reg::R0, 0, helper))
    }

    /// Calls the kernel function (kfunc) with BTF type id `btf_id`, found in the kernel's own
    /// BTF (`btf_index` 0) or in the module BTF at that index of the program's fd array;
    /// the result lands in `R0`.
    pub fn call_kfunc(&mut self, btf_id: u32, btf_index: i16) -> &mut Self {
        self.push(Insn::new(
            CLASS_JMP | OP_CALL,
            Reg::R0,
            PSEUDO_KFUNC_CALL,
            btf_index,
            btf_id as i32,
        ))
    }

    /// Returns `R0`.
    pub fn exit(&mut self) -> &mut Self {
        self.push(Insn::new(CLASS_JMP | OP_EXIT, Reg::R0, Reg::R0, 0, 0))
    }

    /// Resolves every jump and returns the instructions.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for (at, target) in std::mem::take(&mut self.fixups) {
            let slot = self.slot(target)?;
            let to = slot.at.ok_or(AsmError::UnplacedLabel(slot.name))?;
            // Displacements count from the instruction after the jump.
            let off = i16::try_from(to as i64 - at as i64 - 1)
                .map_err(|_| AsmError::OutOfRange(slot.name))?;
            self.insns[at].off = off;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel() {
        let mut asm = Asm::new();
        asm.mov(Reg::R6, Reg::R1)
            .load(Size::W, Reg::R2, Reg::R6, 76)
            .store_imm(Size::W, Reg::R10, -8, 32)
            .mov_imm(Reg::R0, -1)
            .exit();
        let insns = asm.finish().unwrap();
        // mov r6, r1: ALU64|MOV|X = 0xbf, dst 6, src 1
        assert_eq!(insns[0].to_bytes(), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        // ldxw r2, [r6+76]: LDX|MEM|W = 0x61
        assert_eq!(insns[1].to_bytes(), [0x61, 0x62, 76, 0, 0, 0, 0, 0]);
        // stw [r10-8], 32: ST|MEM|W = 0x62
        assert_eq!(insns[2].to_bytes(), [0x62, 0x0a, 0xf8, 0xff, 32, 0, 0, 0]);
        // mov r0, -1: 0xb7
        assert_eq!(insns[3].to_bytes(), [0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(insns[4].to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn alu_wide_immediates_and_byte_swaps() {
        let mut asm = Asm::new();
        asm.alu_reg(Alu::Xor, Reg::R2, Reg::R3)
            .alu_imm(Alu::Rsh, Reg::R2, 32)
            .to_be16(Reg::R2)
            .mov_imm64(Reg::R4, 0x0e00_0000_0000_0053);
        let insns = asm.finish().unwrap();
        // xor r2, r3: ALU64|XOR|X = 0xaf
        assert_eq!(insns[0].to_bytes(), [0xaf, 0x32, 0, 0, 0, 0, 0, 0]);
        // rsh r2, 32: ALU64|RSH|K = 0x77
        assert_eq!(insns[1].to_bytes(), [0x77, 0x02, 0, 0, 32, 0, 0, 0]);
        // be16 r2: ALU|END|TO_BE = 0xdc
        assert_eq!(insns[2].to_bytes(), [0xdc, 0x02, 0, 0, 16, 0, 0, 0]);
        // lddw r4: low half in the first slot, high half in the second
        assert_eq!(insns[3].to_bytes(), [0x18, 0x04, 0, 0, 0x53, 0, 0, 0]);
        assert_eq!(insns[4].to_bytes(), [0, 0, 0, 0, 0, 0, 0, 0x0e]);
    }

    #[test]
    fn kernel_function_calls_and_bit_tests() {
        let mut asm = Asm::new();
        let end = asm.new_label("end");
        asm.call_kfunc(0x1234, 1)
            .jump_imm(Cond::Set, Reg::R2, 0x30, end);
        asm.place(end).unwrap();
        asm.exit();
        let insns = asm.finish().unwrap();
        // call: JMP|CALL = 0x85, src 2 (BPF_PSEUDO_KFUNC_CALL), off = fd array index
        assert_eq!(insns[0].to_bytes(), [0x85, 0x20, 1, 0, 0x34, 0x12, 0, 0]);
        // jset r2, 0x30: JMP|JSET|K = 0x45
        assert_eq!(insns[1].to_bytes(), [0x45, 0x02, 0, 0, 0x30, 0, 0, 0]);
    }

    #[test]
    fn jumps_resolve_forward_and_backward() {
        let mut asm = Asm::new();
        let (top, end) = (asm.new_label("top"), asm.new_label("end"));
        asm.place(top).unwrap();
        asm.jump_imm(Cond::Eq, Reg::R1, 0, end)
            .mov_imm(Reg::R0, 1)
            .jump(top);
        asm.place(end).unwrap();
        asm.exit();
        let insns = asm.finish().unwrap();
        assert_eq!(insns[0].code, 0x15);
        assert_eq!(insns[0].off, 2);
        assert_eq!(insns[2].off, -3);
    }

    #[test]
    fn a_map_reference_takes_two_slots() {
        let mut asm = Asm::new();
        asm.load_map_fd(Reg::R1, 7);
        let insns = asm.finish().unwrap();
        assert_eq!(insns.len(), 2);
        assert_eq!(insns[0].code, 0x18);
        assert_eq!(insns[0].regs, 0x11);
        assert_eq!(insns[0].imm, 7);
        assert_eq!(insns[1], Insn::new(0, Reg::R0, Reg::R0, 0, 0));
    }

    #[test]
    fn unplaced_duplicate_and_foreign_labels_are_errors() {
        let mut asm = Asm::new();
        let nowhere = asm.new_label("nowhere");
        asm.jump(nowhere);
        assert_eq!(asm.finish(), Err(AsmError::UnplacedLabel("nowhere")));

        let mut asm = Asm::new();
        let x = asm.new_label("x");
        asm.place(x).unwrap();
        assert!(matches!(asm.place(x), Err(AsmError::DuplicateLabel("x"))));

        // A label of one program means nothing in another, even at an index both have.
        let mut other = Asm::new();
        let theirs = other.new_label("theirs");
        let mut asm = Asm::new();
        let _ours = asm.new_label("ours");
        assert!(matches!(asm.place(theirs), Err(AsmError::ForeignLabel)));
        asm.jump(theirs);
        assert_eq!(asm.finish(), Err(AsmError::ForeignLabel));
    }
}
