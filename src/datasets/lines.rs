//! Reading a stored dataset back row by row, in bounded memory.

use std::time::Duration;

use tokio::runtime::Handle;

use crate::blobs::Blobs;
use crate::error::Result;

const READ_CHUNK: u64 = 1 << 20;

/// Calls `f` with the index of every occurrence of `byte` in `data`, in
/// order (SIMD, through `memchr`).
#[inline]
pub(crate) fn for_each_byte(data: &[u8], byte: u8, f: impl FnMut(usize)) {
    memchr::memchr_iter(byte, data).for_each(f);
}

/// The non-blank lines of a stored blob, without line terminators or a
/// leading BOM: the rows the validator counted. For blocking threads only
/// (it drives async reads with `Handle::block_on`).
pub struct LineReader<'a> {
    handle: &'a Handle,
    blobs: &'a Blobs,
    sha256: &'a str,
    size: u64,
    offset: u64,
    buf: Vec<u8>,
    start: usize,
    failed: bool,
}

/// How long a read waits out an object store that cannot be reached
/// before it fails (`Error::unavailable`).
const OUTAGE_PATIENCE: Duration = Duration::from_secs(600);

impl<'a> LineReader<'a> {
    pub fn new(handle: &'a Handle, blobs: &'a Blobs, sha256: &'a str, size: u64) -> Self {
        Self {
            handle,
            blobs,
            sha256,
            size,
            offset: 0,
            buf: Vec::new(),
            start: 0,
            failed: false,
        }
    }

    /// Reads `range`, waiting out an outage of the object store (`outage`,
    /// up to `OUTAGE_PATIENCE`; this runs on a blocking thread).
    fn read(&self, range: std::ops::Range<u64>) -> Result<bytes::Bytes> {
        self.handle.block_on(async {
            crate::ride_out!(
                tokio::time::sleep(OUTAGE_PATIENCE),
                &crate::outage::Quietly,
                self.blobs.read_range(self.sha256, range.clone())
            )
        })
    }

    fn fill(&mut self) -> Result<bool> {
        if self.offset >= self.size {
            return Ok(false);
        }
        let end = (self.offset + READ_CHUNK).min(self.size);
        let bytes = self.read(self.offset..end)?;
        self.buf.drain(..self.start);
        self.start = 0;
        if self.offset == 0 && bytes.starts_with(b"\xEF\xBB\xBF") {
            self.buf.extend_from_slice(&bytes[3..]);
        } else {
            self.buf.extend_from_slice(&bytes);
        }
        self.offset = end;
        Ok(true)
    }
}

impl Iterator for LineReader<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[self.start..]) {
                let line = trim_cr(&self.buf[self.start..self.start + pos]).to_vec();
                self.start += pos + 1;
                if is_blank(&line) {
                    continue;
                }
                return Some(Ok(line));
            }
            match self.fill() {
                Ok(true) => continue,
                Ok(false) => {
                    let line = trim_cr(&self.buf[self.start..]).to_vec();
                    self.start = self.buf.len();
                    if is_blank(&line) {
                        return None;
                    }
                    return Some(Ok(line));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}
