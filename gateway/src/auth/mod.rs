//! Bearer tokens: JWTs signed HS256 (a shared secret), RS256, ES256 or
//! EdDSA (public keys from files, or from an identity provider's JWKS URL
//! with rotation, `jwks.rs`). `exp` and `nbf` are checked, `iss` and `aud`
//! when configured; the user id is a configurable claim (`sub` by default),
//! mapped as `user_id.rs` says. Any other algorithm, `none` included, is
//! refused, and every refusal says why (`imctl token check`).

mod jwks;
mod user_id;

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{
    decode, decode_header, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

pub use jwks::{JWKS_BYTES_MAX, JWKS_KEYS_MAX, JWKS_TTL};
pub use user_id::{user_id, UserIds};

/// The token algorithms a gateway takes (any other is refused, `none`
/// included).
pub const ALGORITHMS: [&str; 4] = ["HS256", "RS256", "ES256", "EdDSA"];

/// Why a token is refused. What a client is told (the message) names the
/// rule, never a parser's or a library's text; that stays the source, for
/// the logs.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("not a JWT")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    #[error("the token names no key (kid), and the JWKS has several")]
    NoKid,
    #[error("token algorithm {0} is not accepted")]
    WrongAlgorithm(String),
    #[error("no key {0:?} is known (not in the configured keys or the JWKS)")]
    UnknownKey(String),
    #[error("the signature does not verify with the key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the issuer (iss) is not the one configured")]
    WrongIssuer,
    #[error("the audience (aud) is not the one configured")]
    WrongAudience,
    #[error("the token has no {0:?} claim")]
    MissingClaim(String),
    #[error("claim {claim:?} is not a usable user id")]
    BadUserId {
        claim: String,
        #[source]
        reason: im_streams::ids::IdError,
    },
    #[error("token keys unavailable from {url}")]
    Keys {
        url: String,
        #[source]
        source: im_streams::error::BoxError,
    },
    #[error("the configured {alg:?} key does not parse")]
    BadKey {
        alg: Algorithm,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("invalid token")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// Two refusals are the same when they are of one kind and say the same
/// (sources aside: what they carry has no equality of its own).
impl PartialEq for AuthError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for AuthError {}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm("for this key".into()),
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                AuthError::Malformed(e)
            }
            _ => AuthError::Invalid(e),
        }
    }
}

/// Which tokens the gateway accepts. At least one key source is required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenConfig {
    pub hs256_secret: Option<String>,
    pub rs256_public_pem: Option<String>,
    pub es256_public_pem: Option<String>,
    pub eddsa_public_pem: Option<String>,
    /// An identity provider's JWKS document (keys by `kid`, any of RS256,
    /// ES256, EdDSA).
    pub jwks_url: Option<String>,
    /// An unknown `kid` fetches the JWKS again at most this often.
    pub jwks_refresh_min: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim holding the user id.
    pub user_claim: String,
    pub user_ids: UserIds,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            hs256_secret: None,
            rs256_public_pem: None,
            es256_public_pem: None,
            eddsa_public_pem: None,
            jwks_url: None,
            // Rotations are rare; a flood of made-up kids costs one fetch
            // per this.
            jwks_refresh_min: Duration::from_secs(30),
            issuer: None,
            audience: None,
            user_claim: "sub".into(),
            user_ids: UserIds::Strict,
        }
    }
}

impl TokenConfig {
    pub fn validate(&self) -> Result<(), String> {
        let sources = [
            self.hs256_secret.is_some(),
            self.rs256_public_pem.is_some(),
            self.es256_public_pem.is_some(),
            self.eddsa_public_pem.is_some(),
            self.jwks_url.is_some(),
        ];
        if !sources.contains(&true) {
            return Err("set IM_JWT_HS256_SECRET, a public key file or IM_JWT_JWKS_URL".into());
        }
        if self.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err("the HS256 secret must be at least 32 bytes".into());
        }
        if self.user_claim.is_empty() {
            return Err("IM_JWT_USER_CLAIM is empty".into());
        }
        Ok(())
    }
}

/// What `imctl token issue` signs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    jwks: Option<jwks::Jwks>,
    config: TokenConfig,
}

/// Seconds of clock skew tolerated on `exp`/`nbf`.
const LEEWAY_SECS: u64 = 5;

fn pem_key(
    pem: &Option<String>,
    alg: Algorithm,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<Option<(Algorithm, DecodingKey)>, AuthError> {
    pem.as_ref()
        .map(|p| {
            parse(p.as_bytes())
                .map(|k| (alg, k))
                .map_err(|source| AuthError::BadKey { alg, source })
        })
        .transpose()
}

impl Verifier {
    pub fn new(config: &TokenConfig) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        let pems = [
            (
                &config.rs256_public_pem,
                Algorithm::RS256,
                DecodingKey::from_rsa_pem as fn(&[u8]) -> _,
            ),
            (
                &config.es256_public_pem,
                Algorithm::ES256,
                DecodingKey::from_ec_pem,
            ),
            (
                &config.eddsa_public_pem,
                Algorithm::EdDSA,
                DecodingKey::from_ed_pem,
            ),
        ];
        for (pem, alg, parse) in pems {
            keys.extend(pem_key(pem, alg, parse)?);
        }
        let jwks = config
            .jwks_url
            .clone()
            .map(|url| jwks::Jwks::new(url, config.jwks_refresh_min));
        Ok(Verifier {
            keys,
            jwks,
            config: config.clone(),
        })
    }

    /// The key for a token: a configured one for its algorithm, else the
    /// JWKS's for its `kid`.
    async fn key_for(&self, header: &Header) -> Result<(Algorithm, DecodingKey), AuthError> {
        if let Some(found) = self.keys.iter().find(|(alg, _)| *alg == header.alg) {
            return Ok(found.clone());
        }
        let Some(jwks) = &self.jwks else {
            return Err(AuthError::WrongAlgorithm(format!("{:?}", header.alg)));
        };
        let (alg, key) = jwks.key(header.kid.as_deref()).await?;
        if alg != header.alg {
            return Err(AuthError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        Ok((alg, key))
    }

    /// The user id a token proves.
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = decode_header(token)?;
        let (alg, key) = self.key_for(&header).await?;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be in the token: one that
        // leaves the claim out is not for us.
        let mut required = vec!["exp"];
        required.extend(self.config.issuer.as_ref().map(|_| "iss"));
        required.extend(self.config.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)?;
        let claim = &self.config.user_claim;
        let value = data
            .claims
            .get(claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::MissingClaim(claim.clone()))?;
        user_id(claim, value, self.config.user_ids)
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A development token (HS256), as `imctl token issue` hands out.
pub fn issue_hs256(secret: &str, user: &str, ttl_secs: u64) -> String {
    let claims = Claims {
        sub: user.to_string(),
        exp: now_secs() + ttl_secs,
        nbf: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}
