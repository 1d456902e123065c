//! Reading a [`TokenizerSpec`] (and chat template) out of GGUF metadata.

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, TokenizerSpec};
use peregrine_formats::names::keys;
use peregrine_formats::GgufFile;

/// `tokenizer.ggml.eot_token_id` (not in `peregrine_formats::names` yet).
const KEY_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
/// `tokenizer.ggml.eom_token_id` (not in `peregrine_formats::names` yet).
const KEY_EOM_ID: &str = "tokenizer.ggml.eom_token_id";

fn get_id(file: &GgufFile, key: &'static str) -> Result<Option<u32>> {
    match file.get_u64(key)? {
        None => Ok(None),
        Some(id) => u32::try_from(id).map(Some).map_err(|_| Error::BadKey {
            key,
            problem: format!("token id {id} does not fit in 32 bits"),
        }),
    }
}

impl TokenizerSpec {
    /// Collects the `tokenizer.*` metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<TokenizerSpec> {
        let model = file
            .get_str(keys::TOKENIZER_MODEL)?
            .ok_or(Error::MissingKey {
                key: keys::TOKENIZER_MODEL,
            })?;
        let tokens = file
            .get_str_array(keys::TOKENIZER_TOKENS)?
            .ok_or(Error::MissingKey {
                key: keys::TOKENIZER_TOKENS,
            })?;
        Ok(TokenizerSpec {
            model: model.to_string(),
            pre: file.get_str(keys::TOKENIZER_PRE)?.map(str::to_string),
            tokens: tokens.into_iter().map(str::to_string).collect(),
            token_types: file
                .get_i32_array(keys::TOKENIZER_TOKEN_TYPE)?
                .unwrap_or_default(),
            merges: file
                .get_str_array(keys::TOKENIZER_MERGES)?
                .map(|m| m.into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            bos_id: get_id(file, keys::TOKENIZER_BOS_ID)?,
            eos_id: get_id(file, keys::TOKENIZER_EOS_ID)?,
            eot_id: get_id(file, KEY_EOT_ID)?,
            eom_id: get_id(file, KEY_EOM_ID)?,
            add_bos: file.get_bool(keys::TOKENIZER_ADD_BOS)?,
            chat_template: file
                .get_str(keys::TOKENIZER_CHAT_TEMPLATE)?
                .map(str::to_string),
        })
    }
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        Tokenizer::from_spec(TokenizerSpec::from_gguf(file)?)
    }
}

impl ChatTemplate {
    /// The file's `tokenizer.chat_template` (with its BOS/EOS token texts), or the built-in
    /// Llama 3 template when the file has none.
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTemplate> {
        let Some(source) = file.get_str(keys::TOKENIZER_CHAT_TEMPLATE)? else {
            return Ok(ChatTemplate::llama3());
        };
        let tokens = file
            .get_str_array(keys::TOKENIZER_TOKENS)?
            .unwrap_or_default();
        let text = |id: Option<u32>| {
            id.and_then(|id| tokens.get(id as usize))
                .copied()
                .unwrap_or("")
        };
        let bos = get_id(file, keys::TOKENIZER_BOS_ID)?;
        let eos = get_id(file, keys::TOKENIZER_EOS_ID)?;
        ChatTemplate::new(source, text(bos), text(eos))
    }
}
