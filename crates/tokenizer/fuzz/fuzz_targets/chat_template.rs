//! Arbitrary text as a chat template: compiling and rendering never panic or run away.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peregrine_tokenizer::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else { return };
    let messages = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi <|im_start|> 😀")];
    let _ = template.render(&messages, true);
    let _ = template.render(&[], false);
});
