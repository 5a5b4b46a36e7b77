//! The one way a file is replaced: a temporary file in its directory (made by `tempfile`),
//! written, fsynced, renamed over the file, and the directory fsynced. A crash leaves the old file
//! or the new one, never a torn one; a failed write removes its temporary file. Day files,
//! `root.json` and the metrics file are written this way.

use std::fs::File;
use std::io;
use std::path::Path;

/// Replaces `path` with what `write` puts in the temporary file it is given (and returns when
/// done). The temporary file is named `.{name}.{random}.tmp`, which a root's listing skips.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(File) -> io::Result<File>,
{
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (file, tmp) = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?
        .into_parts();
    // On an error below, `tmp` is dropped: the temporary file is removed.
    write(file)?.sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_file_is_replaced_whole_and_a_failed_write_leaves_the_old_one_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        write_atomic(&path, |mut f| f.write_all(b"one").map(|_| f)).unwrap();
        write_atomic(&path, |mut f| f.write_all(b"two").map(|_| f)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let failed = write_atomic(&path, |mut f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.prom")]);
        assert!(crate::sink::parquet::is_temp_name(
            ".part-00000.parquet.x1y2.tmp"
        ));
    }
}
