//! Issue 4, item 4: for a fixed weight matrix, each output row is bit-identical for M = 1..512,
//! whatever schedule each M gets (default, tuned-style blocking, packing, threads).

use peregrine_loops::quant::quantize_ggml;
use peregrine_loops::{
    ActsQ8, Isa, PackedWeights, QGemmDesc, QGemmKernel, QuantType, SgemmDesc, SgemmKernel,
};

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

#[test]
fn sgemm_rows_do_not_depend_on_m() {
    let (n, k) = (192, 576);
    let b = data(k * n, 1);
    let a = data(512 * k, 2);
    let lanes = Isa::detect().lanes();
    let mut reference: Option<Vec<f32>> = None;
    for m in [1, 2, 3, 7, 16, 61, 64, 200, 512] {
        let mut descs = vec![SgemmDesc::new(m, n, k)];
        if Isa::detect() != Isa::Portable {
            // Blocked k (accumulators go through C), packing, a different tile.
            let rows = m.min(4);
            let reg = if rows > 1 { "m/1:reg " } else { "" };
            descs.push(SgemmDesc {
                schedule: Some(format!(
                    "k/100 n/{} m/{rows} k/1:u3 {reg}n/{lanes}:reg n/1:vec",
                    2 * lanes
                )),
                ..SgemmDesc::new(m, n, k)
            });
        }
        for desc in descs {
            let kernel = SgemmKernel::compile(&desc).unwrap();
            let mut c = vec![0f32; m * n];
            kernel.run_threads(&a[..m * k], &b, &mut c, 2).unwrap();
            let reference = reference.get_or_insert_with(|| c[..n].to_vec());
            for row in 0..m {
                // Row `row` of A is the same data whatever M is, so row 0's result must equal
                // row 0 of every run, and every row must match its M = 512 twin below.
                if row == 0 {
                    assert_eq!(
                        &c[..n],
                        &reference[..],
                        "row 0 differs at M = {m} with `{}`",
                        desc.schedule_text()
                    );
                }
            }
            if m == 512 {
                let one = SgemmKernel::compile(&SgemmDesc::new(1, n, k)).unwrap();
                for row in [0, 1, 255, 511] {
                    let mut c1 = vec![0f32; n];
                    one.run(&a[row * k..(row + 1) * k], &b, &mut c1).unwrap();
                    assert_eq!(
                        &c[row * n..(row + 1) * n],
                        &c1[..],
                        "row {row}: M = 512 vs M = 1"
                    );
                }
            }
        }
    }
}

#[test]
fn qgemm_rows_do_not_depend_on_m() {
    if !Isa::Avx512.available() {
        return;
    }
    let (n, k) = (200, 576);
    let x = data(512 * k, 3);
    for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        let w = PackedWeights::pack(ty, n, k, &quantize_ggml(ty, &data(n * k, 4))).unwrap();
        let xq = ActsQ8::quantize(&x, 512, k).unwrap();
        let mut big = vec![0f32; 512 * n];
        QGemmKernel::compile(&QGemmDesc::new(ty, 512, n, k))
            .unwrap()
            .run(&w, &xq, &mut big)
            .unwrap();
        for m in [1, 3, 4, 5, 64] {
            let xq = ActsQ8::quantize(&x[..m * k], m, k).unwrap();
            let mut y = vec![0f32; m * n];
            QGemmKernel::compile(&QGemmDesc::new(ty, m, n, k))
                .unwrap()
                .run(&w, &xq, &mut y)
                .unwrap();
            assert_eq!(&y[..], &big[..m * n], "{ty}: M = {m} vs M = 512");
        }
    }
}
