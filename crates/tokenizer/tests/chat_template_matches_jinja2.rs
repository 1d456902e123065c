//! Chat templates: our renderings equal Python Jinja2's (`tests/data/chat_templates.json`).

mod common;

use peregrine_formats::GgufFile;
use peregrine_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

fn messages(value: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(value.clone()).expect("messages in the golden")
}

#[test]
fn renderings_match_jinja2() {
    let golden = common::read_json("chat_templates.json");
    let mut n_cases = 0;
    for case in golden["cases"].as_array().expect("cases") {
        let name = case["template"].as_str().unwrap();
        let t = &golden["templates"][name];
        let template = ChatTemplate::new(
            t["source"].as_str().unwrap(),
            t["bos_token"].as_str().unwrap(),
            t["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages(&case["messages"]), agp).unwrap();
        assert_eq!(
            got,
            case["rendered"].as_str().unwrap(),
            "{name}, add_generation_prompt={agp}, {}",
            case["messages"]
        );
        n_cases += 1;
    }
    assert!(n_cases >= 20);
}

#[test]
fn builtin_llama3_template_is_the_golden_one() {
    let golden = common::read_json("chat_templates.json");
    let want = ChatTemplate::new(
        golden["templates"]["llama3"]["source"].as_str().unwrap(),
        "<|begin_of_text|>",
        "<|eot_id|>",
    )
    .unwrap();
    let msgs = [
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "U"),
    ];
    assert_eq!(
        ChatTemplate::llama3().render(&msgs, true).unwrap(),
        want.render(&msgs, true).unwrap()
    );
}

#[test]
fn smollm2_template_from_gguf_matches_jinja2() {
    let file = GgufFile::open(peregrine_testkit::smollm2_path()).unwrap();
    let golden = common::read_json("chat_templates.json");
    assert_eq!(
        file.get_str("tokenizer.chat_template").unwrap(),
        golden["templates"]["smollm2"]["source"].as_str()
    );
    let from_file = ChatTemplate::from_gguf(&file).unwrap();
    let from_tokenizer =
        ChatTemplate::for_tokenizer(&Tokenizer::from_gguf(&file).unwrap()).unwrap();
    for case in golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["template"] == "smollm2")
    {
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            from_file.render(&msgs, agp).unwrap(),
            case["rendered"].as_str().unwrap()
        );
        assert_eq!(
            from_tokenizer.render(&msgs, agp).unwrap(),
            case["rendered"].as_str().unwrap()
        );
    }
}
