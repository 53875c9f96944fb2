//! Every path a run writes, checked against every path it reads, before any work: takes the whole (unsharded)
//! item list plus the other files the run touches, gives Ok or one usage error naming both paths.
//!
//! Invariants the tool keeps (README, "What the tool will never do to your files"):
//! - no output is an input, mask, reference, LoRA, manifest, `--from-metadata` PNG or control image of the run,
//!   nor the grid, nor another item's output — compared as resolved files (symlinks followed, `./a.png` and
//!   `a.png` alike, hard links by inode), so sharded runs cannot overwrite each other's inputs either;
//! - an output a manifest names stays inside its root (`--output-dir`, else the manifest's folder) unless
//!   `--allow-outside` is given: a manifest is data, not a licence to write anywhere.

use super::{Input, Item};
use crate::engine::request::{ControlSource, MaskSource};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// A file as the filesystem sees it: its resolved path, and (existing files, Unix) its device and inode.
#[derive(Debug, Clone)]
struct Identity {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl Identity {
    fn of(p: &Path) -> Self {
        Identity { path: resolve(p), inode: inode(p) }
    }

    fn same(&self, other: &Identity) -> bool {
        self.path == other.path || matches!((self.inode, other.inode), (Some(a), Some(b)) if a == b)
    }
}

#[cfg(unix)]
fn inode(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(_: &Path) -> Option<(u64, u64)> {
    None
}

/// `p` made absolute, component by component: existing parts canonicalized (symlinks followed, so `link/..`
/// means what the kernel means), `.` dropped, `..` popping the resolved parent; the missing tail kept as written.
pub fn resolve(p: &Path) -> PathBuf {
    let mut out = if p.is_absolute() { PathBuf::new() } else { std::env::current_dir().unwrap_or_default() };
    let mut exists = true;
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other);
                if exists {
                    match out.canonicalize() {
                        Ok(real) => out = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    out
}

/// A file the run reads, and what it is to which item (for the message).
struct Read {
    id: Identity,
    what: String,
}

/// The files a run reads besides the items' own: the manifest, the `--from-metadata` PNG.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub reads: Vec<(PathBuf, String)>,
    pub grid: Option<PathBuf>,
    /// `-o -`: the single output goes to stdout (its path is a temporary file, not the user's).
    pub stdout: bool,
}

/// Refuses any output that is a file the run reads, the grid, or another item's output.
pub fn check_outputs(items: &[Item], extra: &Extra) -> Result<()> {
    let reads = reads_of(items, extra);
    let mut written: HashMap<PathBuf, (Identity, String)> = HashMap::new();
    let outputs = items
        .iter()
        .filter(|_| !extra.stdout)
        .map(|it| (it.request.output.clone(), format!("the output of item {}", it.index)))
        .chain(extra.grid.iter().map(|g| (g.clone(), "the --grid contact sheet".to_string())));
    for (out, what) in outputs {
        let id = Identity::of(&out);
        if let Some(r) = reads.iter().find(|r| r.id.same(&id)) {
            return Err(Error::Usage(format!(
                "{} would be {what} but it is {}; choose another --output, --output-dir or --name so nothing the \
                 run reads is overwritten",
                out.display(),
                r.what
            )));
        }
        if let Some((_, prev)) = written.values().find(|(other, _)| other.same(&id)) {
            return Err(Error::Usage(format!(
                "{prev} and {what} would both write {}; add {{index}} or {{seed}} to --name, or give distinct outputs",
                out.display()
            )));
        }
        written.insert(id.path.clone(), (id, what));
    }
    Ok(())
}

/// Every local file the items read (inputs, masks, references, LoRA files) and the extra reads.
fn reads_of(items: &[Item], extra: &Extra) -> Vec<Read> {
    let mut seen: HashMap<PathBuf, ()> = HashMap::new();
    let mut out = Vec::new();
    let mut add = |p: &Path, what: String| {
        if p.as_os_str().is_empty() || seen.insert(resolve(p), ()).is_some() {
            return;
        }
        out.push(Read { id: Identity::of(p), what });
    };
    for (p, what) in &extra.reads {
        add(p, what.clone());
    }
    for it in items {
        let k = it.index;
        if let Some(Input::File(p)) = &it.input {
            add(p, format!("the input of item {k}"));
        }
        if let Some(MaskSource::File(m)) = it.request.mask().map(|m| &m.source) {
            add(m, format!("the mask of item {k}"));
        }
        for r in &it.request.references {
            add(r, format!("a reference image of item {k}"));
        }
        let controlnets = it.request.controlnets.iter().map(|c| &c.image);
        for c in it.request.control.iter().chain(controlnets) {
            if let ControlSource::File(c) = c {
                add(c, format!("a control image of item {k}"));
            }
        }
        for r in &it.request.redux {
            add(&r.path, format!("a Redux image of item {k}"));
        }
        for l in it.request.loras.iter().filter(|l| l.path.exists()) {
            add(&l.path, format!("a LoRA file of item {k}"));
        }
    }
    out
}

/// Refuses a manifest output outside `root` (`--output-dir`, else the manifest's folder) unless allowed.
pub fn check_inside(output: &Path, root: &Path, line: usize) -> Result<()> {
    let (out, base) = (resolve(output), resolve(root));
    if out.starts_with(&base) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "manifest line {line}: output {} is outside {}; a manifest's outputs stay inside --output-dir (or the \
         manifest's folder): fix the output column, or give --allow-outside to write there",
        output.display(),
        base.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_follows_the_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("sub")).unwrap();
        std::fs::write(base.join("a.png"), b"x").unwrap();
        assert_eq!(resolve(&base.join("sub/../a.png")), base.join("a.png"));
        assert_eq!(resolve(&base.join("./sub/./new/x.png")), base.join("sub/new/x.png"));
        assert_eq!(resolve(&base.join("sub/../../e.png")), base.parent().unwrap().join("e.png"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("sub"), base.join("link")).unwrap();
            assert_eq!(resolve(&base.join("link/../a.png")), base.join("a.png"));
            assert_eq!(resolve(&base.join("link/b.png")), base.join("sub/b.png"));
        }
    }

    #[test]
    fn inside_checks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("out");
        assert!(check_inside(&root.join("a.png"), &root, 2).is_ok());
        assert!(check_inside(&root.join("x/../a.png"), &root, 2).is_ok());
        let e = check_inside(&root.join("sub/../../e.png"), &root, 3).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("--allow-outside"), "{e}");
        assert!(check_inside(Path::new("/srv/shared/abs.png"), &root, 4).is_err());
    }
}
