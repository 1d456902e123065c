//! Writes a trained EAGLE-3 head as the public checkpoints lay it out: every parameter in bf16
//! under its own name, `d2t` (int64) and `t2d` (bool) for the draft vocabulary, and string
//! metadata the inference loader reads (`rms_norm_eps`, `rope_theta`, `feature_layers`).

use crate::draft_vocab::DraftVocab;
use crate::{DistillError, Result};
use peregrine_train::Eagle3Head;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Writes `head` with `vocab`'s maps and `metadata` (the loader's keys are added here).
pub fn write_eagle3_head(
    path: &Path,
    head: &Eagle3Head,
    vocab: &DraftVocab,
    feature_layers: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let store = head.store();
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = store
        .ids()
        .map(|id| {
            let v = store.value(id);
            let bytes = v
                .data()
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect();
            (
                store.name(id).to_string(),
                Dtype::BF16,
                v.shape().dims().to_vec(),
                bytes,
            )
        })
        .collect();
    let d2t: Vec<u8> = vocab.d2t().iter().flat_map(|d| d.to_le_bytes()).collect();
    buffers.push(("d2t".into(), Dtype::I64, vec![vocab.len()], d2t));
    let t2d: Vec<u8> = vocab.t2d().iter().map(|&b| b as u8).collect();
    buffers.push(("t2d".into(), Dtype::BOOL, vec![vocab.to_draft.len()], t2d));

    let c = head.config();
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    meta.insert("eagle_version".into(), "3".into());
    meta.insert("rms_norm_eps".into(), c.rms_norm_eps.to_string());
    meta.insert("rope_theta".into(), c.rope_theta.to_string());
    meta.insert(
        "feature_layers".into(),
        feature_layers
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| DistillError::Data(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let io = |source| DistillError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| DistillError::Data(format!("{}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(io)
}
