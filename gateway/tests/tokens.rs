//! Tokens from identity providers: ES256 and EdDSA keys from a JWKS URL
//! this test serves, rotated; issuer and audience; the user id from a
//! configured claim, with external ids mapped; and a real gateway that
//! takes such a token at the WebSocket upgrade.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_gateway::auth::{AuthError, TokenConfig, UserIds, Verifier};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const ES_PRIVATE: &str = include_str!("keys/es256-test-private.pem");
const ED_PRIVATE: &str = include_str!("keys/eddsa-test-private.pem");
const JWKS_ES: &str = include_str!("keys/jwks-es.json");
const JWKS_ED: &str = include_str!("keys/jwks-ed.json");
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "im-backbone";

fn sign(alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        other => panic!("{other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    encode(&header, &claims, &key).unwrap()
}

fn claims(email: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "email": email,
        "exp": im_gateway::auth::now_secs() + 600,
    })
}

/// Serves the current JWKS document at `/jwks`, counting fetches.
async fn jwks_server(doc: Arc<Mutex<&'static str>>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (doc, hits) = (doc.clone(), counted.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let body = *doc.lock().unwrap();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwks"), hits)
}

fn config(url: &str) -> TokenConfig {
    TokenConfig {
        jwks_url: Some(url.to_string()),
        jwks_refresh_min: Duration::from_millis(300),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        user_claim: "email".into(),
        user_ids: UserIds::Hashed,
        ..Default::default()
    }
}

#[tokio::test]
async fn keys_from_a_jwks_rotate_and_every_claim_is_checked() {
    let doc = Arc::new(Mutex::new(JWKS_ES));
    let (url, hits) = jwks_server(doc.clone()).await;
    let verifier = Verifier::new(&config(&url)).unwrap();
    let alice = verifier
        .verify(&sign(Algorithm::ES256, "es-1", claims("alice@example.com")))
        .await
        .unwrap();
    assert!(alice.starts_with("x_"), "{alice}");
    let mut wrong = claims("alice@example.com");
    wrong["aud"] = "someone-else".into();
    let refused = verifier
        .verify(&sign(Algorithm::ES256, "es-1", wrong))
        .await;
    assert_eq!(refused, Err(AuthError::WrongAudience));
    let mut wrong = claims("alice@example.com");
    wrong["iss"] = "https://evil.test".into();
    let refused = verifier
        .verify(&sign(Algorithm::ES256, "es-1", wrong))
        .await;
    assert_eq!(refused, Err(AuthError::WrongIssuer));
    let mut wrong = claims("alice@example.com");
    wrong["exp"] = (im_gateway::auth::now_secs() - 600).into();
    let refused = verifier
        .verify(&sign(Algorithm::ES256, "es-1", wrong))
        .await;
    assert_eq!(refused, Err(AuthError::Expired));
    for claim in ["aud", "iss"] {
        let mut wrong = claims("alice@example.com");
        wrong.as_object_mut().unwrap().remove(claim);
        let refused = verifier
            .verify(&sign(Algorithm::ES256, "es-1", wrong))
            .await;
        assert_eq!(
            refused,
            Err(AuthError::MissingClaim(claim.into())),
            "{claim}"
        );
    }
    let mut wrong = claims("x");
    wrong.as_object_mut().unwrap().remove("email");
    let refused = verifier
        .verify(&sign(Algorithm::ES256, "es-1", wrong))
        .await;
    assert_eq!(refused, Err(AuthError::MissingClaim("email".into())));

    // A key the document does not have yet; made-up kids in a burst cost
    // at most one fetch per refresh interval.
    let ed_token = sign(Algorithm::EdDSA, "ed-1", claims("bob@example.com"));
    assert_eq!(
        verifier.verify(&ed_token).await,
        Err(AuthError::UnknownKey("ed-1".into()))
    );
    let before = hits.load(Ordering::SeqCst);
    for i in 0..50 {
        let forged = sign(Algorithm::ES256, &format!("nope-{i}"), claims("m@x"));
        assert!(verifier.verify(&forged).await.is_err());
    }
    assert!(hits.load(Ordering::SeqCst) - before <= 1, "{hits:?}");

    // The provider rotates to the EdDSA key: taken once the interval has
    // passed; the withdrawn key is refused.
    *doc.lock().unwrap() = JWKS_ED;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let bob = verifier.verify(&ed_token).await.unwrap();
    assert!(bob.starts_with("x_") && bob != alice, "{bob}");
    let old = sign(Algorithm::ES256, "es-1", claims("alice@example.com"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        verifier.verify(&old).await,
        Err(AuthError::UnknownKey("es-1".into()))
    );
}

#[tokio::test]
async fn strict_ids_refuse_an_external_id_and_unknown_algorithms_are_refused() {
    let doc = Arc::new(Mutex::new(JWKS_ES));
    let (url, _) = jwks_server(doc).await;
    let strict = TokenConfig {
        user_ids: UserIds::Strict,
        ..config(&url)
    };
    let verifier = Verifier::new(&strict).unwrap();
    let token = sign(Algorithm::ES256, "es-1", claims("alice@example.com"));
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::BadUserId { .. })
    ));
    let hs = common::token("alice");
    assert!(matches!(
        verifier.verify(&hs).await,
        Err(AuthError::WrongAlgorithm(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_takes_a_token_from_its_identity_provider() {
    let stack = common::Stack::start(im_gateway::Limits::default()).await;
    let doc = Arc::new(Mutex::new(JWKS_ED));
    let (url, _) = jwks_server(doc).await;
    let gw = common::spawn_gateway_env(
        &stack.url(),
        "{}",
        &[
            ("IM_JWT_JWKS_URL", url.as_str()),
            ("IM_JWT_ISSUER", ISSUER),
            ("IM_JWT_AUDIENCE", AUDIENCE),
            ("IM_JWT_USER_CLAIM", "email"),
            ("IM_JWT_USER_IDS", "hashed"),
        ],
    );
    let token = sign(Algorithm::EdDSA, "ed-1", claims("carol@example.com"));
    let client = common::try_connect(gw.1, Some(&token), common::Wire::Json, "d1").await;
    assert!(client.is_ok());
    let forged = sign(Algorithm::ES256, "es-1", claims("carol@example.com"));
    let refused = common::try_connect(gw.1, Some(&forged), common::Wire::Json, "d1").await;
    assert_eq!(refused.err(), Some(401));
}
