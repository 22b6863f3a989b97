//! The object-storage adapter against a real S3-protocol server.

use im_replay::objects::{Objects, S3Args};

#[tokio::test]
async fn put_get_and_list_under_a_prefix() {
    let s3 = im_testkit::S3Server::start().await.unwrap();
    let args = S3Args {
        s3_endpoint: s3.endpoint(),
        s3_access_key: im_testkit::S3_ACCESS_KEY.into(),
        s3_secret_key: im_testkit::S3_SECRET_KEY.into(),
    };
    let objects = Objects::open(&args, "bucket1").await.unwrap();
    objects.put("p/a", b"one".to_vec()).await.unwrap();
    assert_eq!(&objects.get("p/a").await.unwrap()[..], b"one");
    assert_eq!(objects.get_if_present("p/missing").await.unwrap(), None);
    assert!(objects.get("p/missing").await.is_err());
}
