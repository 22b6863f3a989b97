//! Secrets `imctl up` keeps in its data dir: generated once, readable by
//! the owner only, read again on every start.

use std::path::Path;

use anyhow::Context;

/// An alphanumeric secret of `len` characters (~5.95 bits each).
pub fn random(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Writes `content` to `path`, readable and writable by the owner only.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
