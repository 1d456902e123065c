//! [`ChatTemplate`]: renders a conversation into the prompt text a chat model was trained on.
//!
//! Templates are the Jinja sources HF ships in `tokenizer_config.json` and GGUF files carry in
//! `tokenizer.chat_template`. They are rendered with `minijinja` set up as HF `transformers`
//! sets up Jinja2: `trim_blocks` and `lstrip_blocks` on, `{% break %}`/`{% continue %}`
//! (Jinja2's loopcontrols), Python string methods available
//! (`minijinja-contrib` pycompat), a `raise_exception(msg)` function, and HF's `tojson`
//! (Python `json.dumps(x, ensure_ascii=False, indent=indent)`: `", "` and `": "` separators, no
//! HTML escaping, unlike minijinja's own `tojson`).

use crate::error::Result;
use crate::tokenizer::Tokenizer;
use minijinja::value::{Kwargs, Value};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The Llama 3 Instruct template (Meta-Llama-3-8B-Instruct `tokenizer_config.json`).
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";
/// Instructions one render may execute (minijinja fuel): far above any real conversation,
/// low enough that a hostile template stops in well under a second.
const TEMPLATE_FUEL: u64 = 20_000_000;

/// A compiled chat template plus the BOS/EOS texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // Templates come from model files: bound the work one render may do.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_function("strftime_now", |format: String| {
            strftime_utc(&format, now_unix_s())
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The built-in Llama 3 Instruct template.
    pub fn llama3() -> ChatTemplate {
        ChatTemplate::new(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>")
            .expect("the built-in Llama 3 template compiles")
    }

    /// The tokenizer's own template (GGUF `tokenizer.chat_template`), or the Llama 3 template
    /// when it has none; `bos_token`/`eos_token` are the texts of its BOS/EOS tokens.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.piece_bytes(id))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        match tokenizer.chat_template() {
            Some(source) => {
                ChatTemplate::new(source, &text(tokenizer.bos_id()), &text(tokenizer.eos_id()))
            }
            None => Ok(ChatTemplate::llama3()),
        }
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply starts.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        Ok(template.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })?)
    }
}

/// serde_json formatting with Python's default separators (`", "`, `": "`).
struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// HF `transformers`' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let to_err =
        |e: serde_json::Error| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}"));
    let mut out = Vec::new();
    match indent {
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonCompact);
            serde::Serialize::serialize(&value, &mut ser).map_err(to_err)?;
        }
        Some(n) => {
            let spaces = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&spaces),
            );
            serde::Serialize::serialize(&value, &mut ser).map_err(to_err)?;
        }
    }
    Ok(Value::from_safe_string(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}

fn now_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// HF's `strftime_now(format)` (Llama 3.2 templates put today's date in the system prompt),
/// in UTC, for the directives those templates use: `%d %m %Y %y %b %B %H %M %S %j %%`.
fn strftime_utc(format: &str, unix_s: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_template_renders() {
        let t = ChatTemplate::llama3();
        let out = t.render(&[ChatMessage::new("user", " hi ")], true).unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "<b>&'é")], false)
            .unwrap();
        assert_eq!(out, "[{\"role\": \"user\", \"content\": \"<b>&'é\"}]|{\n  \"role\": \"user\",\n  \"content\": \"<b>&'é\"\n}");
    }

    #[test]
    fn runaway_template_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn strftime_matches_python() {
        // python3 -c "import datetime; print(datetime.datetime.fromtimestamp(1721952000 + 3723, datetime.UTC).strftime('%d %b %Y %B %m %y %H:%M:%S %j %%'))"
        assert_eq!(
            strftime_utc("%d %b %Y %B %m %y %H:%M:%S %j %%", 1_721_952_000 + 3_723),
            "26 Jul 2024 July 07 24 01:02:03 208 %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime_utc("%Y-%m-%d %j", 951_782_400), "2000-02-29 060");
        let t = ChatTemplate::new("{{ strftime_now('%Y') | length }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "4");
    }

    #[test]
    fn bad_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
