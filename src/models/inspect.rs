//! Inspection of a base model's files before registration: reads headers
//! and small config files only (config.json, safetensors headers, GGUF
//! metadata), never weights, so it is fast and memory-flat whatever the
//! model's size.

use std::path::{Path, PathBuf};

use super::gguf;
use super::model::BaseModelInfo;
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

/// Describes the model at `path`: a Hugging Face directory (config.json,
/// *.safetensors, tokenizer.json) or a GGUF file (or a directory holding
/// exactly one).
pub fn inspect(path: &Path) -> Result<BaseModelInfo> {
    let path = std::fs::canonicalize(path).map_err(|e| bad("path", format!("{}: {e}", path.display())))?;
    if path.is_file() {
        return inspect_gguf(&path);
    }
    if path.join("config.json").is_file() {
        return inspect_hf(&path);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&path)
        .map_err(|e| bad("path", format!("{}: {e}", path.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => inspect_gguf(one),
        [] => Err(bad(
            "path",
            format!(
                "{} has neither config.json (Hugging Face layout) nor a .gguf file",
                path.display()
            ),
        )),
        _ => Err(bad(
            "path",
            format!("{} holds several .gguf files; name the one to use", path.display()),
        )),
    }
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

fn inspect_hf(dir: &Path) -> Result<BaseModelInfo> {
    let text =
        std::fs::read_to_string(dir.join("config.json")).map_err(|e| bad("path", format!("config.json: {e}")))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad("path", format!("config.json is not JSON: {e}")))?;
    let arch = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("path", "config.json has no model_type"))?
        .to_string();
    supported(&arch)?;
    if !dir.join("tokenizer.json").is_file() {
        return Err(bad("path", format!("{} has no tokenizer.json", dir.display())));
    }
    let mut parameters = 0;
    let mut shards = 0;
    for entry in std::fs::read_dir(dir)
        .map_err(|e| bad("path", e.to_string()))?
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            parameters += safetensors_parameters(&p)?;
            shards += 1;
        }
    }
    if shards == 0 {
        return Err(bad("path", format!("{} has no .safetensors weights", dir.display())));
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
fn safetensors_parameters(path: &Path) -> Result<u64> {
    use std::io::Read;
    let name = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| bad("path", format!("{name}: {e}")))?;
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

fn inspect_gguf(path: &Path) -> Result<BaseModelInfo> {
    let summary = gguf::summary(path).map_err(|e| bad("path", format!("{}: {e}", path.display())))?;
    supported(&summary.architecture)?;
    Ok(BaseModelInfo {
        path: path.display().to_string(),
        format: "gguf".into(),
        architecture: summary.architecture,
        parameters: summary.parameters,
        context_length: summary.context_length,
    })
}
