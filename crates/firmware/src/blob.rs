//! The firmware blob store: files named by their SHA-256.
//!
//! A blob is written through a [`BlobWriter`] that hashes and counts the bytes as they
//! arrive and stops at a size limit; [`BlobWriter::commit`] names it by its digest. A
//! stored blob is never rewritten: committing bytes that are already stored keeps the
//! old file and reports [`Committed::existed`].
//!
//! [`FsBlobStore`] keeps blobs on a local file system:
//!
//! ```text
//! <dir>/<first 2 hex digits>/<64 hex digits>    stored blobs (0644, directories 0755)
//! <dir>/.partial/<random>                        writes in progress
//! ```
//!
//! A commit flushes and fsyncs the temporary file, hard-links it to its final name (which
//! fails, atomically, if a blob with that name exists: two concurrent commits of the same
//! bytes end with one intact file), removes the temporary name and fsyncs the directory.
//! On a file system without hard links it falls back to "rename unless it exists" under a
//! lock of the store (safe within one process). One process owns a directory:
//! [`FsBlobStore::open`] removes what a crash left in `.partial`.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::{Digest, FirmwareError, Result};

/// A blob's bytes, in chunks of at most [`READ_CHUNK`] bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Largest chunk a [`ByteStream`] of [`FsBlobStore`] yields.
pub const READ_CHUNK: usize = 64 * 1024;

/// Name of the directory of writes in progress, under the store's directory.
pub const PARTIAL_DIR: &str = ".partial";

/// The outcome of [`BlobWriter::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The SHA-256 of the bytes written: the blob's name.
    pub digest: Digest,
    /// How many bytes were written.
    pub size: u64,
    /// A blob with this digest was already stored: the new bytes were discarded and the
    /// stored file left as it was.
    pub existed: bool,
}

/// Where firmware files are kept.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug {
    /// Starts a new blob, written to a temporary place. Writing more than `limit` bytes
    /// fails with [`FirmwareError::TooLarge`] and removes what was written.
    async fn begin(&self, limit: u64) -> Result<Box<dyn BlobWriter>>;

    /// The size of blob `d`, or `None` if it is not stored.
    async fn size(&self, d: &Digest) -> Result<Option<u64>>;

    /// Bytes `start..end` of blob `d`. [`FirmwareError::NotFound`] if it is not stored,
    /// [`FirmwareError::InvalidRange`] if `start > end` or `end` is past its size.
    async fn read(&self, d: &Digest, start: u64, end: u64) -> Result<ByteStream>;

    /// Removes blob `d`; `false` if it was not stored.
    async fn delete(&self, d: &Digest) -> Result<bool>;

    /// The local file holding blob `d`, when the store has one and the blob is stored
    /// (for reading a JAR with blocking zip code).
    fn local_path(&self, d: &Digest) -> Option<PathBuf>;
}

/// A blob being written. Dropping it without [`BlobWriter::commit`] discards it.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `chunk`. After an error the writer is discarded: further calls fail with
    /// [`FirmwareError::WriterFailed`].
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;

    /// How many bytes were written so far.
    fn written(&self) -> u64;

    /// Makes the blob durable under its digest (see [`Committed`]).
    async fn commit(self: Box<Self>) -> Result<Committed>;

    /// Discards the blob.
    async fn abort(self: Box<Self>);
}

/// Blobs in a local directory (see the module documentation for the layout).
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    partial: PathBuf,
    /// Serialises the rename fallback of commits (file systems without hard links).
    rename_lock: Arc<tokio::sync::Mutex<()>>,
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> FirmwareError {
    let context = format!("{what} {}", path.display());
    move |e| FirmwareError::io(context, e)
}

#[cfg(unix)]
async fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(io_err("setting the permissions of", path))
}

#[cfg(not(unix))]
async fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// Creates `dir` and its parents, mode 0755 where new.
async fn make_dir(dir: &Path) -> Result<()> {
    let mut b = tokio::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o755);
    b.create(dir)
        .await
        .map_err(io_err("creating directory", dir))
}

/// Makes a directory entry durable (a new or removed name in `dir`).
async fn sync_dir(dir: &Path) -> Result<()> {
    let d = dir.to_owned();
    let r = tokio::task::spawn_blocking(move || std::fs::File::open(&d)?.sync_all())
        .await
        .map_err(|e| {
            FirmwareError::io(
                format!("syncing directory {}", dir.display()),
                io::Error::other(e),
            )
        })?;
    r.map_err(io_err("syncing directory", dir))
}

/// A random name for a temporary file.
fn temp_name() -> String {
    use ring::rand::SecureRandom as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 12];
    // Uniqueness comes from the counter and the process id as well; `create_new` refuses
    // a clash anyway.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hex::encode(bytes)
    )
}

impl FsBlobStore {
    /// Opens (creating it if needed) the store in `dir`, and removes the temporary files
    /// a crash may have left in `<dir>/.partial`. Only one store may be open on a
    /// directory at a time.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_owned();
        let partial = root.join(PARTIAL_DIR);
        make_dir(&partial).await?;
        let mut entries = tokio::fs::read_dir(&partial)
            .await
            .map_err(io_err("listing", &partial))?;
        let mut removed = 0usize;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_err("listing", &partial))?
        {
            let path = entry.path();
            let r = match entry.file_type().await {
                Ok(t) if t.is_dir() => tokio::fs::remove_dir_all(&path).await,
                _ => tokio::fs::remove_file(&path).await,
            };
            match r {
                Ok(()) => removed += 1,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "could not remove a stale partial firmware file")
                }
            }
        }
        if removed > 0 {
            info!(dir = %root.display(), removed, "removed partial firmware files left by an interrupted upload");
        }
        Ok(Self {
            root,
            partial,
            rename_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Where blob `d` is (or would be) stored.
    pub fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn begin(&self, limit: u64) -> Result<Box<dyn BlobWriter>> {
        let temp = self.partial.join(temp_name());
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o644);
        let file = opts
            .open(&temp)
            .await
            .map_err(io_err("creating temporary file", &temp))?;
        let writer = FsBlobWriter {
            store: self.clone(),
            temp,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            limit,
            state: State::Open,
        };
        // The umask may have taken bits away: blobs are 0644 whatever it is.
        set_mode(&writer.temp, 0o644).await?;
        Ok(Box::new(writer))
    }

    async fn size(&self, d: &Digest) -> Result<Option<u64>> {
        let path = self.path_of(d);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Err(FirmwareError::Corrupt {
                digest: *d,
                problem: format!("{} is not a regular file", path.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading the size of", &path)(e)),
        }
    }

    async fn read(&self, d: &Digest, start: u64, end: u64) -> Result<ByteStream> {
        if start > end {
            return Err(FirmwareError::InvalidRange(format!(
                "start {start} is after end {end}"
            )));
        }
        let path = self.path_of(d);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FirmwareError::NotFound(*d));
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(io_err("reading the size of", &path))?
            .len();
        if end > size {
            return Err(FirmwareError::InvalidRange(format!(
                "bytes {start}..{end} go past the end of the {size}-byte file {d}"
            )));
        }
        file.seek(io::SeekFrom::Start(start))
            .await
            .map_err(io_err("seeking in", &path))?;
        let len = end - start;
        let stream = futures::stream::try_unfold(
            (file.take(len), len),
            |(mut reader, remaining)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = usize::try_from(remaining.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
                let mut buf = vec![0u8; want];
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("firmware file ended {remaining} bytes early"),
                    ));
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), (reader, remaining - n as u64))))
            },
        );
        Ok(Box::pin(stream))
    }

    async fn delete(&self, d: &Digest) -> Result<bool> {
        let path = self.path_of(d);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    sync_dir(dir).await?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    fn local_path(&self, d: &Digest) -> Option<PathBuf> {
        let path = self.path_of(d);
        path.is_file().then_some(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Accepting bytes.
    Open,
    /// A write failed; the temporary file is gone.
    Failed,
    /// Committed or aborted: nothing left to clean up.
    Done,
}

/// A blob being written into `<dir>/.partial`.
struct FsBlobWriter {
    store: FsBlobStore,
    temp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    limit: u64,
    state: State,
}

impl FsBlobWriter {
    /// Drops the temporary file after a failed write.
    async fn fail(&mut self) {
        self.file = None;
        if let Err(e) = tokio::fs::remove_file(&self.temp).await
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp.display(), error = %e, "could not remove a discarded firmware upload");
        }
        self.state = State::Failed;
    }

    /// Puts the synced temporary file at `target`, unless a blob is there already.
    /// Returns whether one was.
    async fn place(&self, target: &Path) -> Result<bool> {
        match tokio::fs::hard_link(&self.temp, target).await {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
            Err(e) => {
                debug!(error = %e, "hard link failed; committing by rename");
                let _guard = self.store.rename_lock.lock().await;
                if tokio::fs::try_exists(target)
                    .await
                    .map_err(io_err("checking", target))?
                {
                    return Ok(true);
                }
                tokio::fs::rename(&self.temp, target)
                    .await
                    .map_err(io_err("moving the upload to", target))?;
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl BlobWriter for FsBlobWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.state != State::Open {
            return Err(FirmwareError::WriterFailed);
        }
        let new_len = self.written.saturating_add(chunk.len() as u64);
        if new_len > self.limit {
            self.fail().await;
            return Err(FirmwareError::TooLarge { limit: self.limit });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(FirmwareError::WriterFailed);
        };
        if let Err(e) = file.write_all(chunk).await {
            let err = io_err("writing", &self.temp)(e);
            self.fail().await;
            return Err(err);
        }
        self.hasher.update(chunk);
        self.written = new_len;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<Committed> {
        if self.state != State::Open {
            return Err(FirmwareError::WriterFailed);
        }
        // Any error below leaves the state Open: Drop removes the temporary file.
        let mut file = self.file.take().ok_or(FirmwareError::WriterFailed)?;
        file.flush().await.map_err(io_err("writing", &self.temp))?;
        file.sync_all()
            .await
            .map_err(io_err("syncing", &self.temp))?;
        drop(file);
        let digest = Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        let size = self.written;
        let target = self.store.path_of(&digest);
        let dir = target
            .parent()
            .map_or_else(|| self.store.root.clone(), Path::to_path_buf);
        make_dir(&dir).await?;
        // As for files: 0755 whatever the umask.
        set_mode(&dir, 0o755).await?;
        let existed = self.place(&target).await?;
        match tokio::fs::remove_file(&self.temp).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.temp.display(), error = %e, "could not remove the temporary name of a stored firmware file");
            }
        }
        self.state = State::Done;
        if existed {
            let stored = tokio::fs::metadata(&target)
                .await
                .map_err(io_err("reading the size of", &target))?
                .len();
            if stored != size {
                return Err(FirmwareError::Corrupt {
                    digest,
                    problem: format!(
                        "{} has {stored} bytes, but bytes with this SHA-256 are {size} long",
                        target.display()
                    ),
                });
            }
        } else {
            sync_dir(&dir).await?;
        }
        Ok(Committed {
            digest,
            size,
            existed,
        })
    }

    async fn abort(mut self: Box<Self>) {
        self.file = None;
        if self.state == State::Open
            && let Err(e) = tokio::fs::remove_file(&self.temp).await
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp.display(), error = %e, "could not remove an aborted firmware upload");
        }
        self.state = State::Done;
    }
}

impl Drop for FsBlobWriter {
    fn drop(&mut self) {
        if self.state == State::Open {
            self.file = None;
            // Best effort, and quick: one unlink.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt as _;

    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn put(store: &FsBlobStore, bytes: &[u8], chunk: usize) -> Result<Committed> {
        let mut w = store.begin(u64::MAX).await?;
        for c in bytes.chunks(chunk.max(1)) {
            w.write(c).await?;
        }
        assert_eq!(w.written(), bytes.len() as u64);
        w.commit().await
    }

    async fn collect(s: ByteStream) -> (Vec<u8>, usize) {
        let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
        let max = chunks.iter().map(Bytes::len).max().unwrap_or(0);
        (chunks.concat(), max)
    }

    fn partial_files(store: &FsBlobStore) -> usize {
        std::fs::read_dir(store.dir().join(PARTIAL_DIR))
            .unwrap()
            .count()
    }

    #[tokio::test]
    async fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path().join("blobs")).await.unwrap();
        let bytes = data(300_000);
        let c = put(&store, &bytes, 10_000).await.unwrap();
        assert_eq!(c.digest, Digest::of(&bytes));
        assert_eq!(c.size, 300_000);
        assert!(!c.existed);
        assert_eq!(store.size(&c.digest).await.unwrap(), Some(300_000));
        let (back, max_chunk) = collect(store.read(&c.digest, 0, 300_000).await.unwrap()).await;
        assert_eq!(back, bytes);
        assert!(max_chunk <= READ_CHUNK, "{max_chunk}");
        let hex = c.digest.to_hex();
        let path = store.local_path(&c.digest).unwrap();
        assert_eq!(path, tmp.path().join("blobs").join(&hex[..2]).join(&hex));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(partial_files(&store), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o644);
            assert_eq!(mode(path.parent().unwrap()), 0o755);
        }
        // Empty blobs are blobs too.
        let e = put(&store, b"", 1).await.unwrap();
        assert_eq!(e.digest, Digest::of(b""));
        assert_eq!(store.size(&e.digest).await.unwrap(), Some(0));
        assert_eq!(
            collect(store.read(&e.digest, 0, 0).await.unwrap()).await.0,
            b""
        );

        assert!(store.delete(&c.digest).await.unwrap());
        assert!(!store.delete(&c.digest).await.unwrap());
        assert_eq!(store.size(&c.digest).await.unwrap(), None);
        assert_eq!(store.local_path(&c.digest), None);
        assert!(matches!(
            store.read(&c.digest, 0, 1).await,
            Err(FirmwareError::NotFound(d)) if d == c.digest
        ));
    }

    #[tokio::test]
    async fn ranges() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        let bytes = data(200_000);
        let d = put(&store, &bytes, 65_536).await.unwrap().digest;
        for (s, e) in [
            (0, 10),
            (10, 200_000),
            (65_535, 131_073),
            (199_999, 200_000),
            (5, 5),
        ] {
            let (got, max) = collect(store.read(&d, s, e).await.unwrap()).await;
            assert_eq!(got, &bytes[s as usize..e as usize], "{s}..{e}");
            assert!(max <= READ_CHUNK);
        }
        let e = store.read(&d, 10, 5).await.err().unwrap();
        assert!(e.to_string().contains("start 10 is after end 5"), "{e}");
        let e = store.read(&d, 0, 200_001).await.err().unwrap();
        assert!(matches!(e, FirmwareError::InvalidRange(_)), "{e}");
        assert!(e.to_string().contains("200000-byte"), "{e}");
    }

    #[tokio::test]
    async fn limit_is_enforced_and_the_upload_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        let mut w = store.begin(10).await.unwrap();
        w.write(&[1; 6]).await.unwrap();
        assert_eq!(partial_files(&store), 1);
        let e = w.write(&[1; 6]).await.unwrap_err();
        assert!(matches!(e, FirmwareError::TooLarge { limit: 10 }), "{e}");
        assert_eq!(
            e.to_string(),
            "firmware file is larger than the limit of 10 bytes"
        );
        assert_eq!(partial_files(&store), 0);
        assert!(matches!(
            w.write(&[1]).await,
            Err(FirmwareError::WriterFailed)
        ));
        assert!(matches!(w.commit().await, Err(FirmwareError::WriterFailed)));

        // Exactly the limit is fine.
        let mut w = store.begin(10).await.unwrap();
        w.write(&[2; 4]).await.unwrap();
        w.write(&[2; 6]).await.unwrap();
        let c = w.commit().await.unwrap();
        assert_eq!(c.size, 10);
        assert_eq!(partial_files(&store), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_of_the_same_bytes_end_with_one_intact_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        let bytes = Arc::new(data(500_000));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let bytes = bytes.clone();
            tasks.push(tokio::spawn(async move {
                put(&store, &bytes, 7_000 + i * 1_000).await.unwrap()
            }));
        }
        let mut fresh = 0;
        for t in tasks {
            let c = t.await.unwrap();
            assert_eq!(c.digest, Digest::of(&bytes));
            assert_eq!(c.size, 500_000);
            if !c.existed {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 1, "exactly one commit stored the file");
        let path = store.local_path(&Digest::of(&bytes)).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), *bytes);
        assert_eq!(partial_files(&store), 0);
    }

    #[tokio::test]
    async fn dropped_or_aborted_writers_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        let mut w = store.begin(1_000_000).await.unwrap();
        w.write(&data(100_000)).await.unwrap();
        assert_eq!(partial_files(&store), 1);
        drop(w);
        assert_eq!(partial_files(&store), 0);

        let mut w = store.begin(1_000_000).await.unwrap();
        w.write(b"abc").await.unwrap();
        w.abort().await;
        assert_eq!(partial_files(&store), 0);
        assert_eq!(store.size(&Digest::of(b"abc")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_stored_blob_is_never_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        let bytes = data(50_000);
        let first = put(&store, &bytes, 4096).await.unwrap();
        assert!(!first.existed);
        let path = store.local_path(&first.digest).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let second = put(&store, &bytes, 1000).await.unwrap();
        assert!(second.existed);
        assert_eq!(second.digest, first.digest);
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(before.modified().unwrap(), after.modified().unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            assert_eq!(before.ino(), after.ino());
            assert_eq!(after.nlink(), 1, "the temporary name is gone");
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(partial_files(&store), 0);

        // A damaged stored file (wrong size) is reported, not replaced.
        std::fs::write(&path, b"short").unwrap();
        let e = put(&store, &bytes, 1000).await.unwrap_err();
        assert!(matches!(e, FirmwareError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("5 bytes"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }

    #[tokio::test]
    async fn open_removes_stale_partial_files() {
        let tmp = tempfile::tempdir().unwrap();
        let partial = tmp.path().join(PARTIAL_DIR);
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("left-by-a-crash"), b"half an upload").unwrap();
        std::fs::create_dir(partial.join("odd-dir")).unwrap();
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        assert_eq!(partial_files(&store), 0);
        // Stored blobs are kept.
        let c = put(&store, b"keep me", 3).await.unwrap();
        drop(store);
        let store = FsBlobStore::open(tmp.path()).await.unwrap();
        assert_eq!(store.size(&c.digest).await.unwrap(), Some(7));
    }
}
