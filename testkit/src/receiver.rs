//! A push gateway for tests: a real HTTP/1.1 server (or HTTPS, with a
//! certificate and key given) on a free loopback port that records every
//! request it answers, and can be told to answer 200, an error status, a
//! `rejected` list, slowly, or to be down (its port refusing connections)
//! and up again on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// Bytes of one request's body the receiver reads at most.
const BODY_BYTES_MAX: usize = 1 << 20;

/// How the receiver answers.
#[derive(Clone, Debug)]
pub enum Mode {
    Ok,
    /// This status, empty body.
    Status(u16),
    /// 200 with `{"rejected": [...]}`.
    Rejected(Vec<String>),
    /// 200 after this long.
    Slow(Duration),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    received: Vec<Received>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: Option<tokio::task::JoinHandle<()>>,
    tls: Option<TlsAcceptor>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_with(None).await
    }

    /// Over TLS, with this certificate chain and key (PEM files).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .expect("a certificate file")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("a key file");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a certificate and its key");
        Self::start_with(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = Some(tokio::spawn(accept(listener, shared.clone(), tls.clone())));
        Receiver {
            addr,
            shared,
            task,
            tls,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        lock(&self.shared).mode = Some(mode);
    }

    /// Stops listening: connections are refused until `up`.
    pub fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        if self.task.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "the receiver's port is not free yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.task = Some(tokio::spawn(accept(
            listener,
            self.shared.clone(),
            self.tls.clone(),
        )));
    }

    /// Every request answered so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared).received.clone()
    }

    /// Those taken (2xx), each idempotency key once, as a receiver that
    /// drops repeats keeps them.
    pub fn taken_once(&self) -> Vec<Received> {
        let mut seen = std::collections::HashSet::new();
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .filter(|r| seen.insert(r.header("idempotency-key").unwrap_or("").to_string()))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Mutex<Shared>>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                // A client that refuses the certificate ends here.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve(stream, shared).await;
                    }
                }
                None => serve(stream, shared).await,
            }
        });
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: Arc<Mutex<Shared>>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(BODY_BYTES_MAX);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let mode = lock(&shared).mode.clone().unwrap_or(Mode::Ok);
    let (status, answer) = match mode {
        Mode::Ok => (200, "{}".to_string()),
        Mode::Status(s) => (s, String::new()),
        Mode::Rejected(tokens) => {
            let list: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
            (200, format!("{{\"rejected\":[{}]}}", list.join(",")))
        }
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            (200, "{}".to_string())
        }
    };
    let mut stream = reader.into_inner();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    // Recorded once answered: a request whose answer could not be written
    // (the client gave up) is not one the receiver took.
    if stream.write_all(response.as_bytes()).await.is_ok() && stream.flush().await.is_ok() {
        lock(&shared).received.push(Received {
            path,
            headers,
            body,
            at: Instant::now(),
            status,
        });
    }
}
