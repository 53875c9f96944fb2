//! Temporary files that must not outlive an abandoned run: the `.part` PNG being written, the quantization
//! cache's temporary files, downloaded inputs. Each is registered while it exists ([`Guard`] removes the entry
//! when the file is finished or dropped); a second Ctrl-C or SIGTERM, which exits at once without running
//! destructors, removes whatever is still registered first ([`remove_all`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static LIVE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Keeps `path` registered until dropped.
#[must_use = "the path is unregistered when the guard drops"]
pub struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(set) = LIVE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            set.remove(&self.0);
        }
    }
}

/// Registers a temporary file or folder for removal if the process is stopped.
pub fn register(path: &Path) -> Guard {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(path.to_path_buf());
    Guard(path.to_path_buf())
}

/// Removes every registered file and folder (called just before a forced exit).
pub fn remove_all() {
    let set = LIVE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    for p in set {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_files_are_removed_and_finished_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.part"), d.path().join("b.png"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"y").unwrap();
        let _keep = register(&a);
        drop(register(&b));
        remove_all();
        assert!(!a.exists() && b.exists());
    }
}
