//! Opening the delivery connection: TCP, the server's INFO, TLS when the
//! configuration or the server asks for it, then CONNECT with the
//! configured identity (a user and password; or an nkey, or a credentials
//! file's JWT, signing the server's nonce) and a PING whose PONG says the
//! server took it (an authorization error arrives before it).

use std::path::Path;
use std::sync::Arc;

use async_nats::ServerAddr;
use base64::Engine as _;
use bytes::BytesMut;
use im_streams::connect::NatsAuth;
use im_streams::nats_auth::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::{SessionError, PAYLOAD_MAX};
use super::wire::{self, ServerOp};
use super::StartError;

/// A connection, over TLS or not.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// How the connection proves who it is.
#[derive(Clone, Default)]
pub enum Proof {
    /// A user and password in the server's URL, if any.
    #[default]
    FromUrl,
    Password {
        user: String,
        password: String,
    },
    /// An nkey seed; with a user JWT when from a credentials file.
    Signed {
        seed: String,
        jwt: Option<String>,
    },
}

/// Who the connection is, and the TLS it speaks.
#[derive(Clone, Default)]
pub struct Credentials {
    pub proof: Proof,
    /// Set when TLS is configured (a CA), or built when a server asks.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Credentials {
    /// The configured identity and trust.
    pub fn of(auth: &NatsAuth) -> Result<Self, StartError> {
        let proof = match auth.identity()? {
            Identity::Anonymous => Proof::FromUrl,
            Identity::Password { user, password } => Proof::Password { user, password },
            Identity::Nkey(seed) => Proof::Signed { seed, jwt: None },
            Identity::Creds(path) => creds_file(&path)?,
        };
        if let Proof::Signed { seed, .. } = &proof {
            nkeys::KeyPair::from_seed(seed).map_err(|e| StartError::credentials("nkey seed", e))?;
        }
        let tls = match &auth.tls_ca {
            Some(ca) => Some(Arc::new(tls_config(Some(ca))?)),
            None => None,
        };
        Ok(Credentials { proof, tls })
    }
}

/// A credentials file: the user JWT and the nkey seed, each between its
/// BEGIN and END lines.
fn creds_file(path: &Path) -> Result<Proof, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::credentials(path.display().to_string(), e))?;
    let after = |marker: &str| {
        let mut lines = text.lines().skip_while(|l| !l.contains(marker));
        lines.next()?;
        lines
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    };
    match (after("BEGIN NATS USER JWT"), after("BEGIN USER NKEY SEED")) {
        (Some(jwt), Some(seed)) => Ok(Proof::Signed {
            seed,
            jwt: Some(jwt),
        }),
        _ => Err(StartError::credentials(
            path.display().to_string(),
            "no user JWT and nkey seed",
        )),
    }
}

/// Roots: the CA given, else the platform's.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, StartError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |e: im_streams::error::BoxError| StartError::credentials("TLS", e);
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.into()))? {
                roots
                    .add(cert.map_err(|e| bad(e.into()))?)
                    .map_err(|e| bad(e.into()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.into()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The CONNECT fields that prove who we are, for the server's `nonce`.
fn proof_fields(
    proof: &Proof,
    server: &ServerAddr,
    nonce: Option<&str>,
) -> Result<serde_json::Map<String, serde_json::Value>, SessionError> {
    let mut fields = serde_json::Map::new();
    match proof {
        Proof::FromUrl => {
            if let (Some(user), Some(pass)) = (server.username(), server.password()) {
                fields.insert("user".into(), user.into());
                fields.insert("pass".into(), pass.into());
            }
        }
        Proof::Password { user, password } => {
            fields.insert("user".into(), user.clone().into());
            fields.insert("pass".into(), password.clone().into());
        }
        Proof::Signed { seed, jwt } => {
            let nkey = |e: nkeys::error::Error| SessionError::Handshake {
                what: "nkey",
                source: Some(e.into()),
            };
            let pair = nkeys::KeyPair::from_seed(seed).map_err(nkey)?;
            let nonce = nonce.ok_or(SessionError::Handshake {
                what: "no nonce to sign",
                source: None,
            })?;
            let sig = pair.sign(nonce.as_bytes()).map_err(nkey)?;
            let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
            fields.insert("sig".into(), sig.into());
            match jwt {
                Some(jwt) => fields.insert("jwt".into(), jwt.clone().into()),
                None => fields.insert("nkey".into(), pair.public_key().into()),
            };
        }
    }
    Ok(fields)
}

/// Connects and says who we are; the stream once the server took it.
pub async fn handshake(
    server: &ServerAddr,
    credentials: &Credentials,
    buf: &mut BytesMut,
) -> Result<Stream, SessionError> {
    let tcp = TcpStream::connect((server.host(), server.port())).await?;
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    let info = loop {
        if tcp.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if let Some(op) = wire::parse(buf, PAYLOAD_MAX)? {
            match op {
                ServerOp::Info(info) => break info,
                ServerOp::Err(e) => return Err(SessionError::Server(e)),
                _ => {}
            }
        }
    };
    let wants_tls = credentials.tls.is_some() || info.tls_required || server.tls_required();
    let mut stream: Stream = if wants_tls {
        let config = match &credentials.tls {
            Some(c) => c.clone(),
            None => Arc::new(tls_config(None).map_err(|e| SessionError::Handshake {
                what: "TLS",
                source: Some(e.into()),
            })?),
        };
        let name =
            rustls::pki_types::ServerName::try_from(server.host().to_string()).map_err(|e| {
                SessionError::Handshake {
                    what: "TLS name",
                    source: Some(e.into()),
                }
            })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let fields = proof_fields(&credentials.proof, server, info.nonce.as_deref())?;
    let mut hello = wire::connect_line("im-gateway-deliveries", fields, wants_tls);
    hello.extend_from_slice(wire::PING);
    stream.write_all(&hello).await?;
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        while let Some(op) = wire::parse(buf, PAYLOAD_MAX)? {
            match op {
                ServerOp::Pong => return Ok(stream),
                ServerOp::Ping => stream.write_all(wire::PONG).await?,
                ServerOp::Err(e) => return Err(SessionError::Server(e)),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_file_gives_its_jwt_and_seed() {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAi.payload.sig\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        std::fs::write(file.path(), text).unwrap();
        match creds_file(file.path()).unwrap() {
            Proof::Signed { seed: s, jwt } => {
                assert_eq!(s, seed);
                assert_eq!(jwt.as_deref(), Some("eyJ0eXAi.payload.sig"));
            }
            _ => panic!("not signed"),
        }
        std::fs::write(file.path(), "nothing here").unwrap();
        assert!(creds_file(file.path()).is_err());
    }

    #[test]
    fn a_signed_proof_signs_the_nonce_with_the_nkey() {
        let pair = nkeys::KeyPair::new_user();
        let proof = Proof::Signed {
            seed: pair.seed().unwrap(),
            jwt: None,
        };
        let server: ServerAddr = "nats://127.0.0.1:4222".parse().unwrap();
        let fields = proof_fields(&proof, &server, Some("n0nce")).unwrap();
        assert_eq!(fields["nkey"], pair.public_key());
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(fields["sig"].as_str().unwrap())
            .unwrap();
        assert!(pair.verify(b"n0nce", &sig).is_ok());
        assert!(proof_fields(&proof, &server, None).is_err());
    }
}
