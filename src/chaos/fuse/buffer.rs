//! The volatile cache of buffered mode, LazyFS's model: a file's written
//! data is kept here, page by page, over its backing file, and reaches the
//! backing file only when [`Dirty::flush`] is called (at fsync/fdatasync of
//! that file, or when buffering is turned off). Dropping a [`Dirty`] is the
//! power cut: the backing file keeps what was flushed before.
//!
//! Invariants: `size` is the file's size as readers see it; the backing
//! file is never longer than `size` (truncate and fallocate pass through to
//! both); bytes of a cached page past `size` are zero.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub(super) const PAGE: u64 = 4096;

#[derive(Debug)]
pub(super) struct Dirty {
    /// A read-write descriptor of the backing file, to fill pages from and
    /// to flush to.
    pub file: Arc<File>,
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's size as readers see it (the backing file may be shorter).
    pub size: u64,
    /// Bytes written into the cache since the last flush: what a power cut
    /// drops (an overwrite counts again).
    pub bytes: u64,
}

/// Read as much of `buf` as the file has from `off`; zeros past its end.
fn read_full(file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

impl Dirty {
    pub fn new(file: Arc<File>) -> io::Result<Dirty> {
        let size = file.metadata()?.len();
        Ok(Dirty {
            file,
            pages: BTreeMap::new(),
            size,
            bytes: 0,
        })
    }

    /// The cached page `idx`, filled from the backing file on first use.
    fn page(&mut self, idx: u64) -> io::Result<&mut Box<[u8]>> {
        if !self.pages.contains_key(&idx) {
            let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
            let start = idx * PAGE;
            if start < self.size {
                let valid = (self.size - start).min(PAGE) as usize;
                read_full(&self.file, &mut p[..valid], start)?;
            }
            self.pages.insert(idx, p);
        }
        self.pages
            .get_mut(&idx)
            .ok_or_else(|| io::Error::other("page vanished"))
    }

    pub fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - done);
            self.page(idx)?[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.size = self.size.max(off + data.len() as u64);
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Up to `len` bytes from `off`, cached pages over the backing file.
    pub fn read(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        if off >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(off + len as u64);
        let mut out = vec![0u8; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = ((PAGE - in_page as u64).min(end - pos)) as usize;
            let dst = &mut out[(pos - off) as usize..(pos - off) as usize + n];
            match self.pages.get(&idx) {
                Some(p) => dst.copy_from_slice(&p[in_page..in_page + n]),
                None => read_full(&self.file, dst, pos)?,
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// The file was truncated (or extended) to `size`: the backing file was
    /// already, this drops or zeroes what the cache held past it.
    pub fn truncate(&mut self, size: u64) {
        let keep = size.div_ceil(PAGE);
        self.pages.retain(|idx, _| *idx < keep);
        if !size.is_multiple_of(PAGE)
            && let Some(p) = self.pages.get_mut(&(size / PAGE))
        {
            p[(size % PAGE) as usize..].fill(0);
        }
        self.size = size;
    }

    /// fallocate grew the backing file to at least `size`.
    pub fn extend_to(&mut self, size: u64) {
        self.size = self.size.max(size);
    }

    /// Write every cached page to the backing file (not fsynced: the caller
    /// does that) and empty the cache. On error the cache is kept.
    pub fn flush(&mut self) -> io::Result<u64> {
        for (idx, p) in &self.pages {
            let start = idx * PAGE;
            if start >= self.size {
                continue;
            }
            let n = (self.size - start).min(PAGE) as usize;
            self.file.write_all_at(&p[..n], start)?;
        }
        if self.file.metadata()?.len() < self.size {
            self.file.set_len(self.size)?;
        }
        self.pages.clear();
        Ok(std::mem::take(&mut self.bytes))
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty() && self.bytes == 0
    }
}
