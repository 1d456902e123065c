//! Helpers shared by the verbs: default paths and threads, progress bars, memory readings.

use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// The model `scripts/demo` fetches, relative to the current directory or the repository.
pub fn default_model_path() -> PathBuf {
    let rel = PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if rel.exists() {
        return rel;
    }
    // Running from elsewhere inside a checkout: look beside the binary's target dir.
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| a.join(&rel).exists())
                .map(|a| a.join(&rel))
        })
        .unwrap_or(rel)
}

/// Physical cores (one thread per core is fastest for these memory-bound kernels).
pub fn default_threads() -> usize {
    physical_cores().unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn physical_cores() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = None;
    for line in info.lines() {
        let mut parts = line.splitn(2, ':');
        let (key, value) = (parts.next()?.trim(), parts.next().map(str::trim));
        match key {
            "physical id" => physical = value.map(str::to_string),
            "core id" => {
                cores.insert((physical.clone(), value.map(str::to_string)));
            }
            _ => {}
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Peak resident memory of this process so far, in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb * 1024.0 / 1e6)
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
