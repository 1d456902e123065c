//! The JIT attention loops (scores `q·k` over f16 keys, `out += p·v` over f16 values) equal
//! their portable twins bit for bit, on both ISAs this CPU has, for head dimensions with and
//! without 16- and 8-lane tails, groups of 1 to 16 heads, and key counts around every block
//! size; every buffer ends at a guard page, and the keys and values are read through a
//! strided cache whose last row ends at the guard, so a read or write past a tail faults.
//!
//! Tolerance: none. The generators emit the twins' operations in the twins' order (16-lane FMA
//! chains folded as `reduce16`, then the scale; one FMA chain per output in key order).

use half::f16;
use peregrine_loops::jit::attention::{pv_portable, scores_portable};
use peregrine_loops::jit::exec_mem::GuardedF32;
use peregrine_loops::{AttnDesc, AttnKernel, AttnKernelCache, Error, Isa};

mod common;
use common::{assert_bits, guarded, isas, Rng};

/// `len` f16 values ending right before a guard page.
struct GuardedF16 {
    buf: GuardedF32,
    len: usize,
}

impl GuardedF16 {
    fn new(v: &[f16]) -> Self {
        let mut buf = GuardedF32::new(v.len().div_ceil(2)).expect("guarded buffer");
        let mut g = GuardedF16 {
            buf: GuardedF32::new(0).expect("empty"),
            len: v.len(),
        };
        std::mem::swap(&mut g.buf, &mut buf);
        g.as_mut_slice().copy_from_slice(v);
        g
    }
    fn as_mut_slice(&mut self) -> &mut [f16] {
        let all = self.buf.as_mut_slice();
        let n2 = all.len() * 2;
        // SAFETY: the f32 buffer holds `n2` f16 values (same alignment or stricter), and the
        // last `len <= n2` of them end where the f32 buffer ends.
        unsafe {
            std::slice::from_raw_parts_mut(
                all.as_mut_ptr().cast::<f16>().add(n2 - self.len),
                self.len,
            )
        }
    }
    fn as_slice(&self) -> &[f16] {
        let all = self.buf.as_slice();
        let n2 = all.len() * 2;
        // SAFETY: as in `as_mut_slice`.
        unsafe {
            std::slice::from_raw_parts(all.as_ptr().cast::<f16>().add(n2 - self.len), self.len)
        }
    }
}

const HEAD_DIMS: [usize; 14] = [2, 6, 8, 16, 22, 24, 40, 64, 72, 80, 96, 128, 130, 256];
const GROUPS: [usize; 6] = [1, 2, 3, 4, 5, 8];
const KEYS: [usize; 18] = [
    0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 33, 64, 100, 129,
];

/// One case: a cache of `n` rows of `n_kv` heads, read at the last KV head (whose last row
/// ends at the guard page).
fn case(kernel: &AttnKernel, rng: &mut Rng, n: usize, n_kv: usize) {
    let AttnDesc {
        head_dim: hd,
        group,
        isa,
    } = *kernel.desc();
    let ctx = format!("{isa} hd {hd} group {group} n {n}");
    let stride = n_kv * hd;
    let off = (n_kv - 1) * hd;
    let cache_len = off + if n == 0 { 0 } else { (n - 1) * stride + hd };
    let kc: Vec<f16> = (0..cache_len).map(|_| f16::from_f32(rng.f(1.0))).collect();
    let vc: Vec<f16> = (0..cache_len).map(|_| f16::from_f32(rng.f(1.0))).collect();
    let (kg, vg) = (GuardedF16::new(&kc), GuardedF16::new(&vc));
    let qv: Vec<f32> = (0..group * hd).map(|_| rng.f(2.0)).collect();
    let qg = guarded(&qv);
    let s_stride = n + 3;
    let s_len = if n == 0 {
        0
    } else {
        (group - 1) * s_stride + n
    };
    let scale = 1.0 / (hd as f32).sqrt();

    let mut want = vec![0f32; s_len];
    scores_portable(hd, &qv, &kc[off..], stride, n, scale, &mut want, s_stride).unwrap();
    let mut got = GuardedF32::new(s_len).unwrap();
    kernel
        .scores(
            qg.as_slice(),
            &kg.as_slice()[off..],
            stride,
            n,
            scale,
            got.as_mut_slice(),
            s_stride,
        )
        .unwrap();
    assert_bits(got.as_slice(), &want, &format!("scores {ctx}"));

    // Values: weights in [0, 1], accumulated onto a nonzero output, whole and in two runs.
    let pv: Vec<f32> = (0..s_len).map(|_| rng.f(0.5) + 0.5).collect();
    let pg = guarded(&pv);
    let out0: Vec<f32> = (0..group * hd).map(|_| rng.f(1.0)).collect();
    let mut want = out0.clone();
    pv_portable(hd, &pv, s_stride, &vc[off..], stride, n, &mut want).unwrap();
    let mut got = guarded(&out0);
    kernel
        .pv(
            pg.as_slice(),
            s_stride,
            &vg.as_slice()[off..],
            stride,
            n,
            got.as_mut_slice(),
        )
        .unwrap();
    assert_bits(got.as_slice(), &want, &format!("pv {ctx}"));
    if n >= 2 {
        let cut = n / 3 + 1;
        let mut split = out0.clone();
        let v = &vg.as_slice()[off..];
        kernel
            .pv(&pv, s_stride, v, stride, cut, &mut split)
            .unwrap();
        kernel
            .pv(
                &pv[cut..],
                s_stride,
                &v[cut * stride..],
                stride,
                n - cut,
                &mut split,
            )
            .unwrap();
        assert_bits(&split, &want, &format!("pv in two runs {ctx}"));
    }
}

#[test]
fn jit_attention_equals_portable_twins() {
    let mut rng = Rng(7);
    let cache = AttnKernelCache::new();
    for isa in isas() {
        for hd in HEAD_DIMS {
            for group in GROUPS {
                let kernel = cache
                    .get(&AttnDesc {
                        head_dim: hd,
                        group,
                        isa,
                    })
                    .unwrap();
                for n in KEYS {
                    case(&kernel, &mut rng, n, 1 + (n % 3));
                }
            }
        }
        // Larger groups (Llama-style 8 and a 16-head group), long runs.
        for (hd, group) in [(64, 16), (128, 8), (64, 7)] {
            let kernel = cache
                .get(&AttnDesc {
                    head_dim: hd,
                    group,
                    isa,
                })
                .unwrap();
            for n in [1, 9, 257, 513] {
                case(&kernel, &mut rng, n, 2);
            }
        }
    }
}

#[test]
fn odd_head_dims_on_avx512() {
    if !Isa::Avx512.available() {
        return;
    }
    let mut rng = Rng(11);
    for hd in [1, 3, 17, 33] {
        for group in [1, 3] {
            let kernel = AttnKernel::compile(&AttnDesc {
                head_dim: hd,
                group,
                isa: Isa::Avx512,
            })
            .unwrap();
            for n in [1, 5, 8, 13] {
                case(&kernel, &mut rng, n, 2);
            }
        }
    }
}

#[test]
fn portable_kernel_runs_the_twins() {
    let mut rng = Rng(5);
    let kernel = AttnKernel::compile(&AttnDesc {
        head_dim: 40,
        group: 3,
        isa: Isa::Portable,
    })
    .unwrap();
    assert_eq!(kernel.code_len(), 0);
    for n in [0, 1, 17] {
        case(&kernel, &mut rng, n, 2);
    }
}

#[test]
fn bad_shapes_are_errors() {
    for isa in isas().into_iter().chain([Isa::Portable]) {
        assert!(AttnKernel::compile(&AttnDesc {
            head_dim: 0,
            group: 1,
            isa
        })
        .is_err());
        assert!(AttnKernel::compile(&AttnDesc {
            head_dim: 64,
            group: 0,
            isa
        })
        .is_err());
        assert!(AttnKernel::compile(&AttnDesc {
            head_dim: 4096,
            group: 1,
            isa
        })
        .is_err());
        let k = AttnKernel::compile(&AttnDesc {
            head_dim: 16,
            group: 2,
            isa,
        })
        .unwrap();
        let q = [0f32; 32];
        let kv = [f16::ZERO; 64];
        let mut s = [0f32; 8];
        // Wrong query length, too few key rows, too few scores, stride below the head.
        assert!(matches!(
            k.scores(&q[..31], &kv, 16, 2, 1.0, &mut s, 4),
            Err(Error::BufferLen { .. })
        ));
        assert!(k.scores(&q, &kv, 16, 5, 1.0, &mut s, 4).is_err());
        assert!(k.scores(&q, &kv, 16, 4, 1.0, &mut s[..7], 4).is_err());
        assert!(k.scores(&q, &kv, 8, 2, 1.0, &mut s, 4).is_err());
        assert!(k.scores(&q, &kv, 16, 4, 1.0, &mut s, 4).is_ok());
        let mut out = [0f32; 32];
        assert!(k.pv(&s, 4, &kv, 16, 5, &mut out).is_err());
        assert!(k.pv(&s[..6], 4, &kv, 16, 3, &mut out).is_err());
        assert!(k.pv(&s, 4, &kv, 16, 2, &mut out[..31]).is_err());
        assert!(k.pv(&s, 4, &kv, 16, 4, &mut out).is_ok());
        assert!(k.pv(&s, usize::MAX, &kv, 16, 1, &mut out).is_err());
    }
    if Isa::Avx2.available() {
        assert!(matches!(
            AttnKernel::compile(&AttnDesc {
                head_dim: 33,
                group: 1,
                isa: Isa::Avx2
            }),
            Err(Error::Unsupported { .. })
        ));
    }
}
