//! Files replaced whole: readers see the old bytes or the new ones, never a part, and
//! a crash right after the call returns does not lose the new ones.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, renames it over
/// `path` and flushes the folder, so the rename itself survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_beside(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// `.NAME.PID.N.tmp` beside `path`: hidden (listings skip it), and unique per process
/// and per call, so two writers (threads included) never share it.
fn temporary_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Flushes the folder holding `path` (its entries: a rename or a new file). Filesystems
/// that cannot flush a folder (some network and FUSE mounts say EINVAL) are let be: the
/// file itself is on disk, and such a mount gives no stronger promise anyway.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out.json");
        write_atomic(&p, b"first").expect("write");
        write_atomic(&p, b"second").expect("replace");
        assert_eq!(std::fs::read(&p).expect("read"), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
    }

    #[test]
    fn a_failed_rename_leaves_what_was_there_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The rename fails: a non-empty folder stands where the file would go.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).expect("folder");
        std::fs::write(p.join("inside"), b"old").expect("write");
        assert!(write_atomic(&p, b"new").is_err());
        assert_eq!(std::fs::read(p.join("inside")).expect("read"), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("taken")],
            "no temporary left"
        );
    }

    #[test]
    fn writers_of_one_path_on_several_threads_each_replace_it_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("shared.bin");
        let handles: Vec<_> = (0u8..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || write_atomic(&p, &[i; 4096]))
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("write");
        }
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(bytes.len(), 4096);
        assert!(
            bytes.iter().all(|b| *b == bytes[0]),
            "one writer's bytes, whole"
        );
    }
}
