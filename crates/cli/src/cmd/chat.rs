//! `peregrine chat`: an interactive multi-turn conversation through the model's chat template.
//!
//! Each turn re-renders the whole conversation; the session keeps the common prefix cached, so
//! only the new user turn is computed.

use crate::cmd::model_args::{load, ModelArgs, SamplingArgs};
use anyhow::{Context, Result};
use peregrine_model::{GenerateParams, Session};
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions};
use std::io::{BufRead, Write};

/// Arguments of `peregrine chat`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// System message.
    #[arg(long)]
    system: Option<String>,
}

/// Runs the verb: reads one user message per line from stdin until EOF or `/exit`.
pub fn run(args: Args) -> Result<()> {
    let loaded = load(&args.model)?;
    let template =
        ChatTemplate::for_tokenizer(&loaded.tokenizer).context("reading the chat template")?;
    let params = GenerateParams {
        max_tokens: args.sampling.max_tokens,
        sampling: args.sampling.sampling(),
        stop_strings: args.sampling.stop.clone(),
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.as_str()));
    }
    let mut session = Session::new(&loaded.model, loaded.ctx);
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    eprintln!("(one message per line; /exit or end of input to quit)");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line == "/exit" {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let text = template
            .render(&messages, true)
            .context("rendering the chat template")?;
        let opts = EncodeOptions {
            parse_special: true,
            ..EncodeOptions::default_for(&loaded.tokenizer)
        };
        let prompt = loaded.tokenizer.encode(&text, opts)?;
        let mut out = stdout.lock();
        let mut write_err = None;
        let mut on_text = |piece: &str| {
            if write_err.is_none() {
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
                    write_err = Some(e);
                }
            }
        };
        let generation = session.generate(
            &loaded.model,
            &loaded.tokenizer,
            &prompt,
            &params,
            &mut on_text,
        )?;
        if let Some(e) = write_err {
            return Err(e.into());
        }
        writeln!(out)?;
        messages.push(ChatMessage::new("assistant", generation.text.as_str()));
    }
    Ok(())
}
