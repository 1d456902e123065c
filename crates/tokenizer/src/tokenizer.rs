//! [`Tokenizer`]: built from a [`TokenizerSpec`] (GGUF metadata) or a tiktoken file.

use crate::error::{Error, Result};
use crate::pretokenize::{PreTokenizer, PreTokenizerInfo, PreTokenizerKind, SplitScratch};
use crate::rank_bpe::RankBpe;
use crate::special::{Fragment, SpecialMatcher};
use crate::stream::StreamDecoder;
use crate::unicode::{byte_to_char, char_to_byte};
use ahash::AHashMap;
use std::ops::Range;
use tokenizers::Model as _;

/// A token's type, as GGUF `tokenizer.ggml.token_type` stores it (llama.cpp `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// 0: no type given.
    Undefined,
    /// 1: ordinary text.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: control token (`<|im_start|>`, `<|eot_id|>`): recognised in text only with `parse_special`.
    Control,
    /// 4: added text token, always recognised in text.
    UserDefined,
    /// 5: unused slot (decodes to nothing).
    Unused,
    /// 6: a raw byte.
    Byte,
}

impl TokenType {
    /// Maps the GGUF integer; unknown values become [`TokenType::Undefined`], as in llama.cpp.
    pub fn from_gguf(value: i32) -> TokenType {
        match value {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Everything needed to build a [`Tokenizer`]: the `tokenizer.*` metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`, which selects the pre-tokenizer (`"smollm"`, `"llama-bpe"`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in the GPT-2 byte-level alphabet (`Ġ` for a space).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (GGUF integers); empty means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"`, best first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; when absent the pre-tokenizer's default (true for Llama 3).
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Options of [`Tokenizer::encode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Put the BOS token first.
    pub add_bos: bool,
    /// Recognise control tokens written in the text (`<|im_start|>`), as llama.cpp does for prompts.
    pub parse_special: bool,
}

impl EncodeOptions {
    /// The file's `add_bos`, with special tokens parsed (what `llama-tokenize` does by default).
    pub fn default_for(tokenizer: &Tokenizer) -> EncodeOptions {
        EncodeOptions {
            add_bos: tokenizer.add_bos,
            parse_special: true,
        }
    }
}

/// Texts that llama.cpp forces to CONTROL when a vocabulary has them as plain tokens
/// (end-of-turn, end-of-message, fill-in-the-middle and end-of-generation markers).
const CONTROL_LOOKING: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
    "<|eom_id|>",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "</s>",
    "[EOS]",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "[e~[",
];

/// Texts of tokens that end generation (llama.cpp's end-of-generation list, without FIM tokens).
const END_OF_TURN: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// Special tokens of the Llama 3 tiktoken file, after the 128000 ranks (llama_models `tokenizer.py`).
const LLAMA3_SPECIALS: &[&str] = &[
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
];
const LLAMA3_N_SPECIALS: usize = 256;

enum BpeModel {
    /// Merges-list BPE over the byte-level alphabet (GGUF), through HF `tokenizers`.
    Merges(Box<tokenizers::models::bpe::BPE>),
    /// tiktoken rank BPE over raw bytes.
    Ranks(RankBpe),
}

/// A byte-level BPE tokenizer. `Send + Sync`; encoding takes `&self`.
pub struct Tokenizer {
    model: BpeModel,
    pre: PreTokenizer,
    /// Raw bytes of every token, concatenated; token `i` is `piece_data[piece_offsets[i]..piece_offsets[i + 1]]`.
    piece_data: Vec<u8>,
    piece_offsets: Vec<usize>,
    types: Vec<TokenType>,
    specials: SpecialMatcher,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.pre.kind)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

fn check_id(what: &'static str, id: Option<u32>, vocab_size: usize) -> Result<Option<u32>> {
    match id {
        Some(id) if id as usize >= vocab_size => Err(Error::SpecialIdOutOfRange {
            what,
            id: u64::from(id),
            vocab_size,
        }),
        _ => Ok(id),
    }
}

impl Tokenizer {
    /// Builds a tokenizer from GGUF-style metadata.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer> {
        if spec.model != "gpt2" {
            return Err(Error::UnsupportedModel { model: spec.model });
        }
        let pre_name = spec.pre.as_deref().unwrap_or("default");
        let info = PreTokenizerInfo::from_name(pre_name)?;
        let n_tokens = spec.tokens.len();
        if n_tokens == 0 || n_tokens > (1usize << 31) {
            return Err(Error::BadVocabSize { n_tokens });
        }
        if !spec.token_types.is_empty() && spec.token_types.len() < n_tokens {
            return Err(Error::TokenTypeCount {
                n_types: spec.token_types.len(),
                n_tokens,
            });
        }
        let mut types: Vec<TokenType> = if spec.token_types.is_empty() {
            vec![TokenType::Normal; n_tokens]
        } else {
            spec.token_types[..n_tokens]
                .iter()
                .map(|&t| TokenType::from_gguf(t))
                .collect()
        };
        // llama.cpp renames empty tokens so that every text maps to one id.
        let texts: Vec<String> = spec
            .tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t
                }
            })
            .collect();
        for (text, ty) in texts.iter().zip(types.iter_mut()) {
            if CONTROL_LOOKING.contains(&text.as_str()) && *ty != TokenType::Control {
                tracing::debug!(token = %text, "control-looking token was {ty:?}; treating it as control");
                *ty = TokenType::Control;
            }
            if matches!(
                text.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                *ty = TokenType::UserDefined;
            }
        }

        // Vocabulary for HF BPE: text -> id, the last id winning on duplicates (as llama.cpp).
        let mut vocab: AHashMap<String, u32> = AHashMap::with_capacity(n_tokens);
        for (i, t) in texts.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let mut merges = Vec::with_capacity(spec.merges.len());
        let mut seen = ahash::AHashSet::with_capacity(spec.merges.len());
        let mut n_skipped = 0usize;
        for m in &spec.merges {
            // llama.cpp splits at the first space after the first byte.
            let Some(pos) = m
                .as_bytes()
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1)
            else {
                n_skipped += 1;
                continue;
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            let joined = format!("{a}{b}");
            if !vocab.contains_key(a) || !vocab.contains_key(b) || !vocab.contains_key(&joined) {
                n_skipped += 1;
                continue;
            }
            if seen.insert((a.to_string(), b.to_string())) {
                merges.push((a.to_string(), b.to_string()));
            }
        }
        if n_skipped > 0 {
            tracing::warn!(
                n_skipped,
                "skipped merges whose parts or result are not in the vocabulary"
            );
        }
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(info.ignore_merges)
            .build()
            .map_err(|e| Error::Bpe(e.to_string()))?;

        let mut piece_data = Vec::new();
        let mut piece_offsets = Vec::with_capacity(n_tokens + 1);
        piece_offsets.push(0);
        for (text, ty) in texts.iter().zip(&types) {
            match ty {
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
                    piece_data.extend_from_slice(text.as_bytes())
                }
                TokenType::Normal | TokenType::Byte => {
                    // Chars outside the byte-level alphabet keep their UTF-8 (llama.cpp writes a
                    // "[UNK_BYTE_..]" marker instead).
                    for c in text.chars() {
                        match char_to_byte(c) {
                            Some(b) => piece_data.push(b),
                            None => {
                                piece_data.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes())
                            }
                        }
                    }
                }
                TokenType::Unused | TokenType::Undefined => {}
            }
            piece_offsets.push(piece_data.len());
        }

        let specials = SpecialMatcher::new(
            texts
                .iter()
                .zip(&types)
                .enumerate()
                .filter(|(_, (_, ty))| {
                    matches!(
                        ty,
                        TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                    )
                })
                .map(|(i, (text, ty))| (i as u32, text.clone(), *ty == TokenType::UserDefined))
                .collect(),
        );

        let bos_id = check_id("bos", spec.bos_id, n_tokens)?;
        let eos_id = check_id("eos", spec.eos_id, n_tokens)?;
        let eot_id = check_id("eot", spec.eot_id, n_tokens)?;
        let eom_id = check_id("eom", spec.eom_id, n_tokens)?;
        let mut stop_ids: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();
        for (i, text) in texts.iter().enumerate() {
            if END_OF_TURN.contains(&text.as_str()) {
                stop_ids.push(i as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();

        Ok(Tokenizer {
            model: BpeModel::Merges(Box::new(bpe)),
            pre: PreTokenizer::llama_cpp(info.kind),
            piece_data,
            piece_offsets,
            types,
            specials,
            bos_id,
            eos_id,
            add_bos: spec.add_bos.unwrap_or(info.add_bos_default),
            stop_ids,
            chat_template: spec.chat_template,
        })
    }

    /// Loads a tiktoken BPE file (`base64-token rank` per line), with the Llama 3 special tokens
    /// (`<|begin_of_text|>`, ..., `<|reserved_special_token_247|>`) numbered after the ranks, the
    /// Llama 3 pre-tokenizer, BOS added by default, and no chat template of its own.
    pub fn from_tiktoken_file(path: &std::path::Path) -> Result<Tokenizer> {
        use base64::Engine as _;
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let line_err = |line_no: usize, problem: String| Error::TiktokenLine {
            path: path.to_path_buf(),
            line_no,
            problem,
        };
        let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
        let mut ranks = AHashMap::new();
        for (idx, line) in text.lines().enumerate() {
            let line_no = idx + 1;
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(b64), Some(rank), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(line_err(line_no, "expected `<base64 token> <rank>`".into()));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| line_err(line_no, format!("bad base64 {b64:?}: {e}")))?;
            let rank: u32 = rank
                .parse()
                .map_err(|_| line_err(line_no, format!("bad rank {rank:?}")))?;
            if rank as usize >= (1 << 31) {
                return Err(line_err(line_no, format!("rank {rank} is too large")));
            }
            let slot = rank as usize;
            if slot >= by_rank.len() {
                if slot > text.len() {
                    return Err(line_err(
                        line_no,
                        format!("rank {rank} exceeds the number of lines"),
                    ));
                }
                by_rank.resize(slot + 1, None);
            }
            if by_rank[slot].is_some() {
                return Err(line_err(line_no, format!("rank {rank} appears twice")));
            }
            if ranks.insert(bytes.clone(), rank).is_some() {
                return Err(line_err(line_no, format!("token {b64:?} appears twice")));
            }
            by_rank[slot] = Some(bytes);
        }
        let n_base = by_rank.len();
        if n_base == 0 || ranks.len() != n_base {
            return Err(line_err(
                0,
                format!(
                    "ranks are not 0..{n_base} without gaps ({} tokens)",
                    ranks.len()
                ),
            ));
        }
        let mut special_texts: Vec<String> =
            LLAMA3_SPECIALS.iter().map(|s| s.to_string()).collect();
        for i in 2..=(LLAMA3_N_SPECIALS - LLAMA3_SPECIALS.len() + 1) {
            special_texts.push(format!("<|reserved_special_token_{i}|>"));
        }
        let mut piece_data = Vec::new();
        let mut piece_offsets = vec![0];
        for bytes in by_rank.iter().flatten() {
            piece_data.extend_from_slice(bytes);
            piece_offsets.push(piece_data.len());
        }
        for t in &special_texts {
            piece_data.extend_from_slice(t.as_bytes());
            piece_offsets.push(piece_data.len());
        }
        let mut types = vec![TokenType::Normal; n_base];
        types.extend(std::iter::repeat_n(TokenType::Control, special_texts.len()));
        let special_id = |text: &str| {
            special_texts
                .iter()
                .position(|t| t == text)
                .map(|i| (n_base + i) as u32)
        };
        let bos_id = special_id("<|begin_of_text|>");
        let eos_id = special_id("<|end_of_text|>");
        let mut stop_ids: Vec<u32> = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
            .iter()
            .filter_map(|t| special_id(t))
            .collect();
        stop_ids.sort_unstable();
        let specials = SpecialMatcher::new(
            special_texts
                .iter()
                .enumerate()
                .map(|(i, t)| ((n_base + i) as u32, t.clone(), false))
                .collect(),
        );
        Ok(Tokenizer {
            model: BpeModel::Ranks(RankBpe::new(ranks)),
            pre: PreTokenizer::regex(PreTokenizerKind::Llama3),
            piece_data,
            piece_offsets,
            types,
            specials,
            bos_id,
            eos_id,
            add_bos: true,
            stop_ids,
            chat_template: None,
        })
    }

    /// Encodes `text` to token ids.
    pub fn encode(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if opts.add_bos {
            out.push(self.bos_id.ok_or(Error::NoBosToken)?);
        }
        let mut fragments = Vec::new();
        self.specials
            .partition(text, opts.parse_special, &mut Vec::new(), &mut fragments);
        let mut scratch = EncodeScratch::default();
        for frag in fragments {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(range) => self.encode_text(&text[range], &mut scratch, &mut out)?,
            }
        }
        Ok(out)
    }

    /// Encodes text that holds no special tokens.
    fn encode_text(
        &self,
        text: &str,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        scratch.words.clear();
        self.pre.split(text, &mut scratch.split, &mut scratch.words);
        let byte_to_char = byte_to_char();
        for word in scratch.words.iter().cloned() {
            let word = &text.as_bytes()[word];
            match &self.model {
                BpeModel::Merges(bpe) => {
                    scratch.encoded.clear();
                    scratch
                        .encoded
                        .extend(word.iter().map(|&b| byte_to_char[b as usize]));
                    let tokens = bpe
                        .tokenize(&scratch.encoded)
                        .map_err(|e| Error::Bpe(e.to_string()))?;
                    out.extend(tokens.iter().map(|t| t.id));
                }
                BpeModel::Ranks(bpe) => bpe.encode_word(word, &mut scratch.parts, out),
            }
        }
        Ok(())
    }

    /// Decodes ids to text; bytes that are not valid UTF-8 (anywhere in the whole output) become
    /// U+FFFD. Control tokens decode to their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.piece_bytes(id).ok_or(Error::UnknownTokenId {
                id,
                vocab_size: self.vocab_size(),
            })?);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The raw bytes of one token (a control token's text for control tokens); `None` when `id`
    /// is outside the vocabulary.
    pub fn piece_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let start = *self.piece_offsets.get(i)?;
        let end = *self.piece_offsets.get(i + 1)?;
        Some(&self.piece_data[start..end])
    }

    /// A decoder for generated ids, one at a time, that never splits a UTF-8 character.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// Number of tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// The BOS token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The EOS token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether the file asks for a BOS token in front of prompts.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end generation: EOS and the end-of-turn tokens (`<|im_end|>`, `<|eot_id|>`,
    /// `<|eom_id|>`, `<|endoftext|>`, ...), sorted.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether `id` is a control token (false for ids outside the vocabulary).
    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&TokenType::Control)
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The chat template that came with the tokenizer (GGUF `tokenizer.chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Which pre-tokenizer splits text before BPE.
    pub fn pre_tokenizer(&self) -> PreTokenizerKind {
        self.pre.kind
    }
}

#[derive(Default)]
struct EncodeScratch {
    split: SplitScratch,
    words: Vec<Range<usize>>,
    encoded: String,
    parts: Vec<(usize, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        let tokens = ["<|im_start|>", "a", "b", "Ġ", "ab", "Ġab", "1", "2"];
        Tokenizer::from_spec(TokenizerSpec {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            token_types: vec![3, 1, 1, 1, 1, 1, 1, 1],
            merges: vec!["a b".into(), "Ġ ab".into()],
            bos_id: Some(0),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn encodes_and_decodes_a_tiny_vocab() {
        let t = tiny();
        let ids = t
            .encode(
                "ab ab12<|im_start|>",
                EncodeOptions {
                    add_bos: true,
                    parse_special: true,
                },
            )
            .unwrap();
        assert_eq!(ids, [0, 4, 5, 6, 7, 0]);
        assert_eq!(t.decode(&ids).unwrap(), "<|im_start|>ab ab12<|im_start|>");
        assert!(t.is_control(0));
        assert!(!t.is_control(1));
        assert!(!t.is_control(99));
        assert_eq!(t.piece_bytes(3), Some(&b" "[..]));
        assert!(matches!(
            t.decode(&[42]),
            Err(Error::UnknownTokenId { id: 42, .. })
        ));
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        let spec = TokenizerSpec {
            model: "gpt2".into(),
            pre: Some("nope".into()),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        assert!(matches!(
            Tokenizer::from_spec(spec),
            Err(Error::UnsupportedPreTokenizer { .. })
        ));
        let spec = TokenizerSpec {
            model: "llama".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        assert!(matches!(
            Tokenizer::from_spec(spec),
            Err(Error::UnsupportedModel { .. })
        ));
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }
}
