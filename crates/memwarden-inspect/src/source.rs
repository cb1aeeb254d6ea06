//! Byte sources that can skip: a file skips by seeking (a 2 GB payload costs nothing), a
//! decompressing stream by reading and discarding, within the decompression limit.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};

/// A reader that can skip ahead.
pub trait Skip: Read {
    /// Skips `n` bytes; `UnexpectedEof` when fewer remain.
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

/// A buffered file of known length.
#[derive(Debug)]
pub struct FileSource {
    inner: BufReader<File>,
    position: u64,
    len: u64,
}

impl FileSource {
    /// Opens `path`, read from `position`.
    pub fn open(path: &std::path::Path, position: u64) -> Result<FileSource, crate::InspectError> {
        let file = File::open(path).map_err(|e| crate::InspectError::io(0, e))?;
        FileSource::new(file, position).map_err(|e| crate::InspectError::io(position, e))
    }

    /// Wraps an open file, read from `position`.
    pub fn new(mut file: File, position: u64) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        file.seek(io::SeekFrom::Start(position))?;
        Ok(FileSource {
            inner: BufReader::with_capacity(64 * 1024, file),
            position,
            len,
        })
    }
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl Skip for FileSource {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        if self
            .position
            .checked_add(n)
            .is_none_or(|end| end > self.len)
        {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let delta = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.inner.seek_relative(delta)?;
        self.position += n;
        Ok(())
    }
}

/// A stream (decompressing, or inside a zip) with a cap on the bytes it may produce.
#[derive(Debug)]
pub struct StreamSource<R> {
    inner: R,
    produced: u64,
    cap: u64,
}

impl<R: Read> StreamSource<R> {
    /// Reads `inner`, refusing to produce more than `cap` bytes (a decompression bomb).
    pub fn new(inner: R, cap: u64) -> Self {
        StreamSource {
            inner,
            produced: 0,
            cap,
        }
    }
}

fn over_cap(cap: u64) -> io::Error {
    io::Error::other(format!(
        "decompressed data exceeds the limit of {cap} bytes (a decompression bomb?)"
    ))
}

impl<R: Read> Read for StreamSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        if self.produced > self.cap {
            return Err(over_cap(self.cap));
        }
        Ok(n)
    }
}

impl<R: Read> Skip for StreamSource<R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut *self).take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }
}

/// An in-memory source (tests, small zip entries).
#[derive(Debug)]
pub struct SliceSource<'a> {
    bytes: &'a [u8],
}

impl<'a> SliceSource<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        SliceSource { bytes }
    }
}

impl Read for SliceSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.bytes.read(buf)
    }
}

impl Skip for SliceSource<'_> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = usize::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if n > self.bytes.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.bytes = &self.bytes[n..];
        Ok(())
    }
}
