//! A real S3-protocol server per test: `s3s-fs` (a Rust package, installed
//! by `scripts/setup.sh` at the version pinned in `tools/versions.env`) on a
//! free port over a temp dir, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, workspace_root, HarnessError, READY_TIMEOUT};

pub const S3_ACCESS_KEY: &str = "im-test-access";
pub const S3_SECRET_KEY: &str = "im-test-secret-key";

/// The s3s-fs binary: `IM_S3S_FS` or the one setup installs.
pub fn s3s_fs_binary() -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("IM_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/s3s-fs"));
    Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|_| HarnessError::Missing(path.clone(), "s3s-fs".into()))?;
    Ok(path)
}

pub struct S3Server {
    child: Child,
    port: u16,
    pub dir: tempfile::TempDir,
}

impl S3Server {
    pub async fn start() -> Result<Self, HarnessError> {
        let bin = s3s_fs_binary()?;
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = S3Server { child, port, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        // Ready when it accepts connections.
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(HarnessError::NotReady(format!("s3s-fs exited: {status}")));
            }
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady("s3s-fs did not listen".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
