//! What the JIT-against-twin tests share: the ISAs to try, a small deterministic generator,
//! buffers that end at a guard page, and bit-for-bit comparison.

use peregrine_loops::jit::exec_mem::GuardedF32;
use peregrine_loops::Isa;

/// The ISAs this CPU can run JIT code for.
pub fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.available())
        .collect()
}

/// A linear congruential generator: the same inputs on every run and machine.
pub struct Rng(pub u64);

impl Rng {
    /// The next 31 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in `[-scale, scale)`.
    pub fn f(&mut self, scale: f32) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * scale
    }
}

/// A copy of `v` whose last element sits right before a guard page.
pub fn guarded(v: &[f32]) -> GuardedF32 {
    let mut g = GuardedF32::new(v.len()).expect("guarded buffer");
    g.as_mut_slice().copy_from_slice(v);
    g
}

/// `got == want` bit for bit (a NaN must be a NaN on both sides).
pub fn assert_bits(got: &[f32], want: &[f32], ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{ctx}: element {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}
