//! `peregrine bench spec`: speculative decoding against plain decoding of the same engine, in
//! the same run, prompt by prompt, over a specbench-style JSONL file (first turns, rendered with
//! the chat template).
//!
//! Each prompt runs plain decoding and every speculative configuration in turn, in an order
//! shuffled per prompt (fixed seeds), so load changes on a shared machine hit all of them
//! alike. A configuration is one drafter (`--spec`, or each of `--sweep-specs`) with one tree
//! (`--tree`, or each of `--sweep-trees`). With several configurations the table (or the JSON
//! object) has one row per configuration, and `--png` draws speed-up against the drafted nodes
//! per step, one line per drafter.
//!
//! At temperature 0 every prompt's speculative output is compared with the plain output; any
//! difference is reported and, with `--check`, makes the command fail (exit 1). Running it over
//! every set with `--check` is the full greedy-losslessness sweep of DESIGN.md §6.

use crate::cmd::common::progress_bar;
use crate::cmd::model_args::{load, Loaded, ModelArgs};
use crate::cmd::spec_args::{Prepared, SpecArgs, SpecMethod};
use crate::json::{SpecBenchReport, SpecReport, SpecSweepReport, SpecSweepRun};
use anyhow::{Context, Result};
use clap::ValueEnum as _;
use peregrine_model::{GenerateParams, SamplingParams, Session};
use peregrine_spec::{SpecGeneration, SpecSession, SpecStats, TreeSpec};
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions};
use std::path::{Path, PathBuf};

/// Arguments of `peregrine bench spec`.
#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Prompt file: one JSON object a line with `turns` (the first is used).
    #[arg(long)]
    prompts: PathBuf,
    /// Use only the first N prompts (0 = all).
    #[arg(long, default_value_t = 0)]
    n_prompts: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy, where outputs are compared).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Fail (exit 1) if any greedy speculative output differs from plain decoding.
    #[arg(long)]
    check: bool,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Run every prompt with each of these trees instead of `--tree`: tree specs separated by
    /// commas, where a piece that is only a number continues the spec before it
    /// (`chain:1,chain:4,dynamic:16,4,4,eagle-default,auto`); repeatable.
    #[arg(long, value_name = "TREES")]
    sweep_trees: Vec<String>,
    /// Drafters to run (comma-separated; default: `--spec`). Flags that belong to one drafter
    /// (`--draft-model`, `--exit-layer`) are passed to that drafter only. `none` is run once,
    /// whatever the trees: the speculative engine taking plain steps (an A/A check).
    #[arg(long, value_name = "METHODS", value_delimiter = ',')]
    sweep_specs: Vec<SpecMethod>,
    /// Write a PNG of speed-up over plain decoding against drafted nodes per step, one line
    /// per drafter (needs `--sweep-trees`).
    #[arg(long, value_name = "PATH")]
    png: Option<PathBuf>,
    /// Write the prompts as the chat template renders them (one JSON string a line) to PATH
    /// and exit without benchmarking (other engines can then run the same text).
    #[arg(long, value_name = "PATH")]
    dump_prompts: Option<PathBuf>,
}

/// The tree column of `--spec none` (no drafter: plain steps in the speculative engine).
const A_A_TREE: &str = "(A/A)";

/// One speculative configuration of a run: a drafter with a tree.
struct Config {
    method: String,
    tree: String,
    /// Nodes drafted per step at most (`None` for `auto`, which chooses each step).
    tree_nodes: Option<usize>,
    prepared: Prepared,
    tally: Tally,
}

/// What one configuration (or plain decoding) produced over the prompts.
#[derive(Default)]
struct Tally {
    n_tokens: usize,
    decode_s: f64,
    stats: SpecStats,
    mismatches: Vec<usize>,
}

impl Tally {
    fn tok_s(&self) -> f64 {
        if self.decode_s > 0.0 {
            self.n_tokens as f64 / self.decode_s
        } else {
            0.0
        }
    }

    fn add(&mut self, s: &SpecGeneration) {
        self.n_tokens += s.generation.tokens.len();
        self.decode_s += s.generation.decode_s;
        let total = &mut self.stats;
        total.method.clone_from(&s.stats.method);
        total.steps += s.stats.steps;
        total.n_step_tokens += s.stats.n_step_tokens;
        total.n_drafted += s.stats.n_drafted;
        total.draft_s += s.stats.draft_s;
        total.verify_s += s.stats.verify_s;
        total.features_s += s.stats.features_s;
        if total.accepted_per_depth.len() < s.stats.accepted_per_depth.len() {
            total
                .accepted_per_depth
                .resize(s.stats.accepted_per_depth.len(), 0);
        }
        for (t, a) in total
            .accepted_per_depth
            .iter_mut()
            .zip(&s.stats.accepted_per_depth)
        {
            *t += a;
        }
    }
}

/// Splits `--sweep-trees` values into tree specs: commas separate specs, except that a piece
/// made only of digits belongs to the spec before it (`dynamic:16,4,4` stays one spec).
fn split_tree_list(values: &[String]) -> Result<Vec<String>> {
    let mut specs: Vec<String> = Vec::new();
    for value in values {
        let mut in_value = 0;
        for piece in value.split(',').map(str::trim) {
            let numeric = !piece.is_empty() && piece.bytes().all(|b| b.is_ascii_digit());
            if numeric && in_value > 0 {
                let last = specs.last_mut().expect("in_value > 0: a spec was pushed");
                last.push(',');
                last.push_str(piece);
            } else if numeric {
                anyhow::bail!(
                    "--sweep-trees {value:?}: {piece:?} is not a tree (a number only continues \
                     the spec before it, as in dynamic:16,4,4)"
                );
            } else if piece.is_empty() {
                anyhow::bail!(
                    "--sweep-trees {value:?}: empty tree spec (expected e.g. chain:1,chain:4,auto)"
                );
            } else {
                specs.push(piece.to_string());
                in_value += 1;
            }
        }
    }
    Ok(specs)
}

/// Nodes below the root that a tree drafts at most.
fn tree_nodes(tree: &TreeSpec) -> Option<usize> {
    match tree {
        TreeSpec::Shape(shape) => Some(shape.len().saturating_sub(1)),
        TreeSpec::Dynamic { budget, .. } => Some(*budget),
        TreeSpec::Auto => None,
    }
}

fn method_name(method: SpecMethod) -> String {
    method
        .to_possible_value()
        .map_or_else(|| format!("{method:?}"), |v| v.get_name().to_string())
}

/// The speculative flags for one drafter of a sweep: the drafter-specific flags go to their
/// own drafter only.
fn spec_args_for(base: &SpecArgs, method: SpecMethod, tree: &str) -> SpecArgs {
    let mut args = base.clone();
    args.spec = method;
    args.tree = tree.to_string();
    if method != SpecMethod::Draft {
        args.draft_model = None;
    }
    if method != SpecMethod::Layerskip {
        args.exit_layer = None;
    }
    args
}

/// Checks the flags that need no model, so a bad value fails before loading anything.
fn check_flags(args: &Args, trees: &[String]) -> Result<()> {
    for tree in trees {
        TreeSpec::parse(tree).with_context(|| format!("--sweep-trees: tree {tree:?}"))?;
    }
    if let Some(png) = &args.png {
        if args.sweep_trees.is_empty() {
            anyhow::bail!(
                "--png needs --sweep-trees (the plot is speed-up against tree size), e.g. \
                 --sweep-trees chain:1,chain:2,chain:4,chain:8"
            );
        }
        let is_png = png
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            anyhow::bail!("--png {}: the file name must end in .png", png.display());
        }
        let dir = match png.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            anyhow::bail!(
                "--png {}: directory {} does not exist",
                png.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Reads the prompt file and renders each first turn with the chat template.
fn render_prompts(args: &Args, loaded: &Loaded) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(&args.prompts)
        .with_context(|| format!("reading {}", args.prompts.display()))?;
    let template =
        ChatTemplate::for_tokenizer(&loaded.tokenizer).context("reading the chat template")?;
    let mut rendered = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", args.prompts.display(), i + 1))?;
        let turn = v["turns"][0]
            .as_str()
            .with_context(|| format!("{}:{}: no turns[0] string", args.prompts.display(), i + 1))?;
        rendered.push(template.render(&[ChatMessage::new("user", turn)], true)?);
        if args.n_prompts > 0 && rendered.len() >= args.n_prompts {
            break;
        }
    }
    Ok(rendered)
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    let sweep = !args.sweep_trees.is_empty() || !args.sweep_specs.is_empty();
    let trees = if args.sweep_trees.is_empty() {
        vec![args.spec.tree.clone()]
    } else {
        split_tree_list(&args.sweep_trees)?
    };
    check_flags(&args, &trees)?;
    let methods = if args.sweep_specs.is_empty() {
        vec![args.spec.spec]
    } else {
        args.sweep_specs.clone()
    };

    let loaded = load(&args.model)?;
    let rendered = render_prompts(&args, &loaded)?;
    if let Some(path) = &args.dump_prompts {
        let mut out = String::new();
        for text in &rendered {
            out.push_str(&serde_json::to_string(text)?);
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let opts = EncodeOptions {
        parse_special: true,
        ..EncodeOptions::default_for(&loaded.tokenizer)
    };
    let prompts = rendered
        .iter()
        .map(|text| loaded.tokenizer.encode(text, opts))
        .collect::<std::result::Result<Vec<_>, _>>()?;

    // Every configuration is checked (tree, exit layer, draft model) before any generation.
    let mut configs = Vec::new();
    for &method in &methods {
        if method == SpecMethod::None {
            // The speculative engine with no drafter takes plain steps whatever the tree: one
            // configuration, the A/A check of the engines' noise (no controller: chain:1).
            if !sweep {
                // Still rejects flags that need another drafter (`--exit-layer`, ...).
                args.spec.prepare(&loaded)?;
            }
            configs.push(Config {
                method: method_name(method),
                tree: A_A_TREE.to_string(),
                tree_nodes: None,
                prepared: Prepared::none("chain:1")?,
                tally: Tally::default(),
            });
            continue;
        }
        for tree in &trees {
            let spec_args = if sweep {
                spec_args_for(&args.spec, method, tree)
            } else {
                args.spec.clone()
            };
            let prepared = match spec_args
                .prepare(&loaded)
                .with_context(|| format!("--spec {} --tree {tree}", method_name(method)))?
            {
                Some(p) => p,
                None => Prepared::none(tree)?,
            };
            configs.push(Config {
                method: method_name(method),
                tree: tree.clone(),
                tree_nodes: tree_nodes(&prepared.tree),
                prepared,
                tally: Tally::default(),
            });
        }
    }

    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            ..SamplingParams::default()
        },
        stop_strings: Vec::new(),
    };
    let mut plain_session = Session::new(&loaded.model, loaded.ctx);
    // One speculative session per configuration: a session keeps the adaptive controller it
    // built for `auto` (its cost model and acceptance statistics) and applies it to later
    // generations, so configurations sharing one would steer each other.
    let mut spec_sessions: Vec<SpecSession> = configs
        .iter()
        .map(|_| SpecSession::new(&loaded.model, loaded.ctx))
        .collect();
    let n_runs = 1 + configs.len();
    let bar = if args.model.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar((prompts.len() * n_runs) as u64, "bench spec")
    };
    let mut plain = Tally::default();
    let mut n_skipped = 0;
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); n_runs];
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.len() + 1 >= loaded.ctx {
            n_skipped += 1;
            bar.inc(n_runs as u64);
            continue;
        }
        // Run 0 is plain decoding, run k the k-th configuration.
        for run_idx in run_order(n_runs, i) {
            if run_idx == 0 {
                let p = plain_session.generate(
                    &loaded.model,
                    &loaded.tokenizer,
                    prompt,
                    &params,
                    &mut |_| {},
                )?;
                plain.n_tokens += p.tokens.len();
                plain.decode_s += p.decode_s;
                outputs[0] = p.tokens;
            } else {
                let config = &mut configs[run_idx - 1];
                let mut drafter = config.prepared.drafter(&loaded, &params.sampling)?;
                let s = spec_sessions[run_idx - 1].generate(
                    &loaded.model,
                    &loaded.tokenizer,
                    drafter.as_mut(),
                    &config.prepared.tree,
                    prompt,
                    &params,
                    &mut |_| {},
                )?;
                config.tally.add(&s);
                outputs[run_idx] = s.generation.tokens;
            }
            bar.inc(1);
        }
        if args.temperature <= 0.0 {
            for (k, config) in configs.iter_mut().enumerate() {
                if outputs[k + 1] != outputs[0] {
                    config.tally.mismatches.push(i);
                }
            }
        }
    }
    bar.finish_and_clear();

    let n_mismatches: usize = configs.iter().map(|c| c.tally.mismatches.len()).sum();
    if sweep {
        let report = sweep_report(
            &args,
            prompts.len() - n_skipped,
            n_skipped,
            &loaded,
            &plain,
            &configs,
        );
        if let Some(png) = &args.png {
            speedup_plot::speedup_png(png, &report)
                .with_context(|| format!("writing {}", png.display()))?;
        }
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_sweep(&report);
        }
    } else {
        let config = &configs[0];
        let report = SpecBenchReport {
            prompts: args.prompts.display().to_string(),
            n_prompts: prompts.len() - n_skipped,
            n_skipped,
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            threads: loaded.model.n_threads(),
            tree: config.tree.clone(),
            plain_decode_tok_s: plain.tok_s(),
            spec_decode_tok_s: config.tally.tok_s(),
            speedup: ratio(config.tally.tok_s(), plain.tok_s()),
            n_mismatches: config.tally.mismatches.len(),
            mismatched_prompts: config.tally.mismatches.clone(),
            spec: SpecReport::new(&config.tally.stats),
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_single(&report);
        }
    }
    if args.check && n_mismatches > 0 {
        let which: Vec<String> = configs
            .iter()
            .filter(|c| !c.tally.mismatches.is_empty())
            .map(|c| format!("{} {}: {:?}", c.method, c.tree, c.tally.mismatches))
            .collect();
        anyhow::bail!(
            "{n_mismatches} speculative output(s) differ from plain greedy ({})",
            which.join("; ")
        );
    }
    Ok(())
}

/// The order of the runs (plain and each configuration) for prompt `prompt_idx`: a shuffle
/// seeded by the prompt index, so over the prompts every run takes every position alike and
/// a load change on a shared machine hits none of them in particular (a rotation would keep
/// neighbours together when there are more runs than prompts). Reproducible run to run.
fn run_order(n_runs: usize, prompt_idx: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_runs).collect();
    // SplitMix64 (Steele, Lea and Flood 2014), then Fisher-Yates.
    let mut state = (prompt_idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..n_runs).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn ratio(a: f64, b: f64) -> f64 {
    if a > 0.0 && b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn sweep_report(
    args: &Args,
    n_prompts: usize,
    n_skipped: usize,
    loaded: &Loaded,
    plain: &Tally,
    configs: &[Config],
) -> SpecSweepReport {
    SpecSweepReport {
        prompts: args.prompts.display().to_string(),
        n_prompts,
        n_skipped,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        threads: loaded.model.n_threads(),
        plain_decode_tok_s: plain.tok_s(),
        png: args.png.as_ref().map(|p| p.display().to_string()),
        runs: configs
            .iter()
            .map(|c| {
                let stats = &c.tally.stats;
                SpecSweepRun {
                    method: c.method.clone(),
                    tree: c.tree.clone(),
                    tree_nodes: c.tree_nodes,
                    drafted_per_step: if stats.steps > 0 {
                        stats.n_drafted as f64 / stats.steps as f64
                    } else {
                        0.0
                    },
                    spec_decode_tok_s: c.tally.tok_s(),
                    speedup: ratio(c.tally.tok_s(), plain.tok_s()),
                    n_mismatches: c.tally.mismatches.len(),
                    mismatched_prompts: c.tally.mismatches.clone(),
                    spec: SpecReport::new(stats),
                }
            })
            .collect(),
    }
}

fn print_single(report: &SpecBenchReport) {
    println!(
        "{}: {} prompts, {} tokens each, temperature {}, {} threads, tree {}",
        report.prompts,
        report.n_prompts,
        report.max_tokens,
        report.temperature,
        report.threads,
        report.tree
    );
    println!("plain     {:.1} tok/s", report.plain_decode_tok_s);
    println!(
        "{:<9} {:.1} tok/s  speed-up {:.2}x  tau {:.2}  accepted per depth {:?}",
        report.spec.method,
        report.spec_decode_tok_s,
        report.speedup,
        report.spec.tau,
        report.spec.accepted_per_depth
    );
    if report.temperature <= 0.0 {
        println!(
            "greedy outputs differing from plain: {} {:?}",
            report.n_mismatches, report.mismatched_prompts
        );
    }
}

fn print_sweep(report: &SpecSweepReport) {
    println!(
        "{}: {} prompts, {} tokens each, temperature {}, {} threads",
        report.prompts, report.n_prompts, report.max_tokens, report.temperature, report.threads
    );
    println!("plain decoding: {:.1} tok/s", report.plain_decode_tok_s);
    let greedy = report.temperature <= 0.0;
    println!(
        "{:<10} {:<16} {:>5} {:>8} {:>8} {:>9} {:>6}  {}",
        "drafter",
        "tree",
        "nodes",
        "drafted",
        "tok/s",
        "speed-up",
        "tau",
        if greedy {
            "differing  accepted per depth"
        } else {
            "accepted per depth"
        }
    );
    for r in &report.runs {
        let nodes = r
            .tree_nodes
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        let differing = if greedy {
            format!("{:>9}  ", r.n_mismatches)
        } else {
            String::new()
        };
        println!(
            "{:<10} {:<16} {:>5} {:>8.2} {:>8.1} {:>8.2}x {:>6.2}  {differing}{:?}",
            r.method,
            r.tree,
            nodes,
            r.drafted_per_step,
            r.spec_decode_tok_s,
            r.speedup,
            r.spec.tau,
            r.spec.accepted_per_depth
        );
    }
    println!("(nodes: tree size; drafted: mean drafted nodes verified per target forward)");
    if let Some(png) = &report.png {
        println!("plot: {png}");
    }
}

/// The speed-up plot (`--png`).
mod speedup_plot {
    use crate::json::SpecSweepReport;
    use crate::plot::{register_font, COLORS, FONT};
    use anyhow::{anyhow, Result};
    use plotters::prelude::*;
    use std::path::Path;

    fn err(e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("drawing the plot: {e}")
    }

    /// How a legend entry's line is drawn.
    #[derive(Clone, Copy)]
    enum Stroke {
        Solid,
        /// Dash and gap lengths in pixels.
        Dashed(u32, u32),
    }

    /// Writes speed-up over plain decoding (y) against tree size, the nodes a tree drafts per
    /// step at most (x, log scale), one line per drafter through its fixed trees; an `auto`
    /// run (no fixed size) is a dotted level in its drafter's colour, plain decoding a dashed
    /// grey level at 1. The legend has its own column on the right, clear of the data.
    pub fn speedup_png(path: &Path, report: &SpecSweepReport) -> Result<()> {
        register_font()?;
        let mut methods: Vec<&str> = Vec::new();
        for r in &report.runs {
            if !methods.contains(&r.method.as_str()) {
                methods.push(&r.method);
            }
        }
        let n_max = report
            .runs
            .iter()
            .filter_map(|r| r.tree_nodes)
            .max()
            .unwrap_or(1)
            .max(2) as f64;
        // Room on the right for the last point's label.
        let (x_lo, x_hi) = (0.8, n_max * 1.9);
        let y_values = report.runs.iter().map(|r| r.speedup).chain([1.0]);
        let y_lo = y_values.clone().fold(f64::INFINITY, f64::min);
        let y_hi = y_values.fold(f64::NEG_INFINITY, f64::max);
        let pad = ((y_hi - y_lo) * 0.1).max(0.05);
        let (y_lo, y_hi) = ((y_lo - pad).max(0.0), y_hi + pad);

        let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let file = Path::new(&report.prompts).file_name().map_or_else(
            || report.prompts.clone(),
            |f| f.to_string_lossy().into_owned(),
        );
        let title = format!(
            "speed-up over plain decoding: {file}, {} prompts x {} tokens, T = {}, {} threads",
            report.n_prompts, report.max_tokens, report.temperature, report.threads
        );
        let root = root.titled(&title, (FONT, 18)).map_err(err)?;
        let (plot_area, legend_area) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((x_lo..x_hi).log_scale().base(2.0), y_lo..y_hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("tree size: drafted nodes per step, at most (log scale)")
            .y_desc("speed-up over plain decoding")
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}x"))
            .draw()
            .map_err(err)?;

        let mut legend: Vec<(RGBColor, Stroke, String)> = Vec::new();
        let level = |y: f64| [(x_lo, y), (x_hi, y)];
        let grey = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new(
                level(1.0),
                10,
                6,
                grey.stroke_width(2),
            ))
            .map_err(err)?;
        legend.push((
            grey,
            Stroke::Dashed(10, 6),
            format!("plain ({:.0} tok/s)", report.plain_decode_tok_s),
        ));

        let label_font = (FONT, 13).into_font().color(&BLACK);
        for (i, method) in methods.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut fixed: Vec<(f64, f64, &str)> = report
                .runs
                .iter()
                .filter(|r| r.method == *method)
                .filter_map(|r| r.tree_nodes.map(|n| (n as f64, r.speedup, r.tree.as_str())))
                .collect();
            fixed.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !fixed.is_empty() {
                chart
                    .draw_series(LineSeries::new(
                        fixed.iter().map(|p| (p.0, p.1)),
                        color.stroke_width(3),
                    ))
                    .map_err(err)?;
                chart
                    .draw_series(
                        fixed
                            .iter()
                            .map(|p| Circle::new((p.0, p.1), 5, color.filled())),
                    )
                    .map_err(err)?;
                // Labels above the points for even drafters, below for odd ones, so that two
                // drafters' labels at the same tree size do not overprint each other.
                let label_dy = if i % 2 == 0 { -19 } else { 6 };
                chart
                    .draw_series(fixed.iter().map(|p| {
                        EmptyElement::at((p.0, p.1))
                            + Text::new(p.2.to_string(), (6, label_dy), label_font.clone())
                    }))
                    .map_err(err)?;
                legend.push((color, Stroke::Solid, method.to_string()));
            }
            for r in report
                .runs
                .iter()
                .filter(|r| r.method == *method && r.tree_nodes.is_none())
            {
                chart
                    .draw_series(DashedLineSeries::new(
                        level(r.speedup),
                        3,
                        5,
                        color.stroke_width(2),
                    ))
                    .map_err(err)?;
                legend.push((
                    color,
                    Stroke::Dashed(3, 5),
                    format!("{method} {} ({:.2}x)", r.tree, r.speedup),
                ));
            }
        }
        draw_legend(&legend_area, &legend)
    }

    fn draw_legend<DB: DrawingBackend>(
        area: &DrawingArea<DB, plotters::coord::Shift>,
        entries: &[(RGBColor, Stroke, String)],
    ) -> Result<()> {
        let font = (FONT, 15).into_font().color(&BLACK);
        for (k, (color, stroke, label)) in entries.iter().enumerate() {
            let y = 40 + 28 * k as i32;
            let (x0, x1) = (12, 48);
            match stroke {
                Stroke::Solid => area
                    .draw(&PathElement::new(
                        vec![(x0, y), (x1, y)],
                        color.stroke_width(3),
                    ))
                    .map_err(err)?,
                Stroke::Dashed(dash, gap) => {
                    let mut x = x0;
                    while x < x1 {
                        let end = (x + *dash as i32).min(x1);
                        area.draw(&PathElement::new(
                            vec![(x, y), (end, y)],
                            color.stroke_width(2),
                        ))
                        .map_err(err)?;
                        x = end + *gap as i32;
                    }
                }
            }
            area.draw(&Text::new(label.clone(), (x1 + 8, y - 8), font.clone()))
                .map_err(err)?;
        }
        area.present().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::{run_order, split_tree_list};

    #[test]
    fn run_orders_are_permutations_that_move() {
        let orders: Vec<Vec<usize>> = (0..8).map(|i| run_order(5, i)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
        }
        assert_eq!(orders[3], run_order(5, 3), "seeded: the same every run");
        let plain_first = orders.iter().filter(|o| o[0] == 0).count();
        assert!(
            plain_first < 8,
            "plain decoding is not always first: {orders:?}"
        );
        assert_eq!(run_order(1, 7), [0]);
    }

    #[test]
    fn tree_lists_keep_dynamic_specs_whole() {
        let v = split_tree_list(&[
            "chain:1, chain:4,dynamic:16,4,4,eagle-default".to_string(),
            "auto".to_string(),
        ])
        .unwrap();
        assert_eq!(
            v,
            [
                "chain:1",
                "chain:4",
                "dynamic:16,4,4",
                "eagle-default",
                "auto"
            ]
        );
        let err = split_tree_list(&["4,chain:1".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"4\" is not a tree"), "{err}");
        let err = split_tree_list(&["chain:1,,chain:2".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty tree spec"), "{err}");
    }
}
