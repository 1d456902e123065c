//! `peregrine tokenize`: text to token ids with a model file's tokenizer.

use anyhow::Context as _;
use peregrine_formats::GgufFile;
use peregrine_tokenizer::{EncodeOptions, Tokenizer};
use serde::Serialize;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Arguments of `peregrine tokenize`.
#[derive(clap::Args)]
pub struct Args {
    /// Model file: a GGUF, or a tiktoken `tokenizer.model` (Llama 3).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Text to tokenize; `-` reads standard input.
    text: String,
    /// Print `{"ids": [...], "pieces": [...]}` instead of one `id<TAB>piece` line per token.
    #[arg(long)]
    json: bool,
    /// Do not add the BOS token, even when the model asks for one.
    #[arg(long)]
    no_bos: bool,
    /// Treat control-token texts such as `<|im_start|>` as plain text.
    #[arg(long)]
    no_special: bool,
}

/// `peregrine tokenize --json`: one object on stdout.
#[derive(Serialize)]
pub struct TokenizeReport {
    /// Token ids, in order.
    pub ids: Vec<u32>,
    /// The text of each token (its bytes decoded as UTF-8, lossily for partial characters).
    pub pieces: Vec<String>,
}

/// Loads the tokenizer of a GGUF file, or of a tiktoken file when the file is not GGUF.
pub fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| &magic == b"GGUF")
        .with_context(|| format!("reading {}", path.display()))?;
    if is_gguf {
        let file = GgufFile::open(path).with_context(|| format!("loading {}", path.display()))?;
        Tokenizer::from_gguf(&file)
            .with_context(|| format!("building the tokenizer of {}", path.display()))
    } else {
        Tokenizer::from_tiktoken_file(path)
            .with_context(|| format!("loading tiktoken file {}", path.display()))
    }
}

/// Runs the verb.
pub fn run(args: Args) -> anyhow::Result<()> {
    let tokenizer = load_tokenizer(&args.model)?;
    let text = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        args.text
    };
    let opts = EncodeOptions {
        add_bos: tokenizer.add_bos() && !args.no_bos,
        parse_special: !args.no_special,
    };
    let ids = tokenizer.encode(&text, opts).context("encoding")?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| {
            String::from_utf8_lossy(tokenizer.piece_bytes(id).unwrap_or_default()).into_owned()
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &TokenizeReport { ids, pieces })?;
        writeln!(out)?;
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            writeln!(out, "{id}\t{piece:?}")?;
        }
    }
    out.flush()?;
    Ok(())
}
