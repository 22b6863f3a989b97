//! The gateway's delivery connection (its own NATS protocol code) to a
//! server that requires TLS and a user: with a password, and with an nkey
//! signing the server's nonce. A delivery published to the user reaches
//! the device it joined for; a wrong password never connects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use im_gateway::dispatch::Dispatcher;
use im_gateway::outbox::{Outbound, Outbox};
use im_schema::v1::{self, envelope::Payload};
use im_streams::connect::{NatsArgs, NatsAuth};
use im_testkit::{NatsServer, ServerAuth};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn ca() -> std::path::PathBuf {
    format!("{KEYS}/tls-ca.pem").into()
}

/// A server requiring TLS, with users `pub`/`pw` and `gw`/`gwpw`, and the
/// nkey user `nkey`.
async fn server(nkey: &str) -> NatsServer {
    let authorization = format!(
        "tls {{\n  cert_file: \"{KEYS}/tls-server.pem\"\n  key_file: \"{KEYS}/tls-server-key.pem\"\n}}\n\
         authorization {{\n  users = [\n    {{ user: \"pub\", password: \"pw\" }}\n    \
         {{ user: \"gw\", password: \"gwpw\" }}\n    {{ nkey: \"{nkey}\" }}\n  ]\n}}\n"
    );
    NatsServer::start_secured(ServerAuth {
        authorization,
        user: "pub".into(),
        password: "pw".into(),
        ca: Some(ca()),
    })
    .await
    .expect("a TLS nats-server")
}

fn tls(auth: NatsAuth) -> NatsAuth {
    NatsAuth {
        tls_ca: Some(ca()),
        ..auth
    }
}

/// Joins `bob` through `dispatcher`, publishes a delivery to him, and
/// returns what his device's outbox got.
async fn delivered(server: &NatsServer, dispatcher: &Dispatcher) -> Vec<Bytes> {
    let outbox = Arc::new(Outbox::new(16));
    let first = Outbound::reply(v1::Envelope {
        payload: Some(Payload::Connected(Default::default())),
        ..Default::default()
    });
    tokio::time::timeout(
        Duration::from_secs(20),
        dispatcher.join("bob", (1, "phone"), outbox.clone(), 4, first),
    )
    .await
    .expect("joined in time")
    .expect("subscribed");
    let publisher = NatsArgs::new(server.url())
        .with_auth(tls(NatsAuth::password("pub", "pw")))
        .connect("publisher")
        .await
        .unwrap();
    let event = im_schema::encode(&v1::Envelope::default());
    publisher
        .publish("im.deliver.bob.e", event.clone().into())
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    let mut got = std::collections::VecDeque::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && tokio::time::Instant::now() < deadline {
        std::future::poll_fn(|cx| match outbox.poll_drain(cx, &mut got, 16) {
            std::task::Poll::Pending => std::task::Poll::Ready(()),
            ready => ready.map(|_| ()),
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got.into_iter()
        .filter_map(|o| match o {
            Outbound::Delivery(d) => Some(d.proto.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn over_tls_with_a_password_and_with_an_nkey() {
    let pair = nkeys::KeyPair::new_user();
    let server = server(&pair.public_key()).await;
    let url = server.url();

    let by_password =
        Dispatcher::start(&url, &tls(NatsAuth::password("gw", "gwpw")), None).unwrap();
    assert_eq!(delivered(&server, &by_password).await.len(), 1);

    let seed_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(seed_file.path(), pair.seed().unwrap()).unwrap();
    let by_nkey = NatsAuth {
        nkey: Some(seed_file.path().to_path_buf()),
        ..Default::default()
    };
    let by_nkey = Dispatcher::start(&url, &tls(by_nkey), None).unwrap();
    assert_eq!(delivered(&server, &by_nkey).await.len(), 1);

    let wrong = Dispatcher::start(&url, &tls(NatsAuth::password("gw", "nope")), None).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!wrong.is_connected());
}
