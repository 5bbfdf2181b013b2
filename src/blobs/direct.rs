//! Staged writes for the local backend that bypass the page cache.
//!
//! A buffered write copies every byte into page-cache pages the kernel must
//! first find and zero. On the project's VMs fresh pages are expensive and
//! their price drifts: the same 100 MB upload spent 0.03 or 0.25
//! CPU-seconds in the kernel's copy depending on whether the host still
//! backed the free memory it was given (measured with `dd`, and in the
//! server's profile as `copy_folio_from_iter_atomic` going from 2% to 18%).
//! With `O_DIRECT` the device reads the data from the writer's own buffers,
//! which are reused part after part, so an upload touches a few MiB of
//! memory however large it is and the copy costs about 0.01 CPU-seconds.
//!
//! `O_DIRECT` wants buffers, lengths and offsets aligned to the device's
//! block size (4 KiB covers the usual 512-byte and 4 KiB devices): parts are
//! [`PART_SIZE`] bytes; the last one is padded with zeros and the file cut
//! back to its length. Whether the directory's file system accepts all this
//! is probed once, when the store opens; where it does not (tmpfs, other
//! systems), writes go through `object_store` as before.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

/// Alignment of buffers, lengths and offsets for `O_DIRECT`.
const ALIGN: usize = 4096;

/// Bytes per write here and per `put_part` through object_store, with at
/// most a few parts in flight per upload: bounds each upload's memory to
/// about 5 × 2 MiB. The local backend writes
/// each part at its offset, so small parts cost nothing; every megabyte an
/// upload holds is one the kernel must zero-fill when it is first touched
/// (on a VM the biggest single cost of a fresh server's first upload after
/// tokenizing). An S3 backend needs parts of at least 5 MiB.
/// A multiple of [`ALIGN`].
pub(crate) const PART_SIZE: usize = 2 << 20;
const _: () = assert!(PART_SIZE.is_multiple_of(ALIGN));

/// Opens `path` for direct writing: it must not exist yet.
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Whether direct writes work in `dir`: writes a padded block to a probe
/// file, cuts it back, and removes it.
pub(super) fn supported(dir: &Path) -> bool {
    let probe = dir.join(format!(".direct-probe-{}", crate::ids::new_id("p")));
    let works = (|| -> io::Result<()> {
        let file = open_direct(&probe)?;
        let mut buf = AlignedBuf::new(ALIGN);
        buf.fill(b"probe");
        file.write_all_at(buf.padded(), 0)?;
        file.set_len(5)?;
        Ok(())
    })()
    .is_ok();
    let _ = std::fs::remove_file(&probe);
    works
}

/// A buffer whose data starts at an [`ALIGN`]-aligned address: a `Vec`
/// with room to slide the start forward, never reallocated.
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
    capacity: usize,
}

impl AlignedBuf {
    fn new(capacity: usize) -> Self {
        let mem = vec![0u8; capacity + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        AlignedBuf {
            mem,
            start,
            len: 0,
            capacity,
        }
    }

    /// Copies as much of `data` as fits; returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity - self.len);
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// The data, zero-padded up to the next multiple of [`ALIGN`].
    fn padded(&mut self) -> &[u8] {
        let padded = self.len.next_multiple_of(ALIGN);
        self.mem[self.start + self.len..self.start + padded].fill(0);
        &self.mem[self.start..self.start + padded]
    }
}

/// Writes a staged file part by part, at most `in_flight` parts at once.
pub(super) struct DirectWriter {
    file: Arc<File>,
    path: PathBuf,
    buf: AlignedBuf,
    /// File offset of `buf`'s first byte.
    offset: u64,
    writing: VecDeque<JoinHandle<io::Result<AlignedBuf>>>,
    free: Vec<AlignedBuf>,
    in_flight: usize,
}

impl DirectWriter {
    pub(super) fn create(path: PathBuf, in_flight: usize) -> io::Result<Self> {
        let file = open_direct(&path)?;
        Ok(DirectWriter {
            file: Arc::new(file),
            path,
            buf: AlignedBuf::new(PART_SIZE),
            offset: 0,
            writing: VecDeque::new(),
            free: Vec::new(),
            in_flight: in_flight.max(1),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.buf.fill(data);
            data = &data[n..];
            if self.buf.is_full() {
                self.submit_part().await?;
            }
        }
        Ok(())
    }

    /// Hands the full buffer to a blocking thread and continues in a free
    /// one, after waiting for the oldest write if too many are pending.
    async fn submit_part(&mut self) -> io::Result<()> {
        if self.writing.len() >= self.in_flight {
            self.reap_oldest().await?;
        }
        let next = self.free.pop().unwrap_or_else(|| AlignedBuf::new(PART_SIZE));
        let part = std::mem::replace(&mut self.buf, next);
        self.spawn_write(part);
        Ok(())
    }

    /// Writes `part` at the current offset on a blocking thread, padded to
    /// the alignment; the buffer comes back empty for reuse.
    fn spawn_write(&mut self, mut part: AlignedBuf) {
        let (file, offset) = (self.file.clone(), self.offset);
        self.offset += part.len as u64;
        self.writing.push_back(tokio::task::spawn_blocking(move || {
            file.write_all_at(part.padded(), offset)?;
            part.len = 0;
            Ok(part)
        }));
    }

    async fn reap_oldest(&mut self) -> io::Result<()> {
        if let Some(write) = self.writing.pop_front() {
            let buf = write.await.map_err(io::Error::other)??;
            self.free.push(buf);
        }
        Ok(())
    }

    /// Writes what is buffered and waits for every write; the file then has
    /// exactly the bytes written.
    pub(super) async fn finish(mut self) -> io::Result<()> {
        if self.buf.len > 0 {
            let last = std::mem::replace(&mut self.buf, AlignedBuf::new(0));
            self.spawn_write(last);
        }
        let len = self.offset;
        while !self.writing.is_empty() {
            self.reap_oldest().await?;
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.set_len(len))
            .await
            .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_padded_with_zeros() {
        for capacity in [ALIGN, 3 * ALIGN] {
            let mut buf = AlignedBuf::new(capacity);
            assert_eq!(buf.mem[buf.start..].as_ptr() as usize % ALIGN, 0);
            assert_eq!(buf.fill(&[7; 10]), 10);
            assert_eq!(buf.padded().len(), ALIGN);
            assert!(buf.padded()[10..].iter().all(|&b| b == 0));
            assert_eq!(buf.fill(&vec![1; capacity]), capacity - 10);
            assert!(buf.is_full());
            assert_eq!(buf.padded().len(), capacity);
        }
    }

    #[tokio::test]
    async fn files_hold_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        if !supported(dir.path()) {
            eprintln!("O_DIRECT is not supported under {}; skipped", dir.path().display());
            return;
        }
        for size in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            PART_SIZE - 1,
            PART_SIZE,
            3 * PART_SIZE + 123,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            let mut w = DirectWriter::create(path.clone(), 2).unwrap();
            // Uneven pieces, so parts fill across calls.
            for piece in data.chunks(100_003) {
                w.write(piece).await.unwrap();
            }
            w.finish().await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "size {size}");
        }
        // An existing file is never overwritten.
        assert!(DirectWriter::create(dir.path().join("f0"), 2).is_err());
    }
}
