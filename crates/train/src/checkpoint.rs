//! Checkpoints in safetensors: full training state (resumes bit-exactly) and bf16 export of
//! parameters for inference.
//!
//! A checkpoint holds every parameter as f32 under its own name, the AdamW moments as
//! `adamw.m/<name>` and `adamw.v/<name>`, and in `__metadata__`: `format`
//! ([`CHECKPOINT_FORMAT`]), `step` (AdamW updates done), `adamw` and `schedule` (JSON; floats
//! round-trip exactly) and the caller's own string entries. Files are written to `<path>.tmp`
//! and renamed, so a crash never leaves a half-written checkpoint under the real name.

use crate::error::{Error, Result};
use crate::optim::{AdamW, AdamWConfig, LrSchedule};
use crate::params::{ParamId, ParamStore};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Value of the `format` metadata entry of a training checkpoint.
pub const CHECKPOINT_FORMAT: &str = "peregrine-train-checkpoint-v1";

const RESERVED: [&str; 4] = ["format", "step", "adamw", "schedule"];

/// Training state read back by [`load_checkpoint`].
#[derive(Debug)]
pub struct Resumed {
    /// The optimizer with its moments and step count.
    pub adam: AdamW,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// The caller's metadata entries (the reserved ones removed).
    pub metadata: BTreeMap<String, String>,
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_raw(shape: &[usize], data: &[f32]) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn st_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Safetensors {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn write(
    path: &Path,
    tensors: &BTreeMap<String, Raw>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    safetensors::serialize_to_file(tensors.iter(), Some(meta), &tmp)
        .map_err(|e| st_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn user_meta(meta: &BTreeMap<String, String>) -> Result<HashMap<String, String>> {
    if let Some(k) = meta.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(Error::Invalid {
            what: "checkpoint metadata",
            reason: format!("key {k:?} is reserved ({RESERVED:?})"),
        });
    }
    Ok(meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Writes parameters, AdamW state and schedule to `path` with the caller's string `metadata`.
pub fn save_checkpoint(
    path: &Path,
    store: &ParamStore,
    adam: &AdamW,
    schedule: &LrSchedule,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta = user_meta(metadata)?;
    let c = adam.config();
    meta.insert("format".into(), CHECKPOINT_FORMAT.into());
    meta.insert("step".into(), adam.n_steps().to_string());
    meta.insert(
        "adamw".into(),
        serde_json::json!({"beta1": c.beta1, "beta2": c.beta2, "eps": c.eps, "weight_decay": c.weight_decay}).to_string(),
    );
    meta.insert(
        "schedule".into(),
        serde_json::json!({"peak": schedule.peak, "floor": schedule.floor, "warmup_steps": schedule.warmup_steps, "total_steps": schedule.total_steps}).to_string(),
    );
    let mut tensors = BTreeMap::new();
    for id in store.ids() {
        let (name, value) = (store.name(id), store.value(id));
        let (m, v) = adam.moments(id);
        tensors.insert(
            name.to_string(),
            f32_raw(value.shape().dims(), value.data()),
        );
        tensors.insert(format!("adamw.m/{name}"), f32_raw(value.shape().dims(), m));
        tensors.insert(format!("adamw.v/{name}"), f32_raw(value.shape().dims(), v));
    }
    write(path, &tensors, meta)
}

fn json_f32(v: &serde_json::Value, key: &str, path: &Path) -> Result<f32> {
    v.get(key)
        .and_then(|x| x.as_f64())
        .map(|x| x as f32)
        .ok_or_else(|| st_err(path, format!("metadata lacks number {key:?}")))
}

fn json_u64(v: &serde_json::Value, key: &str, path: &Path) -> Result<u64> {
    v.get(key)
        .and_then(|x| x.as_u64())
        .ok_or_else(|| st_err(path, format!("metadata lacks integer {key:?}")))
}

/// Reads a tensor of `store`'s shape for `id` as f32 (from f32, bf16 or f16 data).
fn read_tensor(st: &SafeTensors<'_>, name: &str, want: &[usize], path: &Path) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .map_err(|_| st_err(path, format!("tensor {name:?} missing")))?;
    if t.shape() != want {
        return Err(st_err(
            path,
            format!(
                "tensor {name:?} has shape {:?}, the model wants {want:?}",
                t.shape()
            ),
        ));
    }
    let b = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(st_err(
                path,
                format!("tensor {name:?} has dtype {other:?}, want F32, BF16 or F16"),
            ))
        }
    })
}

fn metadata_of(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| st_err(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Restores a checkpoint into `store`, which must hold parameters of the same names and
/// shapes (built by the same model code); returns the optimizer, schedule and metadata.
/// Values and moments are restored bit for bit.
pub fn load_checkpoint(path: &Path, store: &mut ParamStore) -> Result<Resumed> {
    let bytes = read(path)?;
    let mut meta = metadata_of(&bytes, path)?;
    if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(st_err(
            path,
            format!(
                "not a training checkpoint (format {:?}, want {CHECKPOINT_FORMAT:?})",
                meta.get("format")
            ),
        ));
    }
    let parse = |key: &str| -> Result<serde_json::Value> {
        let s = meta
            .get(key)
            .ok_or_else(|| st_err(path, format!("metadata lacks {key:?}")))?;
        serde_json::from_str(s).map_err(|e| st_err(path, format!("metadata {key:?}: {e}")))
    };
    let (a, s) = (parse("adamw")?, parse("schedule")?);
    let config = AdamWConfig {
        beta1: json_f32(&a, "beta1", path)?,
        beta2: json_f32(&a, "beta2", path)?,
        eps: json_f32(&a, "eps", path)?,
        weight_decay: json_f32(&a, "weight_decay", path)?,
    };
    let schedule = LrSchedule {
        peak: json_f32(&s, "peak", path)?,
        floor: json_f32(&s, "floor", path)?,
        warmup_steps: json_u64(&s, "warmup_steps", path)?,
        total_steps: json_u64(&s, "total_steps", path)?,
    };
    let step: u64 = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| st_err(path, "metadata lacks an integer \"step\""))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, e))?;
    let ids: Vec<ParamId> = store.ids().collect();
    let (mut ms, mut vs) = (Vec::new(), Vec::new());
    for id in ids {
        let name = store.name(id).to_string();
        let shape = store.value(id).shape().dims().to_vec();
        let value = read_tensor(&st, &name, &shape, path)?;
        ms.push(read_tensor(&st, &format!("adamw.m/{name}"), &shape, path)?);
        vs.push(read_tensor(&st, &format!("adamw.v/{name}"), &shape, path)?);
        store.set_value(id, &value)?;
    }
    let adam = AdamW::from_parts(config, ms, vs, step)?;
    for k in RESERVED {
        meta.remove(k);
    }
    Ok(Resumed {
        adam,
        schedule,
        metadata: meta.into_iter().collect(),
    })
}

/// Writes every parameter of `store` as bf16 (round to nearest even) under its own name, with
/// string `metadata`: the file an inference loader reads.
pub fn export_bf16(
    path: &Path,
    store: &ParamStore,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for id in store.ids() {
        let v = store.value(id);
        tensors.insert(
            store.name(id).to_string(),
            Raw {
                dtype: Dtype::BF16,
                shape: v.shape().dims().to_vec(),
                bytes: v
                    .data()
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
            },
        );
    }
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write(path, &tensors, meta)
}

/// Loads every parameter of `store` from a safetensors file by name (f32, bf16 or f16; other
/// tensors in the file are ignored) and returns the file's metadata.
pub fn load_params(path: &Path, store: &mut ParamStore) -> Result<BTreeMap<String, String>> {
    let bytes = read(path)?;
    let meta = metadata_of(&bytes, path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, e))?;
    let ids: Vec<ParamId> = store.ids().collect();
    for id in ids {
        let shape = store.value(id).shape().dims().to_vec();
        let value = read_tensor(&st, store.name(id), &shape, path)?;
        store.set_value(id, &value)?;
    }
    Ok(meta.into_iter().collect())
}
