//! Relative paths the commands default to (`data`, `clients/web/dist`)
//! mean the checkout's, wherever `imctl` is run from: a path that does not
//! exist from the working directory is looked for in the checkout this
//! `imctl` was built in (`<checkout>/target/<profile>/imctl`). Without
//! this, `imctl token issue` run elsewhere would sign with a secret no
//! running stack has.

use std::path::{Path, PathBuf};

/// The checkout root this binary was built in, if it looks like one.
fn checkout_root() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let root = exe.parent()?.parent()?.parent()?;
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// `path` as given when absolute or present here; else the checkout's
/// when present there; else as given (a new directory is made here).
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    match checkout_root().map(|r| r.join(path)) {
        Some(p) if p.exists() => p,
        _ => path.to_path_buf(),
    }
}

/// `resolve` as a clap value parser (applied to defaults too).
pub fn checkout_path(text: &str) -> Result<PathBuf, String> {
    Ok(resolve(Path::new(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_present_here_or_absolute_stays() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(dir.path()), dir.path());
        assert_eq!(resolve(Path::new("Cargo.toml")), Path::new("Cargo.toml"));
        let missing = Path::new("no-such-dir-anywhere");
        assert_eq!(resolve(missing), missing);
    }
}
