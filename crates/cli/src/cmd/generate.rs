//! `peregrine generate`: complete a prompt (raw text, or a user turn through the chat template).

use crate::cmd::model_args::{load, ModelArgs, SamplingArgs};
use crate::cmd::spec_args::SpecArgs;
use crate::json::{GenerateReport, SpecReport};
use anyhow::{Context, Result};
use peregrine_model::{GenerateParams, Session};
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions};
use std::io::Write;

/// Arguments of `peregrine generate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// The prompt. Raw text in which control tokens such as `<|im_start|>` are recognised,
    /// or with `--chat` the user's message.
    #[arg(long)]
    prompt: String,
    /// Treat the prompt as a user turn and render it with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for `--chat`.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Runs the verb.
pub fn run(args: Args) -> Result<()> {
    let loaded = load(&args.model)?;
    let text = if args.chat {
        let template =
            ChatTemplate::for_tokenizer(&loaded.tokenizer).context("reading the chat template")?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.as_str()));
        }
        messages.push(ChatMessage::new("user", args.prompt.as_str()));
        template
            .render(&messages, true)
            .context("rendering the chat template")?
    } else {
        args.prompt.clone()
    };
    let opts = EncodeOptions {
        parse_special: true,
        ..EncodeOptions::default_for(&loaded.tokenizer)
    };
    let prompt = loaded
        .tokenizer
        .encode(&text, opts)
        .context("tokenizing the prompt")?;
    let params = GenerateParams {
        max_tokens: args.sampling.max_tokens,
        sampling: args.sampling.sampling(),
        stop_strings: args.sampling.stop.clone(),
    };
    let spec = args.spec.prepare(&loaded)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let mut on_text = |piece: &str| {
        if args.json || write_err.is_some() {
            return;
        }
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
            write_err = Some(e);
        }
    };
    let (generation, spec_report) = match spec {
        None => {
            let mut session = Session::new(&loaded.model, loaded.ctx);
            (
                session.generate(
                    &loaded.model,
                    &loaded.tokenizer,
                    &prompt,
                    &params,
                    &mut on_text,
                )?,
                None,
            )
        }
        Some(spec) => {
            let mut session = peregrine_spec::SpecSession::new(&loaded.model, loaded.ctx);
            let mut drafter = spec.drafter(&loaded, &params.sampling)?;
            let out = session.generate(
                &loaded.model,
                &loaded.tokenizer,
                drafter.as_mut(),
                &spec.tree,
                &prompt,
                &params,
                &mut on_text,
            )?;
            (out.generation, Some(SpecReport::new(&out.stats)))
        }
    };
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let mut report = GenerateReport::new(&generation);
    report.spec = spec_report;
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(out)?;
        if !args.model.quiet {
            eprintln!(
                "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, stop: {}]",
                report.n_prompt,
                report.prefill_tok_s,
                report.n_generated,
                report.decode_tok_s,
                report.stop_reason
            );
            if let Some(s) = &report.spec {
                eprintln!(
                    "[spec {}: tau {:.2} over {} steps, accepted per depth {:?}, draft {:.0} ms, verify {:.0} ms]",
                    s.method, s.tau, s.steps, s.accepted_per_depth, s.draft_ms, s.verify_ms
                );
            }
        }
    }
    Ok(())
}
