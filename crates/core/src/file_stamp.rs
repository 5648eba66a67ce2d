//! [`FileStamp`]: a file named by a config, as it is on disk.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A file as it is on disk at one moment: its path, length and modification time.
///
/// What survives a reload (key stores, signing key rings, upstream pools) is keyed by the
/// settings it was built from and the stamps of the files it read: a file replaced or
/// rewritten since (a rotated certificate, a new key set) stamps differently, so what was
/// built from it is built again. A file that cannot be read stamps with neither length nor
/// time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// The path, as the config names it.
    pub path: PathBuf,
    /// The length in bytes.
    pub len: Option<u64>,
    /// The modification time.
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub fn of(path: &Path) -> FileStamp {
        let meta = std::fs::metadata(path).ok();
        FileStamp {
            path: path.to_path_buf(),
            len: meta.as_ref().map(std::fs::Metadata::len),
            modified: meta.and_then(|m| m.modified().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_stamps_differently() {
        let dir = std::env::temp_dir().join(format!("portcullis-file-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let missing = FileStamp::of(&path);
        assert_eq!((missing.len, missing.modified), (None, None));
        std::fs::write(&path, "one").unwrap();
        let written = FileStamp::of(&path);
        assert_ne!(written, missing);
        assert_eq!(FileStamp::of(&path), written, "unchanged");
        std::fs::write(&path, "three").unwrap();
        assert_ne!(FileStamp::of(&path), written, "another length");
        assert_ne!(FileStamp::of(&dir.join("other.json")), missing, "another path");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
