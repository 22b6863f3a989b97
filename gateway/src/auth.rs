//! Bearer tokens: JWT signed HS256 (shared secret) or RS256 (public key);
//! `exp` and `nbf` checked; the user id is the validated `sub`. Any other
//! algorithm, including `none`, is refused.

use jsonwebtoken::{
    decode, decode_header, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use im_streams::ids::{validate_id, IdKind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token algorithm {0} is not accepted")]
    WrongAlgorithm(String),
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
}

/// Seconds of clock skew tolerated on `exp`/`nbf`.
const LEEWAY_SECS: u64 = 5;

impl Verifier {
    pub fn new(
        hs256_secret: Option<&str>,
        rs256_public_pem: Option<&str>,
    ) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(pem) = rs256_public_pem {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| AuthError::Invalid(format!("RS256 key: {e}")))?;
            keys.push((Algorithm::RS256, key));
        }
        Ok(Verifier { keys })
    }

    /// The user id a token proves.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .ok_or_else(|| AuthError::WrongAlgorithm(format!("{:?}", header.alg)))?;
        let mut validation = Validation::new(*alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        validate_id(IdKind::User, &data.claims.sub)
            .map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        Ok(data.claims.sub)
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A development token (HS256), as `imctl token issue` will hand out.
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
