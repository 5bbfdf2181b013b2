//! Just enough of the GGUF format (v2 and v3) to describe a model: the
//! architecture, context length and parameter count, read from the header
//! without touching tensor data.

use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, PartialEq)]
pub struct Summary {
    pub architecture: String,
    pub context_length: u64,
    pub parameters: u64,
}

struct Reader<R: Read> {
    inner: R,
}

type R<T> = std::result::Result<T, String>;

impl<T: Read> Reader<T> {
    fn bytes<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|_| "truncated GGUF header".to_string())?;
        Ok(b)
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn skip(&mut self, n: u64) -> R<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink()).map_err(|e| e.to_string())?;
        if copied == n {
            Ok(())
        } else {
            Err("truncated GGUF header".into())
        }
    }
    fn string(&mut self) -> R<String> {
        let len = self.u64()?;
        if len > 1 << 24 {
            return Err(format!("implausible GGUF string of {len} bytes"));
        }
        let mut b = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut b)
            .map_err(|_| "truncated GGUF header".to_string())?;
        String::from_utf8(b).map_err(|_| "GGUF string is not UTF-8".into())
    }

    /// Reads a value of `ty`; numbers come back as u64 (when whole and
    /// non-negative), strings as strings, everything else is skipped.
    fn value(&mut self, ty: u32) -> R<Value> {
        Ok(match ty {
            0 | 1 | 7 => Value::Num(self.bytes::<1>()?[0] as u64),
            2 | 3 => Value::Num(u16::from_le_bytes(self.bytes()?) as u64),
            4 => Value::Num(self.u32()? as u64),
            5 => Value::Num(i32::from_le_bytes(self.bytes()?).max(0) as u64),
            6 => {
                self.bytes::<4>()?;
                Value::Other
            }
            8 => Value::Str(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                match elem {
                    0 | 1 | 7 => self.skip(n)?,
                    2 | 3 => self.skip(n * 2)?,
                    4..=6 => self.skip(n * 4)?,
                    10..=12 => self.skip(n * 8)?,
                    8 => {
                        for _ in 0..n {
                            let len = self.u64()?;
                            self.skip(len)?;
                        }
                    }
                    _ => return Err(format!("unsupported GGUF array element type {elem}")),
                }
                Value::Other
            }
            10 => Value::Num(self.u64()?),
            11 => Value::Num(i64::from_le_bytes(self.bytes()?).max(0) as u64),
            12 => {
                self.bytes::<8>()?;
                Value::Other
            }
            _ => return Err(format!("unknown GGUF value type {ty}")),
        })
    }
}

enum Value {
    Num(u64),
    Str(String),
    Other,
}

pub fn summary(path: &Path) -> R<Summary> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    summary_from(BufReader::new(file))
}

/// The summary from a file's first bytes, read as far as the header goes
/// (an upload's stream, say): nothing after the tensor table is read.
pub fn summary_from(inner: impl Read) -> R<Summary> {
    let mut r = Reader { inner };
    if &r.bytes::<4>()? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    let tensors = r.u64()?;
    let kvs = r.u64()?;
    let mut architecture = None;
    let mut lengths = Vec::new();
    for _ in 0..kvs {
        let key = r.string()?;
        let ty = r.u32()?;
        match (key.as_str(), r.value(ty)?) {
            ("general.architecture", Value::Str(a)) => architecture = Some(a),
            (k, Value::Num(n)) if k.ends_with(".context_length") => lengths.push((k.to_string(), n)),
            _ => {}
        }
    }
    let architecture = architecture.ok_or("GGUF metadata has no general.architecture")?;
    let context_length = lengths
        .iter()
        .find(|(k, _)| *k == format!("{architecture}.context_length"))
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let mut parameters = 0u64;
    for _ in 0..tensors {
        r.string()?;
        let dims = r.u32()?;
        if dims > 8 {
            return Err(format!("implausible tensor with {dims} dimensions"));
        }
        let mut n = 1u64;
        for _ in 0..dims {
            n = n.saturating_mul(r.u64()?);
        }
        r.u32()?; // type
        r.u64()?; // offset
        parameters = parameters.saturating_add(n);
    }
    Ok(Summary {
        architecture,
        context_length,
        parameters,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal GGUF v3 file: metadata, one tensor header, no data needed.
    pub fn write_tiny(path: &Path, arch: &str, ctx: u32, shape: &[u64]) {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(3u64.to_le_bytes()); // kvs
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, arch);
        s(&mut b, &format!("{arch}.context_length"));
        b.extend(4u32.to_le_bytes());
        b.extend(ctx.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "<s>");
        s(&mut b, "hello");
        s(&mut b, "token_embd.weight");
        b.extend((shape.len() as u32).to_le_bytes());
        for d in shape {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn reads_architecture_context_and_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        write_tiny(&p, "llama", 8192, &[16, 4]);
        assert_eq!(
            summary(&p).unwrap(),
            Summary {
                architecture: "llama".into(),
                context_length: 8192,
                parameters: 64
            }
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        write_tiny(&p, "llama", 8192, &[16, 4]);
        let bytes = std::fs::read(&p).unwrap();
        for cut in [0, 3, 10, 30, bytes.len() - 5] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(summary(&p).is_err(), "cut at {cut}");
        }
        std::fs::write(&p, b"PK\x03\x04 not gguf").unwrap();
        assert!(summary(&p).unwrap_err().contains("magic"));
    }
}
