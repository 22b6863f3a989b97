//! Keys from an identity provider's JWKS URL: fetched at start, cached by
//! key id, fetched again when stale or when a token names a key not in the
//! cache (a rotation), at most once per `refresh_min` so that tokens with
//! made-up key ids cannot make the gateway hammer the provider.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthError;

/// Keys kept from one document: providers publish a handful (current and
/// next); more is a misconfiguration, not a reason to grow without bound.
pub const JWKS_KEYS_MAX: usize = 64;

/// Largest JWKS document read.
pub const JWKS_BYTES_MAX: usize = 256 * 1024;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Cached keys are fetched again after this even if no token asks: a key
/// the provider withdrew stops being accepted within it.
pub const JWKS_TTL: Duration = Duration::from_secs(600);

type Keys = HashMap<String, (Algorithm, DecodingKey)>;

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    refresh_min: Duration,
    /// The keys, when they were fetched, and when a fetch was last tried
    /// (a failed one too: an identity provider that is down is not asked
    /// more than once per `refresh_min`).
    cache: Mutex<(Keys, Option<Instant>)>,
    tried: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: String, refresh_min: Duration) -> Self {
        Jwks {
            url,
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("an HTTP client"),
            refresh_min,
            cache: Mutex::new((HashMap::new(), None)),
            tried: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, kid: &str) -> (Option<(Algorithm, DecodingKey)>, Option<Instant>) {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        (cache.0.get(kid).cloned(), cache.1)
    }

    /// The key `kid` names (the only key, when the token names none).
    pub async fn key(&self, kid: Option<&str>) -> Result<(Algorithm, DecodingKey), AuthError> {
        let kid = match kid {
            Some(k) => k.to_string(),
            None => self.only_kid().await?,
        };
        let (found, fetched) = self.cached(&kid);
        let stale = fetched.is_none_or(|at| at.elapsed() >= JWKS_TTL);
        if let (Some(key), false) = (&found, stale) {
            return Ok(key.clone());
        }
        let _one = self.fetching.lock().await;
        let (found, _) = self.cached(&kid);
        if found.is_none() || stale {
            match self.refresh().await {
                // Keys fetched before still serve while the provider is down.
                Err(e) if found.is_some() => {
                    tracing::warn!(error = %e, "token keys not refreshed: using the cached ones");
                }
                other => other?,
            }
        }
        self.cached(&kid).0.ok_or(AuthError::UnknownKey(kid))
    }

    /// Fetches the document again unless the last try (failed or not) was
    /// within `refresh_min`. The caller holds `fetching`.
    async fn refresh(&self) -> Result<(), AuthError> {
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            if tried.is_some_and(|at| at.elapsed() < self.refresh_min) {
                return Ok(());
            }
            *tried = Some(Instant::now());
        }
        let keys = self.fetch().await?;
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = (keys, Some(Instant::now()));
        Ok(())
    }

    async fn only_kid(&self) -> Result<String, AuthError> {
        {
            let _one = self.fetching.lock().await;
            if self.cached("").1.is_none() {
                self.refresh().await?;
            }
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.0.keys().collect::<Vec<_>>()[..] {
            [only] => Ok(only.clone()),
            _ => Err(AuthError::NoKid),
        }
    }

    async fn fetch(&self) -> Result<Keys, AuthError> {
        let fail = |e: im_streams::error::BoxError| AuthError::Keys {
            url: self.url.clone(),
            source: e,
        };
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| fail(e.into()))?;
        let response = response.error_for_status().map_err(|e| fail(e.into()))?;
        if response
            .content_length()
            .is_some_and(|n| n as usize > JWKS_BYTES_MAX)
        {
            return Err(fail("the document is too large".into()));
        }
        let body = response.bytes().await.map_err(|e| fail(e.into()))?;
        if body.len() > JWKS_BYTES_MAX {
            return Err(fail("the document is too large".into()));
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| fail(e.into()))?;
        let mut keys = HashMap::new();
        for jwk in set.keys.iter().take(JWKS_KEYS_MAX) {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), algorithm_of(jwk)) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (alg, key));
            }
        }
        tracing::info!(url = %self.url, keys = keys.len(), "token keys fetched");
        Ok(keys)
    }
}

/// The algorithm a key is for: its `alg`, else what its type implies.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg.to_string().parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }
}
