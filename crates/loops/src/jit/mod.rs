//! Code generation straight to x86-64 machine code with `iced-x86`.
//!
//! - [`exec_mem`]: W^X executable memory (the only owner of executable mappings).
//! - [`sgemm`]: f32 matmul family, lowered from a register-tiled schedule (AVX-512 or AVX2).
//! - [`qgemm`]: quantized weights × int8 activations with VNNI `vpdpbusd` (AVX-512) or
//!   `vpmaddubsw` (AVX2), lowered from a schedule of `qmatmul` ([`qgemm_schedule`]).
//! - [`fgemm`]: f32, f16 or bf16 weights × f32 activations, lowered from a schedule of
//!   `matmul_wt` ([`fgemm_schedule`]).
//! - [`rowops`]: the engine's row kernels (RMSNorm, add, SiLU·mul, RoPE, argmax, softmax
//!   weights and rows), lowered from schedules of their library expressions
//!   ([`rowops_schedule`]) except RoPE and argmax.
//! - [`attention`]: attention's score and value loops over an f16 KV cache.
//! - `panels` (private): what the two panel matmuls share (packed storage, groups, the loops
//!   over groups and run-time row tiles).
//! - `vasm`, `vexp` (private): a vector emitter for either ISA (zmm with k-mask tails, ymm
//!   with `vmaskmovps` tails, a constant pool) and the `exp` polynomial on it, shared by the
//!   row kernels and the f32 matmul's SiLU·mul epilogue.

pub mod attention;
pub mod exec_mem;
pub mod fgemm;
pub mod fgemm_schedule;
mod panels;
pub mod qgemm;
pub mod qgemm_schedule;
mod regs;
pub mod rowops;
pub mod rowops_schedule;
pub mod sgemm;
mod vasm;
mod vexp;

use crate::error::{Error, Result};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use std::fmt;

/// Instruction sets the JIT targets, plus the portable Rust path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, runs anywhere.
    Portable,
    /// AVX2 + FMA + F16C: 16 ymm registers, 8 f32 lanes.
    Avx2,
    /// AVX-512 F/BW/VL + VNNI: 32 zmm registers, 16 f32 lanes, k-mask tails.
    Avx512,
}

impl Isa {
    /// The best instruction set of this CPU (checked at run time).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
    /// Whether this CPU can run code for `self`.
    pub fn available(self) -> bool {
        self <= Isa::detect()
    }
    /// Errors unless this CPU can run code for `self`.
    pub fn check(self) -> Result<()> {
        self.check_known(self.available())
    }
    /// [`Isa::check`] with availability already known (kernels look it up once, at compile
    /// time, instead of on every call).
    pub(crate) fn check_known(self, available: bool) -> Result<()> {
        if available {
            Ok(())
        } else {
            Err(Error::IsaUnavailable {
                isa: self.to_string(),
            })
        }
    }
    /// f32 lanes per vector register.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Portable => 1,
        }
    }
    /// Vector registers.
    pub fn n_vregs(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 => 16,
            Isa::Portable => 0,
        }
    }
    /// Parses `avx512`, `avx2`, `portable`.
    pub fn parse(s: &str) -> Option<Isa> {
        match s {
            "avx512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2),
            "portable" => Some(Isa::Portable),
            _ => None,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        })
    }
}

/// Intel-syntax listing of x86-64 code assembled at address 0.
pub fn disassemble(code: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    let mut out = String::new();
    let mut line = String::new();
    for instr in &mut decoder {
        line.clear();
        fmt.format(&instr, &mut line);
        out.push_str(&format!("{:6x}  {line}\n", instr.ip()));
    }
    out
}

pub(crate) fn asm_err(e: iced_x86::IcedError) -> Error {
    Error::Assemble(e.to_string())
}
