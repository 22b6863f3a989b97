//! Helpers the ops tests share. Each test binary uses some of them.
#![allow(dead_code)]

pub mod up;

use std::process::Command;

/// Runs this build's `imctl`: (success, stdout); stderr (logs) is shown on
/// failure only.
pub fn imctl(args: &[&str]) -> (bool, String) {
    imctl_with_env(args, &[])
}

/// `imctl` with more environment (an identity, say).
pub fn imctl_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let (code, out) = imctl_code(args, env);
    (code == 0, out)
}

/// `imctl`: (exit code, stdout): 0 ok, 1 a problem found, 2 could not run.
pub fn imctl_code(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, None).await
}

/// A GET, with a bearer token if given: (status, body).
pub async fn http_get_as(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    sock.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}
