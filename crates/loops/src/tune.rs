//! Simple schedule searches, cached on disk: sgemm ([`tune_sgemm`]) and the quantized matmul
//! ([`tune_qgemm`]).
//!
//! sgemm: greedy coordinate search over the schedule space the code generator accepts: register tile
//! (rows x vectors), k unroll, k blocking, n blocking and the order of the outer loops. Every
//! candidate is compiled (well under a millisecond) and timed on this machine; the best is
//! written to `<cache_dir>/sgemm-<m>x<n>x<k>-<isa>-<COMPILER_VERSION>.sched`, so a later call
//! returns it without searching. Candidates never change results (every schedule is
//! bit-identical, see [`crate::ir`]), so no validation run is needed.

use crate::error::{Error, Result};
use crate::jit::qgemm::{ActsQ8, PackedWeights, QGemmDesc, QGemmKernel};
use crate::jit::Isa;
use crate::kernel::{Epilogue, SgemmDesc, SgemmKernel};
use crate::quant::{quantize_ggml, QuantType};
use std::path::PathBuf;
use std::time::Instant;

/// Bumped whenever code generation changes, so stale tuned schedules are not reused.
pub const COMPILER_VERSION: &str = concat!("loops-", env!("CARGO_PKG_VERSION"), "-cg2");

/// Tuning options.
#[derive(Clone, Debug)]
pub struct TuneConfig {
    /// Where tuned schedules are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Seconds of timing per candidate (best of 5 batches of about this length / 5).
    pub secs_per_candidate: f64,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            cache_dir: None,
            secs_per_candidate: 0.009,
        }
    }
}

/// The outcome of a search.
#[derive(Clone, Debug)]
pub struct Tuned {
    /// Schedule text of the reduce node.
    pub schedule: String,
    /// Measured GFLOP/s of the best candidate (0 when read from the cache).
    pub gflops: f64,
    /// Candidates timed (0 when read from the cache).
    pub n_tried: usize,
    /// Whether the result came from the disk cache.
    pub cached: bool,
}

/// The knobs of a candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Knobs {
    rows: usize,
    vecs: usize,
    unroll: usize,
    kc: usize,
    nc_vecs: usize,
    m_outer: bool,
    pack: bool,
}

impl Knobs {
    fn text(&self, m: usize, n: usize, k: usize, lanes: usize) -> String {
        let nr = self.vecs * lanes;
        let nc = self.nc_vecs * lanes;
        let mut outer: Vec<String> = Vec::new();
        let mut blocks: Vec<String> = Vec::new();
        if nc > nr && n > nr {
            blocks.push(format!("n/{nc}"));
        }
        if self.kc < k {
            blocks.push(format!("k/{}", self.kc));
        }
        let pack_depth = blocks.len();
        outer.extend(blocks);
        let rows_loop = (m > self.rows || m == 1).then(|| format!("m/{}", self.rows));
        let cols_loop = (n > nr).then(|| format!("n/{nr}"));
        let tiles: Vec<String> = if self.m_outer {
            [rows_loop, cols_loop]
        } else {
            [cols_loop, rows_loop]
        }
        .into_iter()
        .flatten()
        .collect();
        outer.extend(tiles);
        outer.push(format!("k/1:u{}", self.unroll));
        if m.min(self.rows) > 1 {
            outer.push("m/1:reg".into());
        }
        if n.min(nr) > lanes {
            outer.push(format!("n/{lanes}:reg"));
        }
        outer.push("n/1:vec".into());
        if self.pack && lanes == 16 {
            outer.push(format!("pack:b@{pack_depth}"));
        }
        outer.join(" ")
    }
}

fn cache_path(cfg: &TuneConfig, m: usize, n: usize, k: usize, isa: Isa) -> Option<PathBuf> {
    cfg.cache_dir
        .as_ref()
        .map(|d| d.join(format!("sgemm-{m}x{n}x{k}-{isa}-{COMPILER_VERSION}.sched")))
}

/// The best schedule found for `m x n x k` on `isa` (from the cache when present).
pub fn tune_sgemm(m: usize, n: usize, k: usize, isa: Isa, cfg: &TuneConfig) -> Result<Tuned> {
    isa.check()?;
    if let Some(p) = cache_path(cfg, m, n, k, isa) {
        if let Ok(text) = std::fs::read_to_string(&p) {
            let text = text.trim().to_string();
            // A cached schedule must still compile; otherwise search again.
            if SgemmKernel::compile(&SgemmDesc {
                m,
                n,
                k,
                isa,
                schedule: Some(text.clone()),
                epilogue: Epilogue::NONE,
                a_transposed: false,
            })
            .is_ok()
            {
                return Ok(Tuned {
                    schedule: text,
                    gflops: 0.0,
                    n_tried: 0,
                    cached: true,
                });
            }
        }
    }
    if isa == Isa::Portable {
        return Ok(Tuned {
            schedule: "m/1 n/1 k/1".into(),
            gflops: 0.0,
            n_tried: 0,
            cached: false,
        });
    }
    let lanes = isa.lanes();
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let mut n_tried = 0;
    let mut measure_text = |text: String| -> Option<f64> {
        let desc = SgemmDesc {
            m,
            n,
            k,
            isa,
            schedule: Some(text),
            epilogue: Epilogue::NONE,
            a_transposed: false,
        };
        let kernel = SgemmKernel::compile(&desc).ok()?;
        n_tried += 1;
        kernel.run(&a, &b, &mut c).ok()?;
        let t0 = Instant::now();
        let mut reps = 1usize;
        kernel.run(&a, &b, &mut c).ok()?;
        let one = t0.elapsed().as_secs_f64().max(1e-7);
        reps = reps.max((cfg.secs_per_candidate / 5.0 / one) as usize);
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                kernel.run(&a, &b, &mut c).ok()?;
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        Some(flops / best / 1e9)
    };
    let mut measure = |kn: &Knobs| measure_text(kn.text(m, n, k, lanes));
    let regs = isa.n_vregs() - if isa == Isa::Avx2 { 2 } else { 0 };
    let max_vecs = n.div_ceil(lanes);
    let mut best = Knobs {
        rows: 1,
        vecs: 1,
        unroll: 4,
        kc: k,
        nc_vecs: 1,
        m_outer: false,
        pack: false,
    };
    let mut best_g = 0.0;
    // Stage 1: register tile.
    for rows in [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14] {
        if rows > m.max(1) && rows != m.min(14) {
            continue;
        }
        for vecs in 1..=max_vecs.min(8) {
            if rows * vecs + vecs + usize::from(isa == Isa::Avx512 && vecs > 1) > regs
                || rows * vecs < 4.min(m.min(rows) * max_vecs)
            {
                continue;
            }
            let kn = Knobs {
                rows: rows.min(m.max(1)),
                vecs,
                nc_vecs: vecs,
                ..best
            };
            if let Some(g) = measure(&kn) {
                if g > best_g {
                    best_g = g;
                    best = kn;
                }
            }
        }
    }
    // Stage 2: unroll, loop order, k blocking, n blocking.
    let mut stage = |cands: Vec<Knobs>, best: &mut Knobs, best_g: &mut f64| {
        for kn in cands {
            if let Some(g) = measure(&kn) {
                if g > *best_g * 1.01 {
                    *best_g = g;
                    *best = kn;
                }
            }
        }
    };
    let b0 = best;
    if isa == Isa::Avx512 && m > b0.rows {
        stage(vec![Knobs { pack: true, ..b0 }], &mut best, &mut best_g);
    }
    let b0 = best;
    stage(
        [1, 2, 8]
            .iter()
            .map(|&u| Knobs { unroll: u, ..b0 })
            .collect(),
        &mut best,
        &mut best_g,
    );
    let b0 = best;
    stage(
        vec![Knobs {
            m_outer: !b0.m_outer,
            ..b0
        }],
        &mut best,
        &mut best_g,
    );
    let b0 = best;
    stage(
        [64, 128, 256, 512]
            .iter()
            .filter(|&&kc| kc < k)
            .map(|&kc| Knobs { kc, ..b0 })
            .collect(),
        &mut best,
        &mut best_g,
    );
    let b0 = best;
    stage(
        [2, 4, 8, 16]
            .iter()
            .map(|&f| b0.vecs * f)
            .filter(|&v| v < max_vecs)
            .map(|nc_vecs| Knobs { nc_vecs, ..b0 })
            .collect(),
        &mut best,
        &mut best_g,
    );
    if best_g == 0.0 {
        return Err(Error::Unsupported {
            backend: "tuner",
            reason: format!("no candidate compiled for {m}x{n}x{k} on {isa}"),
        });
    }
    let mut schedule = best.text(m, n, k, lanes);
    // Noise can crown a lucky candidate: re-time it against the default, interleaved, and
    // keep the default unless the winner still wins.
    let default = crate::jit::sgemm::default_schedule_text(m, n, k, isa);
    if default != schedule {
        let (mut g_best, mut g_def) = (0f64, 0f64);
        for _ in 0..3 {
            g_best = g_best.max(measure_text(best.text(m, n, k, lanes)).unwrap_or(0.0));
            g_def = g_def.max(measure_text(default.clone()).unwrap_or(0.0));
        }
        if g_def >= g_best {
            schedule = default;
            best_g = g_def;
        } else {
            best_g = g_best;
        }
    }
    tracing::debug!(m, n, k, %isa, gflops = best_g, n_tried, schedule = %schedule, "tuned sgemm");
    if let Some(p) = cache_path(cfg, m, n, k, isa) {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&p, format!("{schedule}\n")) {
            tracing::warn!(path = %p.display(), error = %e, "could not cache the tuned schedule");
        }
    }
    Ok(Tuned {
        schedule,
        gflops: best_g,
        n_tried,
        cached: false,
    })
}

/// Operands for timing a quantized matmul as the engine runs it, on weights that come from
/// DRAM: enough packed copies of one `n x k` matrix to be rotated through more than the
/// last-level cache (32 MiB here), and `m` rows of quantized activations (fixed values).
pub struct ColdQgemm {
    /// Copies of the same weights; call `i` should use copy `i % len`.
    pub weights: Vec<PackedWeights>,
    /// The activations.
    pub acts: ActsQ8,
}

impl ColdQgemm {
    /// Bytes the copies span together, at least (up to 64 copies).
    const SPAN_BYTES: usize = 128 << 20;

    /// Packs the copies and quantizes the activations.
    pub fn new(quant: QuantType, m: usize, n: usize, k: usize) -> Result<Self> {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let ggml = quantize_ggml(quant, &w);
        drop(w);
        let first = PackedWeights::pack(quant, n, k, &ggml)?;
        let n_copies = Self::SPAN_BYTES.div_ceil(first.len_bytes()).clamp(1, 64);
        let mut weights = vec![first];
        for _ in 1..n_copies {
            weights.push(PackedWeights::pack(quant, n, k, &ggml)?);
        }
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        Ok(Self {
            weights,
            acts: ActsQ8::quantize(&x, m, k)?,
        })
    }
}

/// The outcome of a quantized matmul search.
#[derive(Clone, Debug)]
pub struct TunedQ {
    /// The description: its schedule ([`QGemmDesc::schedule_text`]) and prefetch distance.
    pub desc: QGemmDesc,
    /// Measured weight bytes per second of the best candidate, GB/s (0 when cached).
    pub gbs: f64,
    /// Candidates timed (0 when read from the cache).
    pub n_tried: usize,
    /// Whether the result came from the disk cache.
    pub cached: bool,
}

fn qgemm_cache_path(cfg: &TuneConfig, d: &QGemmDesc) -> Option<PathBuf> {
    cfg.cache_dir.as_ref().map(|dir| {
        dir.join(format!(
            "qgemm-{}-{}x{}x{}-{}-{COMPILER_VERSION}.sched",
            d.quant, d.m, d.n, d.k, d.isa
        ))
    })
}

/// Reads a cached `schedule text` + `prefetch N|none` file back into a description that
/// compiles; `None` if absent, unreadable or stale.
fn read_cached_qgemm(path: &PathBuf, base: &QGemmDesc) -> Option<QGemmDesc> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let schedule = lines.next()?.trim();
    let prefetch = match lines.next()?.trim().strip_prefix("prefetch ")? {
        "none" => None,
        n => Some(n.parse().ok()?),
    };
    let mut desc =
        QGemmDesc::from_schedule_text(base.quant, base.m, base.n, base.k, base.isa, schedule)
            .ok()?;
    desc.prefetch_blocks = prefetch;
    QGemmKernel::compile(&desc).ok()?;
    Some(desc)
}

/// The best schedule of the quantized matmul's loop family (register tile `m_tile` x
/// `n_panels`, see [`crate::jit::qgemm_schedule`]) and software prefetch distance for `quant`
/// weights of `n x k` times `m` activation rows on `isa`, timed on cold weights (rotated copies
/// larger than the last-level cache, as the engine streams them), from the cache when present.
/// A grid over the tile, then the prefetch distance; the winner is re-timed against the
/// default, interleaved, and the default kept unless it still loses.
pub fn tune_qgemm(
    quant: QuantType,
    m: usize,
    n: usize,
    k: usize,
    isa: Isa,
    cfg: &TuneConfig,
) -> Result<TunedQ> {
    isa.check()?;
    let default = QGemmDesc::for_isa(quant, m, n, k, isa);
    QGemmKernel::compile(&default)?;
    if let Some(p) = qgemm_cache_path(cfg, &default) {
        if let Some(desc) = read_cached_qgemm(&p, &default) {
            return Ok(TunedQ {
                desc,
                gbs: 0.0,
                n_tried: 0,
                cached: true,
            });
        }
    }
    let ColdQgemm {
        weights: copies,
        acts: xq,
    } = ColdQgemm::new(quant, m, n, k)?;
    let mut y = vec![0f32; m * n];
    let bytes = copies[0].len_bytes() as f64;
    let mut idx = 0;
    let mut n_tried = 0;
    let mut measure = |desc: &QGemmDesc| -> Option<f64> {
        let kernel = QGemmKernel::compile(desc).ok()?;
        n_tried += 1;
        let mut call = || {
            idx = (idx + 1) % copies.len();
            kernel.run(&copies[idx], &xq, &mut y).ok()
        };
        call()?;
        let t0 = Instant::now();
        call()?;
        let one = t0.elapsed().as_secs_f64().max(1e-7);
        let reps = ((cfg.secs_per_candidate / 5.0 / one) as usize).max(1);
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                call()?;
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        Some(bytes / best / 1e9)
    };
    let (mut best, mut best_g) = (default.clone(), 0.0);
    let tiled = |m_tile, n_panels| QGemmDesc {
        m_tile,
        n_panels,
        ..default.clone()
    };
    for m_tile in [1, 2, 3, 4, 6, 8].into_iter().filter(|&t| t <= m.max(1)) {
        for n_panels in [1, 2, 3, 4, 6, 8] {
            if let Some(g) = measure(&tiled(m_tile, n_panels)) {
                if g > best_g {
                    (best, best_g) = (tiled(m_tile, n_panels), g);
                }
            }
        }
    }
    let b0 = best.clone();
    for prefetch in [None, Some(2), Some(4), Some(8), Some(k / 32)] {
        let cand = QGemmDesc {
            prefetch_blocks: prefetch,
            ..b0.clone()
        };
        if let Some(g) = measure(&cand) {
            if g > best_g * 1.01 {
                (best, best_g) = (cand, g);
            }
        }
    }
    if best_g == 0.0 {
        return Err(Error::Unsupported {
            backend: "tuner",
            reason: format!("no quantized candidate compiled for {quant} {m}x{n}x{k} on {isa}"),
        });
    }
    if best != default {
        let (mut g_best, mut g_def) = (0f64, 0f64);
        for _ in 0..3 {
            g_best = g_best.max(measure(&best).unwrap_or(0.0));
            g_def = g_def.max(measure(&default).unwrap_or(0.0));
        }
        if g_def >= g_best {
            (best, best_g) = (default, g_def);
        } else {
            best_g = g_best;
        }
    }
    let text = best.schedule_text()?;
    tracing::debug!(%quant, m, n, k, %isa, gbs = best_g, n_tried, schedule = %text, prefetch = ?best.prefetch_blocks, "tuned qgemm");
    if let Some(p) = qgemm_cache_path(cfg, &best) {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let prefetch = best
            .prefetch_blocks
            .map_or("none".to_string(), |b| b.to_string());
        if let Err(e) = std::fs::write(&p, format!("{text}\nprefetch {prefetch}\n")) {
            tracing::warn!(path = %p.display(), error = %e, "could not cache the tuned schedule");
        }
    }
    Ok(TunedQ {
        desc: best,
        gbs: best_g,
        n_tried,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_search_returns_a_lowerable_schedule_and_caches_it() {
        let isa = if Isa::Avx512.available() {
            Isa::Avx512
        } else if Isa::Avx2.available() {
            Isa::Avx2
        } else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("peregrine-tune-q-{}", std::process::id()));
        let cfg = TuneConfig {
            cache_dir: Some(dir.clone()),
            secs_per_candidate: 0.0005,
        };
        let tuned = tune_qgemm(QuantType::Q4_1, 2, 64, 128, isa, &cfg).unwrap();
        assert!(!tuned.cached && tuned.n_tried > 1 && tuned.gbs > 0.0);
        let text = tuned.desc.schedule_text().unwrap();
        let lowered =
            QGemmDesc::from_schedule_text(QuantType::Q4_1, 2, 64, 128, isa, &text).unwrap();
        assert_eq!(
            (lowered.m_tile, lowered.n_panels),
            (tuned.desc.m_tile, tuned.desc.n_panels)
        );
        let again = tune_qgemm(QuantType::Q4_1, 2, 64, 128, isa, &cfg).unwrap();
        assert!(again.cached);
        assert_eq!(again.desc, tuned.desc);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn knob_texts_are_valid_schedules() {
        let isa = Isa::Avx512;
        for (m, n, k) in [(1, 576, 576), (64, 64, 64), (7, 100, 300), (256, 256, 256)] {
            for rows in [1, 3, 6, 14] {
                for vecs in [1, 2] {
                    for m_outer in [false, true] {
                        let kn = Knobs {
                            rows: rows.min(m),
                            vecs,
                            unroll: 4,
                            kc: 128,
                            nc_vecs: vecs * 4,
                            m_outer,
                            pack: m_outer,
                        };
                        let text = kn.text(m, n, k, 16);
                        let expr = crate::ir::library::matmul(m, n, k).unwrap();
                        let desc = SgemmDesc {
                            m,
                            n,
                            k,
                            isa,
                            schedule: Some(text.clone()),
                            epilogue: Epilogue::NONE,
                            a_transposed: false,
                        };
                        let sched = desc.schedule(&expr).unwrap();
                        crate::jit::sgemm::Plan::new(&expr, &sched, isa)
                            .unwrap_or_else(|e| panic!("{m}x{n}x{k} `{text}`: {e}"));
                    }
                }
            }
        }
    }
}
