//! Base models kept in the blob store: which files make a model, and the
//! ingest that streams them into blobs while checking them as registration
//! checks a path (config.json, safetensors and GGUF headers), on blocking
//! threads fed the same chunks, so no file is ever held whole.
//!
//! Architecture invariant: what the ingest hands back is staged, not
//! committed: the caller commits the blobs and records the model under the
//! blobs' gate, or nothing is kept; a failed ingest has already removed
//! what it staged.

use std::io::Read;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::gguf;
use super::inspect::{read_config, safetensors_parameters};
use super::model::{BaseModelInfo, ModelFile};
use crate::blobs::{BlobWriter, Blobs, StagedBlob};
use crate::error::{Error, Result};

/// One step of a model's files as they arrive: a file starts (its name
/// inside the model and its size), then its bytes.
#[derive(Debug)]
pub enum Piece {
    File { name: String, bytes: u64 },
    Chunk(Bytes),
}

/// Files of a Hugging Face directory the engine reads besides config.json,
/// tokenizer.json and the weights.
pub const HF_EXTRAS: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Most files a stored model may have (a 70B model has about 30 shards).
const MAX_FILES: usize = 256;

/// What a file is to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Config,
    Tokenizer,
    Extra,
    Weights,
    Gguf,
}

fn role(name: &str) -> Option<Role> {
    let plain = !name.is_empty() && name.len() <= 255 && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if !plain {
        return None;
    }
    match name {
        "config.json" => Some(Role::Config),
        "tokenizer.json" => Some(Role::Tokenizer),
        n if HF_EXTRAS.contains(&n) => Some(Role::Extra),
        n if n.ends_with(".safetensors") => Some(Role::Weights),
        n if n.ends_with(".gguf") => Some(Role::Gguf),
        _ => None,
    }
}

/// The model files among a directory's file names, as registration reads
/// a directory: a Hugging Face directory's (it has config.json) or its one
/// `.gguf` file; other files (a README, `.gitattributes`) are not part of
/// the model. Used by the CLI's upload and by imports alike.
pub fn select(names: &[String]) -> std::result::Result<Vec<String>, String> {
    let mut picked: Vec<String> = if names.iter().any(|n| n == "config.json") {
        names
            .iter()
            .filter(|n| {
                matches!(
                    role(n),
                    Some(Role::Config | Role::Tokenizer | Role::Extra | Role::Weights)
                )
            })
            .cloned()
            .collect()
    } else {
        let ggufs: Vec<String> = names.iter().filter(|n| role(n) == Some(Role::Gguf)).cloned().collect();
        match ggufs.len() {
            0 => return Err("neither config.json (Hugging Face layout) nor a .gguf file".into()),
            1 => ggufs,
            _ => return Err("several .gguf files; name the one to use".into()),
        }
    };
    picked.sort();
    Ok(picked)
}

/// Streams `pieces` into staged blobs, checking each file as it passes;
/// returns what registration would find and the staged blobs (in the
/// order of `info.files`). On any error, everything staged is removed
/// before it returns. Problems are reported under `field`, naming the file.
pub(super) async fn ingest<S>(blobs: &Blobs, field: &'static str, pieces: S) -> Result<(BaseModelInfo, Vec<StagedBlob>)>
where
    S: Stream<Item = Result<Piece>> + Unpin,
{
    let mut done: Vec<Done> = Vec::new();
    let mut current: Option<Current> = None;
    let result = receive(blobs, field, pieces, &mut done, &mut current).await;
    let outcome = match result {
        Ok(()) => judge(field, &done),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(info) => Ok((info, done.into_iter().map(|d| d.blob).collect())),
        Err(e) => {
            if let Some(c) = current {
                c.abort().await;
            }
            for d in done {
                d.blob.discard().await;
            }
            Err(e)
        }
    }
}

async fn receive<S>(
    blobs: &Blobs,
    field: &'static str,
    mut pieces: S,
    done: &mut Vec<Done>,
    current: &mut Option<Current>,
) -> Result<()>
where
    S: Stream<Item = Result<Piece>> + Unpin,
{
    while let Some(piece) = pieces.next().await {
        match piece? {
            Piece::File { name, bytes } => {
                if let Some(c) = current.take() {
                    done.push(c.finish(field).await?);
                }
                let Some(role) = role(&name) else {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "{name:?} is not a model file: a model is one .gguf file, or config.json, \
                             tokenizer.json and *.safetensors (with {})",
                            HF_EXTRAS.join(", ")
                        ),
                    ));
                };
                if done.iter().any(|d| d.file.name == name) {
                    return Err(Error::invalid(field, format!("{name} is sent twice")));
                }
                if done.len() >= MAX_FILES {
                    return Err(Error::invalid(field, format!("a model has at most {MAX_FILES} files")));
                }
                *current = Some(Current::start(blobs, name, role, bytes).await?);
            }
            Piece::Chunk(chunk) => {
                let Some(c) = current.as_mut() else {
                    return Err(Error::invalid(field, "bytes came before the file they belong to"));
                };
                c.push(field, chunk).await?;
            }
        }
    }
    if let Some(c) = current.take() {
        done.push(c.finish(field).await?);
    }
    Ok(())
}

/// What a file's header said.
#[derive(Debug)]
enum Fact {
    Nothing,
    Config { architecture: String, context_length: u64 },
    Parameters(u64),
    Gguf(gguf::Summary),
}

struct Done {
    file: ModelFile,
    role: Role,
    fact: Fact,
    blob: StagedBlob,
}

/// The file being received: its blob and, for a file whose header tells
/// something, a blocking thread reading the same chunks until it knows.
struct Current {
    name: String,
    role: Role,
    declared: u64,
    writer: BlobWriter,
    to_inspector: Option<mpsc::Sender<Bytes>>,
    inspector: Option<JoinHandle<std::result::Result<Fact, String>>>,
}

impl Current {
    async fn start(blobs: &Blobs, name: String, role: Role, declared: u64) -> Result<Self> {
        let writer = blobs.writer().await?;
        let (to_inspector, inspector) = match role {
            Role::Config | Role::Weights | Role::Gguf => {
                // A few chunks ahead at most: the header is read as it comes.
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                let file = name.clone();
                let task = tokio::task::spawn_blocking(move || inspect(role, &file, ChannelReader::new(rx)));
                (Some(tx), Some(task))
            }
            Role::Tokenizer | Role::Extra => (None, None),
        };
        Ok(Self {
            name,
            role,
            declared,
            writer,
            to_inspector,
            inspector,
        })
    }

    async fn push(&mut self, field: &'static str, chunk: Bytes) -> Result<()> {
        if self.writer.size() + chunk.len() as u64 > self.declared {
            return Err(Error::invalid(
                field,
                format!(
                    "{}: more bytes than the {} its header announced",
                    self.name, self.declared
                ),
            ));
        }
        // The inspector lets go once it has read the header; the rest of
        // the file only goes to the blob.
        if let Some(tx) = &self.to_inspector
            && tx.send(chunk.clone()).await.is_err()
        {
            self.to_inspector = None;
        }
        self.writer.put(chunk).await?;
        Ok(())
    }

    async fn finish(mut self, field: &'static str) -> Result<Done> {
        if self.writer.size() != self.declared {
            let message = format!(
                "{}: {} bytes where its header announced {}",
                self.name,
                self.writer.size(),
                self.declared
            );
            self.abort().await;
            return Err(Error::invalid(field, message));
        }
        self.to_inspector = None;
        let fact = match self.inspector.take() {
            None => Ok(Fact::Nothing),
            Some(task) => task
                .await
                .map_err(|e| Error::Internal(format!("model inspection failed: {e}")))?,
        };
        let fact = match fact {
            Ok(fact) => fact,
            Err(message) => {
                self.writer.abort().await;
                return Err(Error::invalid(field, message));
            }
        };
        let blob = self.writer.finish().await?;
        Ok(Done {
            file: ModelFile {
                name: self.name,
                sha256: blob.sha256.clone(),
                bytes: blob.size,
            },
            role: self.role,
            fact,
            blob,
        })
    }

    async fn abort(self) {
        if let Some(task) = self.inspector {
            task.abort();
        }
        self.writer.abort().await;
    }
}

/// Reads one file's header; every message names the file.
fn inspect(role: Role, name: &str, reader: ChannelReader) -> std::result::Result<Fact, String> {
    match role {
        Role::Config => {
            let (architecture, context_length) =
                read_config(reader).map_err(|e| if e.starts_with(name) { e } else { format!("{name}: {e}") })?;
            Ok(Fact::Config {
                architecture,
                context_length,
            })
        }
        Role::Weights => Ok(Fact::Parameters(safetensors_parameters(reader, name)?)),
        Role::Gguf => {
            let summary = gguf::summary_from(std::io::BufReader::new(reader)).map_err(|e| format!("{name}: {e}"))?;
            if !lathe_engine::SUPPORTED.contains(&summary.architecture.as_str()) {
                return Err(format!(
                    "{name}: architecture {:?} is not supported; supported: {}",
                    summary.architecture,
                    lathe_engine::SUPPORTED.join(", ")
                ));
            }
            Ok(Fact::Gguf(summary))
        }
        Role::Tokenizer | Role::Extra => Ok(Fact::Nothing),
    }
}

/// What the files add up to: one GGUF file alone, or a Hugging Face
/// directory with its config, tokenizer and weights.
fn judge(field: &'static str, done: &[Done]) -> Result<BaseModelInfo> {
    let bad = |message: &str| Error::invalid(field, message);
    let files: Vec<ModelFile> = done.iter().map(|d| d.file.clone()).collect();
    if let Some(gguf) = done.iter().find(|d| d.role == Role::Gguf) {
        if done.len() > 1 {
            return Err(bad(
                "a GGUF model is one .gguf file alone; send a Hugging Face directory's files without it",
            ));
        }
        let Fact::Gguf(summary) = &gguf.fact else {
            return Err(Error::Internal("a GGUF file without its summary".into()));
        };
        return Ok(BaseModelInfo {
            path: String::new(),
            format: "gguf".into(),
            architecture: summary.architecture.clone(),
            parameters: summary.parameters,
            context_length: summary.context_length,
            files,
        });
    }
    if done.is_empty() {
        return Err(bad(
            "no files: send one .gguf file, or config.json, tokenizer.json and *.safetensors",
        ));
    }
    let Some((architecture, context_length)) = done.iter().find_map(|d| match &d.fact {
        Fact::Config {
            architecture,
            context_length,
        } => Some((architecture.clone(), *context_length)),
        _ => None,
    }) else {
        return Err(bad("the model has no config.json"));
    };
    if !done.iter().any(|d| d.role == Role::Tokenizer) {
        return Err(bad("the model has no tokenizer.json"));
    }
    let parameters: u64 = done
        .iter()
        .filter_map(|d| match d.fact {
            Fact::Parameters(n) => Some(n),
            _ => None,
        })
        .sum();
    if !done.iter().any(|d| d.role == Role::Weights) {
        return Err(bad("the model has no .safetensors weights"));
    }
    Ok(BaseModelInfo {
        path: String::new(),
        format: "safetensors".into(),
        architecture,
        parameters,
        context_length,
        files,
    })
}

/// A file's bytes as they arrive, for a blocking reader; the end of the
/// channel is the end of the file.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    buf: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self { rx, buf: Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.buf = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_directory_gives_its_model_files_only() {
        assert_eq!(
            select(&names(&[
                "README.md",
                "model-00002-of-00002.safetensors",
                "config.json",
                ".gitattributes",
                "tokenizer.json",
                "generation_config.json",
                "model-00001-of-00002.safetensors",
                "model.Q4.gguf",
            ])),
            Ok(names(&[
                "config.json",
                "generation_config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "tokenizer.json",
            ]))
        );
        assert_eq!(select(&names(&["a.gguf", "notes.txt"])), Ok(names(&["a.gguf"])));
        assert!(select(&names(&["a.gguf", "b.gguf"])).unwrap_err().contains("several"));
        assert!(select(&names(&["weights.bin"])).unwrap_err().contains("neither"));
    }

    #[test]
    fn only_plain_model_file_names_have_a_role() {
        for bad in [
            "../config.json",
            "a/b.safetensors",
            ".hidden.gguf",
            "model.bin",
            "",
            "x\\y.gguf",
        ] {
            assert_eq!(role(bad), None, "{bad}");
        }
        assert_eq!(role("model-00001-of-00003.safetensors"), Some(Role::Weights));
        assert_eq!(role("chat_template.jinja"), Some(Role::Extra));
    }
}
