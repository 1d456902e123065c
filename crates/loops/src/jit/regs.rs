//! What every x86-64 code generator here shares: vector registers by number, and a pool of
//! constants placed after the code (addressed RIP-relative, so the code is position-independent).

use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// zmm registers by number.
pub(crate) const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];
/// ymm registers by number (16 and up only with EVEX encodings).
pub(crate) const YMM: [AsmRegisterYmm; 32] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14,
    ymm15, ymm16, ymm17, ymm18, ymm19, ymm20, ymm21, ymm22, ymm23, ymm24, ymm25, ymm26, ymm27,
    ymm28, ymm29, ymm30, ymm31,
];
/// xmm registers by number (16 and up only with EVEX encodings).
pub(crate) const XMM: [AsmRegisterXmm; 32] = [
    xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14,
    xmm15, xmm16, xmm17, xmm18, xmm19, xmm20, xmm21, xmm22, xmm23, xmm24, xmm25, xmm26, xmm27,
    xmm28, xmm29, xmm30, xmm31,
];

/// Constants a kernel reads, emitted as data after its code.
#[derive(Default)]
pub(crate) struct ConstPool {
    entries: Vec<(CodeLabel, Vec<u32>)>,
}

impl ConstPool {
    /// The label of an entry holding `words` (an equal entry is reused).
    pub fn label(&mut self, a: &mut CodeAssembler, words: Vec<u32>) -> CodeLabel {
        if let Some((l, _)) = self.entries.iter().find(|(_, w)| *w == words) {
            return *l;
        }
        let l = a.create_label();
        self.entries.push((l, words));
        l
    }

    /// Writes the entries at the assembler's current position (after the last instruction).
    pub fn emit(&mut self, a: &mut CodeAssembler) -> Result<(), IcedError> {
        for (mut l, words) in std::mem::take(&mut self.entries) {
            a.set_label(&mut l)?;
            a.dd(&words)?;
        }
        Ok(())
    }
}
