//! Training prompts (ShareGPT first turns through the target's chat template) and the cache of
//! self-distilled samples, so a resumed run does not regenerate the responses.

use crate::selfgen::Sample;
use crate::sharegpt::ShareGpt;
use crate::{DistillError, Result};
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A training prompt, tokenized as the model sees it in a chat.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// ShareGPT record id.
    pub id: String,
    /// Rendered and tokenized first user turn, ending with the assistant header.
    pub tokens: Vec<u32>,
}

/// Renders the first human turn of ShareGPT conversations through the chat template, keeps
/// those of at most `max_tokens` tokens (long prompts are dropped, not cut, so each ends with
/// the assistant header), shuffles them with `seed`, and returns up to `n`.
pub fn chat_prompts(
    data: &ShareGpt,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_tokens: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<Prompt>> {
    let mut firsts: Vec<(&str, &str)> = data.first_prompts().collect();
    // Shuffle before tokenizing: only the prompts we keep are rendered.
    firsts.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let opts = EncodeOptions {
        parse_special: false,
        ..EncodeOptions::default_for(tokenizer)
    };
    let special = EncodeOptions {
        parse_special: true,
        ..EncodeOptions::default_for(tokenizer)
    };
    let mut out = Vec::with_capacity(n);
    for (id, text) in firsts {
        if out.len() >= n {
            break;
        }
        // Cheap length screen before rendering: a token is at least one byte.
        if text.len() > max_tokens * 16 {
            continue;
        }
        if tokenizer
            .encode(text, opts)
            .map_err(|e| DistillError::Data(format!("{id}: {e}")))?
            .len()
            > max_tokens
        {
            continue;
        }
        let rendered = template
            .render(&[ChatMessage::new("user", text)], true)
            .map_err(|e| DistillError::Data(format!("{id}: {e}")))?;
        let tokens = tokenizer
            .encode(&rendered, special)
            .map_err(|e| DistillError::Data(format!("{id}: {e}")))?;
        if tokens.len() <= max_tokens {
            out.push(Prompt {
                id: id.to_string(),
                tokens,
            });
        }
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct SampleFile {
    /// What produced the samples; a cache for other settings is not reused.
    key: String,
    samples: Vec<StoredSample>,
}

#[derive(Serialize, Deserialize)]
struct StoredSample {
    tokens: Vec<u32>,
    n_prompt: usize,
}

/// Writes self-distilled samples with the `key` describing how they were made.
pub fn save_samples(path: &Path, key: &str, samples: &[Sample]) -> Result<()> {
    let file = SampleFile {
        key: key.to_string(),
        samples: samples
            .iter()
            .map(|s| StoredSample {
                tokens: s.tokens.clone(),
                n_prompt: s.n_prompt,
            })
            .collect(),
    };
    let io = |source| DistillError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let json = serde_json::to_vec(&file).map_err(|e| DistillError::Data(e.to_string()))?;
    std::fs::write(path, json).map_err(io)
}

/// Reads samples saved with the same `key`; `None` if the file is absent or was made otherwise.
pub fn load_samples(path: &Path, key: &str) -> Result<Option<Vec<Sample>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DistillError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: SampleFile = serde_json::from_slice(&bytes)
        .map_err(|e| DistillError::Data(format!("{}: {e}", path.display())))?;
    if file.key != key {
        return Ok(None);
    }
    let samples = file
        .samples
        .into_iter()
        .map(|s| {
            if s.n_prompt > s.tokens.len() {
                return Err(DistillError::Data(format!(
                    "{}: a sample's prompt is longer than the sample",
                    path.display()
                )));
            }
            Ok(Sample {
                tokens: s.tokens,
                n_prompt: s.n_prompt,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(samples))
}
