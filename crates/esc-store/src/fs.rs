//! The file operations the segment log needs, behind a trait so the tests
//! can run the log on a disk that loses power ([`LogFs`]); [`OsFs`] is the
//! real directory, [`MemFs`] an in-memory one for tests that do not crash.
//!
//! Every name is a plain file in one directory. Only what the log needs is
//! here: preallocated creation, positioned reads and writes, `fdatasync`,
//! zeroing a tail, removal and a directory sync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A directory of log files.
pub trait LogFs: Send + Sync + 'static {
    /// The names in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates `name` (or empties it) with `len` bytes of zeros, allocated
    /// up front so that later writes inside it change no file size: an
    /// `fdatasync` then flushes the data alone (no metadata journal commit).
    fn create(&self, name: &str, len: u64) -> io::Result<()>;
    /// Reads at `offset` into `buf`; fewer bytes at the end of the file.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes `data` at `offset` (extending the file if needed).
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every byte from `from` to the end of the file zero, keeping
    /// its length.
    fn zero_from(&self, name: &str, from: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data written so far survives a power loss.
    fn sync(&self, name: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// The directory's entries (creations, removals) survive a power loss.
    fn sync_dir(&self) -> io::Result<()>;
}

/// A real directory; files stay open once touched.
pub struct OsFs {
    dir: PathBuf,
    open: Mutex<BTreeMap<String, Arc<File>>>,
}

impl OsFs {
    pub fn new(dir: &Path) -> io::Result<OsFs> {
        std::fs::create_dir_all(dir)?;
        Ok(OsFs {
            dir: dir.to_path_buf(),
            open: Mutex::new(BTreeMap::new()),
        })
    }

    fn files(&self) -> MutexGuard<'_, BTreeMap<String, Arc<File>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, name: &str) -> io::Result<Arc<File>> {
        if let Some(f) = self.files().get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .open(self.dir.join(name))?,
        );
        self.files().insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Allocates `[offset, offset + len)` as zeros; a file system without
    /// `fallocate` gets the bytes written.
    fn allocate(f: &File, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        let (o, l) = (offset as nix::libc::off_t, len as nix::libc::off_t);
        match nix::fcntl::posix_fallocate(f.as_raw_fd(), o, l) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {
                let zeros = vec![0u8; 1 << 20];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(zeros.len() as u64) as usize;
                    f.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

impl LogFs for OsFs {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }

    fn create(&self, name: &str, len: u64) -> io::Result<()> {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        Self::allocate(&f, 0, len)?;
        self.files().insert(name.to_string(), Arc::new(f));
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(name)?;
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all_at(data, offset)
    }

    fn zero_from(&self, name: &str, from: u64) -> io::Result<()> {
        let f = self.file(name)?;
        let len = f.metadata()?.len();
        if from < len {
            // Cutting and reallocating frees the old blocks: the tail reads
            // as zeros without writing them.
            f.set_len(from)?;
            Self::allocate(&f, from, len - from)?;
        }
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files().remove(name);
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// An in-memory directory: every operation is durable at once (for tests
/// and tools that never crash).
#[derive(Debug, Clone, Default)]
pub struct MemFs(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl MemFs {
    fn files(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl LogFs for MemFs {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files().keys().cloned().collect())
    }

    fn create(&self, name: &str, len: u64) -> io::Result<()> {
        self.files().insert(name.to_string(), vec![0; len as usize]);
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let files = self.files();
        let f = files.get(name).ok_or_else(|| not_found(name))?;
        let start = (offset as usize).min(f.len());
        let n = (f.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&f[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut files = self.files();
        let f = files.get_mut(name).ok_or_else(|| not_found(name))?;
        let end = offset as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn zero_from(&self, name: &str, from: u64) -> io::Result<()> {
        let mut files = self.files();
        let f = files.get_mut(name).ok_or_else(|| not_found(name))?;
        let from = (from as usize).min(f.len());
        f[from..].fill(0);
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        match self.files().contains_key(name) {
            true => Ok(()),
            false => Err(not_found(name)),
        }
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files().remove(name);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}
