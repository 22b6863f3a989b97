//! The media store's two backends: the same behaviour on a real
//! S3-protocol server (s3s-fs) and on disk; S3's presigned URLs work for a
//! plain HTTP client.

use std::time::Duration;

use im_gateway::media::store::{DiskStore, MediaStore, S3Settings, S3Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 request to a presigned URL; returns (status, body).
async fn request(method: &str, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut sock = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&raw[..split])
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, raw[split + 4..].to_vec())
}

async fn exercise(store: &dyn MediaStore) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(store.size("m1").await.unwrap(), None);
    store.put_file("m1", &file).await.unwrap();
    assert_eq!(store.size("m1").await.unwrap(), Some(bytes.len() as u64));
    let mut back = Vec::new();
    let n = store
        .read("m1", &mut |c| back.extend_from_slice(c))
        .await
        .unwrap();
    assert_eq!((n, back == bytes), (bytes.len() as u64, true));
    store.delete("m1").await.unwrap();
    assert_eq!(store.size("m1").await.unwrap(), None);
    store.delete("m1").await.unwrap();
}

#[tokio::test]
async fn disk_backend_stores_reads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::new(dir.path().join("media")).unwrap();
    exercise(&store).await;
    assert_eq!(
        store
            .presign_put("m2", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn s3_backend_stores_reads_deletes_and_presigns() {
    let s3 = im_testkit::S3Server::start().await.unwrap();
    let store = S3Store::open(&S3Settings {
        endpoint: s3.endpoint(),
        region: "us-east-1".into(),
        bucket: "media".into(),
        access_key: im_testkit::S3_ACCESS_KEY.into(),
        secret_key: im_testkit::S3_SECRET_KEY.into(),
    })
    .await
    .unwrap();
    exercise(&store).await;

    let put = store
        .presign_put("m2", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let (status, _) = request("PUT", &put, b"straight to storage").await;
    assert_eq!(status, 200);
    assert_eq!(store.size("m2").await.unwrap(), Some(19));
    let get = store
        .presign_get("m2", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let (status, body) = request("GET", &get, b"").await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"straight to storage"[..])
    );
    // A signature for one object does not open another.
    let forged = get.replace("/m2?", "/m1?");
    let (status, _) = request("GET", &forged, b"").await;
    assert_eq!(status, 403);
}
