//! Media end to end, on a real S3-protocol server (s3s-fs) and on disk:
//! upload → MediaRef; sent in a message; a member downloads the same bytes,
//! a non-member is refused; presigned upload + complete; over-limit, wrong
//! type and over-quota uploads refused with nothing left in storage.

mod common;

use std::time::{Duration, Instant};

use common::*;
use im_gateway::media::{store::S3Settings, MediaBackend};
use im_gateway::Limits;
use im_streams::{Action, AppendOutcome, Command, MessageBody, Role};
use sha2::{Digest, Sha256};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

/// Media objects in a directory tree (the storage's, whichever backend).
fn files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += files(&p);
        } else {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            // Objects only: not thumbnails, not a backend's hidden files.
            if !name.starts_with('.') && !name.ends_with("_thumb") {
                n += 1;
            }
        }
    }
    n
}

/// The bytes a download answer leads to: the body itself (disk) or a
/// presigned URL's (S3).
async fn fetch(addr: std::net::SocketAddr, user: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, body) = exchange(addr, "GET", path, Some(&token(user)), "", b"").await;
    if status != 200 || !body.starts_with(b"{\"") {
        return (status, body);
    }
    let url = json(&body)["url"].as_str().unwrap().to_string();
    exchange(addr, "GET", &url, None, "", b"").await
}

async fn scenario(backend: MediaBackend, storage_dir: &std::path::Path) {
    let limits = Limits {
        media_upload_bytes_max: 100_000,
        media_large_bytes_max: 1_000_000,
        media_quota_bytes_per_day: 400_000,
        ..Limits::default()
    };
    let mut stack = Stack::start(limits.clone()).await;
    let addr = stack.add_gateway_with(limits, Some(backend)).await;
    let app = appender(&stack).await;
    let create = Command {
        actor: "ann".into(),
        client_msg_id: "c1".into(),
        action: Action::CreateGroup {
            title: "pics".into(),
            members: vec![("ben".into(), Role::Member)],
        },
    };
    app.execute("pics", &create, "").await.unwrap();

    // Upload a small image: size, checksum, type, dimensions.
    let image = png(40, 30, false);
    let (status, body) = upload(addr, "ann", "image/png", &image).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r = json(&body);
    assert_eq!(r["size"], image.len().to_string());
    assert_eq!(r["checksum"], hex::encode(Sha256::digest(&image)));
    assert_eq!(
        (
            r["mime"].as_str(),
            r["width"].as_u64(),
            r["height"].as_u64()
        ),
        (Some("image/png"), Some(40), Some(30))
    );
    let reference: im_schema::v1::MediaRef =
        im_schema::from_json(&String::from_utf8_lossy(&body)).unwrap();
    let id = reference.media_id.clone();

    // Sent in a message by its uploader; not by someone else.
    let send = |actor: &str, cmid: &str| Command {
        actor: actor.into(),
        client_msg_id: cmid.into(),
        action: Action::Send {
            peer: None,
            body: MessageBody::Media(reference.clone()),
            meta: Default::default(),
        },
    };
    let out = app.execute("pics", &send("ben", "b1"), "").await.unwrap();
    assert!(matches!(out, AppendOutcome::Rejected(_)), "{out:?}");
    let out = app.execute("pics", &send("ann", "a1"), "").await.unwrap();
    assert!(matches!(out, AppendOutcome::Stored { .. }), "{out:?}");

    // A member gets the bytes; a non-member is refused.
    let (status, bytes) = fetch(addr, "ben", &format!("/v1/media/{id}")).await;
    assert_eq!((status, bytes == image), (200, true));
    let (status, _) = fetch(addr, "carl", &format!("/v1/media/{id}")).await;
    assert_eq!(status, 403);
    let (status, _) = fetch(addr, "ben", "/v1/media/no-such-media").await;
    assert_eq!(status, 404);
    // The thumbnail appears (made off the request path).
    let deadline = Instant::now() + Duration::from_secs(10);
    let thumb = loop {
        let (status, bytes) = fetch(addr, "ben", &format!("/v1/media/{id}?thumbnail=true")).await;
        if status == 200 {
            break bytes;
        }
        assert!(Instant::now() < deadline, "no thumbnail: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = image::load_from_memory(&thumb).unwrap();
    assert!(t.width() <= 256 && t.height() <= 256 && t.width() > 0);

    // Refusals leave nothing behind.
    let before = files(storage_dir);
    assert!(before >= 1, "the storage dir holds no objects: wrong dir?");
    let big = png(400, 400, true);
    assert!(big.len() > 100_000);
    let (status, body) = upload(addr, "ann", "image/png", &big).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, body) = upload(addr, "ann", "image/jpeg", &image).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("declared image/jpeg but the content is image/png")
    );
    let (status, _) = upload(addr, "ann", "text/html", b"<html>").await;
    assert_eq!(status, 400);
    // Quota: 400,000 a day; ~90 KB uploads until it is full.
    let medium = png(170, 170, true);
    assert!(
        medium.len() < 100_000 && medium.len() > 60_000,
        "{}",
        medium.len()
    );
    let mut accepted = 0;
    let refusal = loop {
        let (status, body) = upload(addr, "dora", "image/png", &medium).await;
        if status != 200 {
            break (status, String::from_utf8_lossy(&body).to_string());
        }
        accepted += 1;
        assert!(accepted < 10);
    };
    assert_eq!(refusal.0, 429, "{}", refusal.1);
    assert!(refusal.1.contains("quota exceeded"), "{}", refusal.1);
    assert_eq!(accepted, 400_000 / medium.len());
    assert_eq!(
        files(storage_dir),
        before + accepted,
        "a refused upload left an object"
    );

    // Presigned upload: PUT straight to storage (or the gateway, on disk),
    // then complete with the size and checksum.
    let large = png(200, 100, false);
    let sts = |size: usize| {
        let body = format!("{{\"mime\":\"image/png\",\"size\":{size}}}");
        async move {
            let (status, body) = exchange(
                addr,
                "POST",
                "/v1/media/sts",
                Some(&token("ann")),
                "application/json",
                body.as_bytes(),
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            json(&body)
        }
    };
    let put = |grant: serde_json::Value, bytes: Vec<u8>| async move {
        let url = grant["uploadUrl"].as_str().unwrap().to_string();
        let bearer = (!url.starts_with("http")).then(|| token("ann"));
        let (status, body) = exchange(addr, "PUT", &url, bearer.as_deref(), "", &bytes).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        grant["mediaId"].as_str().unwrap().to_string()
    };
    let complete = |id: String, size: usize, checksum: String| async move {
        let body = format!("{{\"size\":{size},\"checksum\":\"{checksum}\"}}");
        exchange(
            addr,
            "POST",
            &format!("/v1/media/{id}/complete"),
            Some(&token("ann")),
            "application/json",
            body.as_bytes(),
        )
        .await
    };
    let sum = hex::encode(Sha256::digest(&large));
    let id2 = put(sts(large.len()).await, large.clone()).await;
    let (status, body) = complete(id2.clone(), large.len(), sum.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r = json(&body);
    assert_eq!(
        (r["width"].as_u64(), r["checksum"].as_str()),
        (Some(200), Some(sum.as_str()))
    );
    let (status, bytes) = fetch(addr, "ann", &format!("/v1/media/{id2}")).await;
    assert_eq!((status, bytes == large), (200, true));
    // A wrong checksum or size is refused and the object removed.
    let before = files(storage_dir);
    let id3 = put(sts(large.len()).await, large.clone()).await;
    let (status, body) = complete(id3.clone(), large.len(), "00".repeat(32)).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("checksum mismatch"));
    let id4 = put(sts(large.len()).await, large.clone()).await;
    let (status, body) = complete(id4, large.len() - 1, sum.clone()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("size mismatch"));
    assert_eq!(files(storage_dir), before);
    // A completed id cannot be completed again.
    let (status, _) = complete(id2, large.len(), sum).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_on_s3() {
    let s3 = im_testkit::S3Server::start().await.unwrap();
    let backend = MediaBackend::S3(S3Settings {
        endpoint: s3.endpoint(),
        region: "us-east-1".into(),
        bucket: "media".into(),
        access_key: im_testkit::S3_ACCESS_KEY.into(),
        secret_key: im_testkit::S3_SECRET_KEY.into(),
    });
    scenario(backend, &s3.dir.path().join("media")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    scenario(
        MediaBackend::Disk(dir.path().join("media")),
        &dir.path().join("media"),
    )
    .await;
}
