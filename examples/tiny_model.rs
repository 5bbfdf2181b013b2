//! Writes a tiny random model (llama layout: config.json, safetensors,
//! tokenizer) to a directory, for end-to-end scripts that need a model the
//! embedded engine trains and samples in seconds (tests/sdk/). It shows the
//! path, not accuracy. Not part of the product binary.
//!
//! Usage: tiny_model DIR

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tiny_model DIR"))?;
    std::fs::create_dir_all(&dir)?;
    lathe_engine::tiny::write_tiny_model(std::path::Path::new(&dir), 2, 64, 7)?;
    println!("{dir}");
    Ok(())
}
