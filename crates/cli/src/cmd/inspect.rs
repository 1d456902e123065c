//! `peregrine inspect`: a model file's architecture, config, metadata and tensors.
//!
//! GGUF files show everything; safetensors files show their tensors, `__metadata__`, and the
//! config of a `config.json` beside them.

use peregrine_formats::safetensors_io::SafetensorsFile;
use peregrine_formats::{GgufFile, MetadataValue, ModelConfig, RopeScaling};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::PathBuf;

/// Arguments of `peregrine inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF; `.safetensors` files show their tensors).
    path: PathBuf,
    /// Print one JSON object (see [`InspectJson`]) instead of tables.
    #[arg(long)]
    json: bool,
    /// Array elements shown before an array is summarised.
    #[arg(long, default_value_t = 8)]
    max_array_items: usize,
}

/// `peregrine inspect --json`: one object on stdout.
///
/// `metadata` maps each key to its value; arrays longer than `--max-array-items` become
/// `{"array_of": TYPE, "len": N, "first": [...]}`. Tensor `shape`s are in GGUF order
/// (`shape[0]` is the contiguous row length); `bytes` is the tensor's size in the file and
/// `offset` its absolute file offset (GGUF; 0 for safetensors).
#[derive(Serialize)]
pub struct InspectJson {
    path: String,
    format: &'static str,
    version: Option<u32>,
    file_bytes: u64,
    alignment: Option<u64>,
    architecture: Option<String>,
    config: Option<ConfigJson>,
    /// Why `config` is null, when the file has tensors but not a config we understand.
    config_error: Option<String>,
    metadata: OrderedMap,
    n_tensors: usize,
    tensors_bytes: u64,
    tensors: Vec<TensorJson>,
}

/// Key/value pairs serialized as a JSON object in file order.
struct OrderedMap(Vec<(String, Value)>);

impl Serialize for OrderedMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The model hyper-parameters.
#[derive(Serialize)]
struct ConfigJson {
    architecture: String,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    hidden_size: usize,
    ffn_size: usize,
    rope_base: f32,
    rope_scaling: Option<Value>,
    rms_norm_eps: f32,
    vocab_size: usize,
    context_length: usize,
    tied_embeddings: bool,
}

impl From<&ModelConfig> for ConfigJson {
    fn from(c: &ModelConfig) -> Self {
        let rope_scaling = c.rope_scaling.map(|s| match s {
            RopeScaling::Linear { factor } => json!({"type": "linear", "factor": factor}),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context_length } => json!({
                "type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_context_length": original_context_length,
            }),
        });
        ConfigJson {
            architecture: c.architecture.clone(),
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            hidden_size: c.hidden_size,
            ffn_size: c.ffn_size,
            rope_base: c.rope_base,
            rope_scaling,
            rms_norm_eps: c.rms_norm_eps,
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            tied_embeddings: c.tied_embeddings,
        }
    }
}

/// One tensor.
#[derive(Serialize)]
struct TensorJson {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<u64>,
    bytes: u64,
    offset: u64,
}

/// Runs the verb.
pub fn run(args: Args) -> anyhow::Result<()> {
    let is_safetensors = args.path.extension().is_some_and(|e| e == "safetensors");
    let report = if is_safetensors {
        inspect_safetensors(&args)?
    } else {
        inspect_gguf(&args)?
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_human(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

fn inspect_gguf(args: &Args) -> anyhow::Result<InspectJson> {
    let gguf = GgufFile::open(&args.path)?;
    let (config, config_error) = match gguf.model_config() {
        Ok(c) => (Some(ConfigJson::from(&c)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let metadata = OrderedMap(
        gguf.metadata()
            .iter()
            .map(|(k, v)| (k.clone(), summarise(v, args.max_array_items)))
            .collect(),
    );
    let tensors: Vec<TensorJson> = gguf
        .tensors()
        .iter()
        .map(|t| TensorJson {
            name: t.name.clone(),
            ty: t.ggml_type.name().to_string(),
            shape: t.dims.clone(),
            bytes: t.n_bytes,
            offset: t.offset,
        })
        .collect();
    Ok(InspectJson {
        path: args.path.display().to_string(),
        format: "gguf",
        version: Some(gguf.version()),
        file_bytes: gguf.file_len(),
        alignment: Some(gguf.alignment()),
        architecture: gguf.get_str("general.architecture")?.map(str::to_string),
        config,
        config_error,
        metadata,
        n_tensors: tensors.len(),
        tensors_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
    })
}

fn inspect_safetensors(args: &Args) -> anyhow::Result<InspectJson> {
    let file = SafetensorsFile::open(&args.path)?;
    let mut metadata = OrderedMap(Vec::new());
    if let Some(user) = file.user_metadata() {
        metadata.0 = user
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        metadata.0.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let mut tensors = Vec::new();
    for name in file.names() {
        let t = file.tensor(name)?;
        tensors.push(TensorJson {
            name: name.to_string(),
            ty: format!("{:?}", t.dtype).to_lowercase(),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            bytes: t.data.len() as u64,
            offset: 0,
        });
    }
    // A Hugging Face checkpoint keeps its hyper-parameters in config.json beside the weights.
    let config_path = args.path.with_file_name("config.json");
    let (config, config_error) = match std::fs::read_to_string(&config_path) {
        Err(_) => (None, None),
        Ok(text) => match ModelConfig::from_hf_config_json_at(&text, &config_path) {
            Ok(c) => (Some(ConfigJson::from(&c)), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    Ok(InspectJson {
        path: args.path.display().to_string(),
        format: "safetensors",
        version: None,
        file_bytes: std::fs::metadata(&args.path)?.len(),
        alignment: None,
        architecture: config.as_ref().map(|c| c.architecture.clone()),
        config,
        config_error,
        metadata,
        n_tensors: tensors.len(),
        tensors_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
    })
}

/// A metadata value as JSON, long arrays summarised.
fn summarise(value: &MetadataValue, max_items: usize) -> Value {
    match value {
        MetadataValue::U8(v) => json!(v),
        MetadataValue::I8(v) => json!(v),
        MetadataValue::U16(v) => json!(v),
        MetadataValue::I16(v) => json!(v),
        MetadataValue::U32(v) => json!(v),
        MetadataValue::I32(v) => json!(v),
        MetadataValue::U64(v) => json!(v),
        MetadataValue::I64(v) => json!(v),
        MetadataValue::F32(v) => json!(v),
        MetadataValue::F64(v) => json!(v),
        MetadataValue::Bool(v) => json!(v),
        MetadataValue::String(s) => json!(s),
        MetadataValue::Array(items) if items.len() <= max_items => {
            Value::Array(items.iter().map(|v| summarise(v, max_items)).collect())
        }
        MetadataValue::Array(items) => json!({
            "array_of": items.first().map_or("nothing", MetadataValue::type_name),
            "len": items.len(),
            "first": items.iter().take(max_items).map(|v| summarise(v, max_items)).collect::<Vec<_>>(),
        }),
        MetadataValue::StringArray(items) if items.len() <= max_items => {
            json!(items.iter().collect::<Vec<_>>())
        }
        MetadataValue::StringArray(items) => json!({
            "array_of": "string",
            "len": items.len(),
            "first": items.iter().take(max_items).collect::<Vec<_>>(),
        }),
    }
}

/// A JSON value on one line, long strings cut.
fn one_line(value: &Value) -> String {
    const MAX_CHARS: usize = 72;
    match value {
        Value::String(s) if s.chars().count() > MAX_CHARS => {
            let head: String = s.chars().take(MAX_CHARS).collect();
            format!("{}… ({} chars)", Value::String(head), s.chars().count())
        }
        Value::Object(o) if o.contains_key("array_of") => {
            let first: Vec<String> = o["first"]
                .as_array()
                .map(|a| a.iter().map(one_line).collect())
                .unwrap_or_default();
            format!(
                "[{} × {}] [{}, …]",
                o["array_of"].as_str().unwrap_or("?"),
                o["len"],
                first.join(", ")
            )
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(one_line).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

fn print_human(out: &mut impl std::io::Write, r: &InspectJson) -> std::io::Result<()> {
    let version = r.version.map_or(String::new(), |v| format!(" v{v}"));
    let alignment = r
        .alignment
        .map_or(String::new(), |a| format!(", alignment {a}"));
    writeln!(
        out,
        "file:          {} ({} B, {}{version}{alignment})",
        r.path, r.file_bytes, r.format
    )?;
    if let Some(arch) = &r.architecture {
        writeln!(out, "architecture:  {arch}")?;
    }
    if let Some(c) = &r.config {
        writeln!(out, "config:")?;
        let rope_scaling = c
            .rope_scaling
            .as_ref()
            .map_or("none".to_string(), Value::to_string);
        let rows: [(&str, String); 12] = [
            ("n_layers", c.n_layers.to_string()),
            ("n_heads", c.n_heads.to_string()),
            ("n_kv_heads", c.n_kv_heads.to_string()),
            ("head_dim", c.head_dim.to_string()),
            ("hidden_size", c.hidden_size.to_string()),
            ("ffn_size", c.ffn_size.to_string()),
            ("rope_base", c.rope_base.to_string()),
            ("rope_scaling", rope_scaling),
            ("rms_norm_eps", format!("{:e}", c.rms_norm_eps)),
            ("vocab_size", c.vocab_size.to_string()),
            ("context_length", c.context_length.to_string()),
            ("tied_embeddings", c.tied_embeddings.to_string()),
        ];
        for (k, v) in rows {
            writeln!(out, "  {k:<16} {v}")?;
        }
    }
    if let Some(e) = &r.config_error {
        writeln!(out, "config:        unavailable ({e})")?;
    }
    writeln!(out, "metadata ({} keys):", r.metadata.0.len())?;
    let key_width = r.metadata.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &r.metadata.0 {
        writeln!(out, "  {k:<key_width$} = {}", one_line(v))?;
    }
    writeln!(out, "tensors ({}, {} B):", r.n_tensors, r.tensors_bytes)?;
    let name_width = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let shapes: Vec<String> = r.tensors.iter().map(|t| format!("{:?}", t.shape)).collect();
    let shape_width = shapes.iter().map(String::len).max().unwrap_or(5).max(5);
    writeln!(
        out,
        "  {:<name_width$}  {:<5}  {:<shape_width$}  {:>12}",
        "name", "type", "shape", "bytes"
    )?;
    for (t, shape) in r.tensors.iter().zip(&shapes) {
        writeln!(
            out,
            "  {:<name_width$}  {:<5}  {:<shape_width$}  {:>12}",
            t.name, t.ty, shape, t.bytes
        )?;
    }
    Ok(())
}
