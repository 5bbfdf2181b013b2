//! Inspection of a base model's files before registration: reads headers
//! and small config files only (config.json, safetensors headers, GGUF
//! metadata), never weights, so it is fast and memory-flat whatever the
//! model's size.

use std::path::{Path, PathBuf};

use super::gguf;
use super::model::BaseModelInfo;
use super::roots::{ModelRoots, OUTSIDE};
use crate::error::{Error, FieldViolation, Result};
use lathe_engine::SUPPORTED;

fn bad(field: &str, message: impl Into<String>) -> Error {
    Error::InvalidArgument(vec![FieldViolation::new(field, message)])
}

/// Checks a registration name: 1 to 64 of [a-zA-Z0-9._-].
pub fn check_name(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad("name", "1 to 64 characters of letters, digits, '.', '_' and '-'"))
    }
}

/// Describes the model at `path`, which `roots` resolved: a Hugging Face
/// directory (config.json, *.safetensors, tokenizer.json) or a GGUF file
/// (or a directory holding exactly one). Every file read must resolve
/// under the roots too, so a symlink inside a model directory cannot reach
/// out of them. Messages name files by their name inside the model, never
/// by the server's path.
pub fn inspect(path: &Path, roots: &ModelRoots) -> Result<BaseModelInfo> {
    if path.is_file() {
        return inspect_gguf(path, roots);
    }
    let config = path.join("config.json");
    if config.is_file() {
        return inspect_hf(path, roots);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|_| bad("path", OUTSIDE))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => inspect_gguf(&within(one, roots)?, roots),
        [] => Err(bad(
            "path",
            "the directory has neither config.json (Hugging Face layout) nor a .gguf file",
        )),
        _ => Err(bad(
            "path",
            "the directory holds several .gguf files; name the one to use",
        )),
    }
}

/// `file` resolved, when it stays under the roots; the uniform refusal
/// otherwise.
fn within(file: &Path, roots: &ModelRoots) -> Result<PathBuf> {
    std::fs::canonicalize(file)
        .ok()
        .filter(|f| roots.contains(f))
        .ok_or_else(|| bad("path", OUTSIDE))
}

/// A file's name for messages: the part the client can know.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn supported(arch: &str) -> Result<()> {
    if SUPPORTED.contains(&arch) {
        Ok(())
    } else {
        Err(bad(
            "path",
            format!(
                "architecture {arch:?} is not supported; supported: {}",
                SUPPORTED.join(", ")
            ),
        ))
    }
}

fn inspect_hf(dir: &Path, roots: &ModelRoots) -> Result<BaseModelInfo> {
    let config = within(&dir.join("config.json"), roots)?;
    let text = std::fs::read_to_string(config).map_err(|_| bad("path", "config.json cannot be read"))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad("path", format!("config.json is not JSON: {e}")))?;
    let arch = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("path", "config.json has no model_type"))?
        .to_string();
    supported(&arch)?;
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(bad("path", "the directory has no tokenizer.json"));
    }
    within(&tokenizer, roots)?;
    let mut parameters = 0;
    let mut shards = 0;
    for entry in std::fs::read_dir(dir).map_err(|_| bad("path", OUTSIDE))?.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            parameters += safetensors_parameters(&within(&p, roots)?, &file_name(&p))?;
            shards += 1;
        }
    }
    if shards == 0 {
        return Err(bad("path", "the directory has no .safetensors weights"));
    }
    Ok(BaseModelInfo {
        path: dir.display().to_string(),
        format: "safetensors".into(),
        architecture: arch,
        parameters,
        context_length: config
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
    })
}

/// Parameter count from a safetensors header: 8 bytes of little-endian
/// header length, then a JSON map of tensor name to dtype, shape, offsets.
fn safetensors_parameters(path: &Path, name: &str) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|_| bad("path", format!("{name} cannot be read")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("path", format!("{name} is not a safetensors file")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(
            "path",
            format!("{name}: implausible safetensors header of {len} bytes"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| bad("path", format!("{name}: truncated safetensors header")))?;
    // serde_json's message says where, never what, so no file content travels.
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad("path", format!("{name}: bad safetensors header: {e}")))?;
    Ok(header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(_, v)| {
            v.get("shape")
                .and_then(|s| s.as_array())
                .map(|dims| dims.iter().map(|d| d.as_u64().unwrap_or(0)).product::<u64>())
                .unwrap_or(0)
        })
        .sum())
}

fn inspect_gguf(path: &Path, roots: &ModelRoots) -> Result<BaseModelInfo> {
    let path = within(path, roots)?;
    let summary = gguf::summary(&path).map_err(|e| bad("path", format!("{}: {e}", file_name(&path))))?;
    supported(&summary.architecture)?;
    Ok(BaseModelInfo {
        path: path.display().to_string(),
        format: "gguf".into(),
        architecture: summary.architecture,
        parameters: summary.parameters,
        context_length: summary.context_length,
    })
}
