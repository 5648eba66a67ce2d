//! Noticing that the config, or a file it names, changed on disk.
//!
//! Folders are watched rather than files: editors replace files, and Kubernetes updates a
//! mounted ConfigMap by swapping a symlink, neither of which a watch on the old file sees.
//! Any change in a watched folder makes the caller compare a fingerprint of the files' contents,
//! so unrelated files in the same folder cause no reload. Reads are not changes: the
//! fingerprint itself opens the files, and counting that as a change re-read every file five
//! times a second for as long as the gateway ran.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Watches the folders of a set of files.
pub struct FileWatch {
    watcher: Option<RecommendedWatcher>,
    folders: HashSet<PathBuf>,
    events: mpsc::Receiver<()>,
}

impl FileWatch {
    /// A watch on nothing yet. If the platform cannot watch files, changes are only picked
    /// up on SIGHUP.
    pub fn new() -> FileWatch {
        let (tx, events) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|event| is_change(&event.kind)) {
                // Full channel: a wake-up is already pending, which is all we need.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch files; reload with SIGHUP"))
        .ok();
        FileWatch { watcher, folders: HashSet::new(), events }
    }

    /// Also watches the folders of `files`.
    pub fn watch(&mut self, files: &[PathBuf]) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        for file in files {
            // A folder named in the config is watched itself; a file, through its folder.
            let folder = if file.is_dir() {
                file.clone()
            } else {
                file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
            };
            let folder = if folder.as_os_str().is_empty() { PathBuf::from(".") } else { folder };
            if self.folders.contains(&folder) {
                continue;
            }
            match watcher.watch(&folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.folders.insert(folder);
                }
                Err(e) => {
                    tracing::warn!(folder = %folder.display(), error = %e, "cannot watch folder")
                }
            }
        }
    }

    /// Waits for the next change in a watched folder; then drains the burst that usually
    /// follows one save.
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        // Debounce: wait for 200 ms without events (a file written in place is briefly empty
        // or half written), but no more than 2 s in all.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let quiet = tokio::time::sleep(std::time::Duration::from_millis(200));
            tokio::select! {
                _ = quiet => break,
                _ = tokio::time::sleep_until(deadline) => break,
                e = self.events.recv() => if e.is_none() { break },
            }
        }
        while self.events.try_recv().is_ok() {}
    }
}

/// Whether an event can mean that a file's contents changed: everything but opening and
/// reading a file, and closing one that was not open for writing.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A fingerprint of the contents of `files` (a missing file counts as a content too).
pub fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        if f.is_dir() {
            // A folder (of policies): the files in it, so that adding one is a change too.
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(f).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            entries.sort();
            for e in entries {
                hash_file(&e, &mut h);
            }
        } else {
            hash_file(f, &mut h);
        }
    }
    h.finish()
}

fn hash_file(f: &Path, h: &mut DefaultHasher) {
    f.hash(h);
    match std::fs::read(f) {
        Ok(bytes) => bytes.hash(h),
        Err(e) => e.kind().to_string().hash(h),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn opening_and_reading_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!is_change(&EventKind::Access(AccessKind::Read)));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
        assert!(is_change(&EventKind::Any));
    }

    /// The gateway fingerprints the files after every change it is told of; if reading them
    /// counted as a change, it would be told again, forever.
    #[tokio::test]
    async fn reading_the_watched_files_is_not_reported_and_writing_them_is() {
        let dir = std::env::temp_dir().join(format!("portcullis-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("portcullis.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let files = vec![file.clone()];
        let mut watch = FileWatch::new();
        watch.watch(&files);
        if watch.watcher.is_none() {
            panic!("this platform cannot watch files");
        }

        let before = fingerprint(&files);
        let quiet = tokio::time::timeout(Duration::from_millis(700), watch.changed()).await;
        assert!(quiet.is_err(), "reading the watched file was reported as a change");

        std::fs::write(&file, "a: 2\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("writing the watched file was not reported");
        assert_ne!(fingerprint(&files), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
