//! Files on disk: atomic writes with the right mode, reads with clear errors.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::CaError;

/// Mode of files holding secrets (private keys, passwords).
pub(crate) const SECRET_MODE: u32 = 0o600;
/// Mode of files holding public material (certificates).
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories the CA creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Largest file the CA will read (certificates and keys are a few KiB).
const MAX_READ: u64 = 1024 * 1024;

/// Writes `bytes` to `path` so that only the owner can read it (mode 0600), atomically.
///
/// The data goes to a new temporary file in the same directory, created with mode 0600
/// from the start (so the secret is never readable by others, not even briefly), is
/// flushed to disk, and is then renamed over `path`. A reader sees either the old file
/// or the complete new one. The parent directory must exist.
///
/// Used for the CA and server private keys, and by the application for its other
/// secrets (JWT signing key, initial admin password).
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_atomic(path, bytes, SECRET_MODE)
}

/// Like [`write_secret_file`] but with mode 0644, for certificates.
pub(crate) fn write_public_file(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_atomic(path, bytes, PUBLIC_MODE)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| CaError::InvalidInput(format!("{} is not a file path", path.display())))?;
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(
        ".{}.tmp-{suffix:016x}",
        file_name.to_string_lossy()
    ));

    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits from `mode`; make the mode exact.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CaError::io("write", path, source));
    }
    // Make the rename durable. Some file systems refuse to fsync a directory; the data
    // itself is already on disk, so this is best effort.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), CaError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(CaError::InvalidInput(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| CaError::io("create directory", dir, e)),
        Err(e) => Err(CaError::io("inspect", dir, e)),
    }
}

/// Whether `path` exists (errors other than "not found" are reported).
pub(crate) fn exists(path: &Path) -> Result<bool, CaError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CaError::io("inspect", path, e)),
    }
}

/// Reads a small text file (PEM).
pub(crate) fn read_text(path: &Path) -> Result<String, CaError> {
    let meta = fs::metadata(path).map_err(|e| CaError::io("read", path, e))?;
    if !meta.is_file() {
        return Err(CaError::corrupt(path, "not a regular file"));
    }
    if meta.len() > MAX_READ {
        return Err(CaError::corrupt(
            path,
            format!(
                "file is {} bytes, larger than any key or certificate",
                meta.len()
            ),
        ));
    }
    let bytes = fs::read(path).map_err(|e| CaError::io("read", path, e))?;
    String::from_utf8(bytes).map_err(|_| CaError::corrupt(path, "file is not text (PEM expected)"))
}

/// Makes sure a secret file is not readable by group or others; fixes it with a warning.
pub(crate) fn tighten_secret_mode(path: &Path) -> Result<(), CaError> {
    let meta = fs::metadata(path).map_err(|e| CaError::io("inspect", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "private key file was accessible to other users; restricting it to mode 600"
        );
        fs::set_permissions(path, fs::Permissions::from_mode(SECRET_MODE))
            .map_err(|e| CaError::io("change permissions of", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_is_0600_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.txt");
        write_secret_file(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Replacing a loosely-permissioned file yields a 0600 file.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        write_secret_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn write_into_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("secret.txt");
        let err = write_secret_file(&path, b"x").unwrap_err();
        assert!(matches!(err, CaError::Io { .. }));
        assert!(err.to_string().contains("secret.txt"), "{err}");
    }

    #[test]
    fn tighten_fixes_loose_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, b"k").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        tighten_secret_mode(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
