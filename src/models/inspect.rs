//! Inspection of a base model's files before registration: reads headers
//! and small config files only (config.json, safetensors headers, GGUF
//! metadata), never weights, so it is fast and memory-flat whatever the
//! model's size.

use std::io::Read;
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

/// The most of a config.json that is read: real ones are a few KiB.
pub(super) const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The most of a safetensors header that is read.
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

fn supported(arch: &str) -> std::result::Result<(), String> {
    if SUPPORTED.contains(&arch) {
        Ok(())
    } else {
        Err(format!(
            "architecture {arch:?} is not supported; supported: {}",
            SUPPORTED.join(", ")
        ))
    }
}

/// config.json's architecture, which must be one the engine runs, and
/// context length.
pub(super) fn read_config(reader: impl Read) -> std::result::Result<(String, u64), String> {
    let mut text = Vec::new();
    reader
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|_| "config.json cannot be read".to_string())?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("config.json is over {} KiB", MAX_CONFIG_BYTES >> 10));
    }
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("config.json is not JSON: {e}"))?;
    let arch = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or("config.json has no model_type")?
        .to_string();
    supported(&arch)?;
    let context = config
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    Ok((arch, context))
}

fn inspect_hf(dir: &Path, roots: &ModelRoots) -> Result<BaseModelInfo> {
    let config = within(&dir.join("config.json"), roots)?;
    let file = std::fs::File::open(config).map_err(|_| bad("path", "config.json cannot be read"))?;
    let (arch, context_length) = read_config(file).map_err(|e| bad("path", e))?;
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
            let name = file_name(&p);
            let f =
                std::fs::File::open(within(&p, roots)?).map_err(|_| bad("path", format!("{name} cannot be read")))?;
            parameters += safetensors_parameters(f, &name).map_err(|e| bad("path", e))?;
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
        context_length,
        files: Vec::new(),
    })
}

/// Parameter count from a safetensors header: 8 bytes of little-endian
/// header length, then a JSON map of tensor name to dtype, shape, offsets.
/// Reads the header only.
pub(super) fn safetensors_parameters(mut f: impl Read, name: &str) -> std::result::Result<u64, String> {
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| format!("{name} is not a safetensors file"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_SAFETENSORS_HEADER {
        return Err(format!("{name}: implausible safetensors header of {len} bytes"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| format!("{name}: truncated safetensors header"))?;
    // serde_json's message says where, never what, so no file content travels.
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("{name}: bad safetensors header: {e}"))?;
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
    supported(&summary.architecture).map_err(|e| bad("path", e))?;
    Ok(BaseModelInfo {
        path: path.display().to_string(),
        format: "gguf".into(),
        architecture: summary.architecture,
        parameters: summary.parameters,
        context_length: summary.context_length,
        files: Vec::new(),
    })
}
