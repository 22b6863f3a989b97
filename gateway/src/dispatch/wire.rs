//! The part of the NATS client protocol the delivery dispatcher speaks: it
//! subscribes and unsubscribes, exchanges PING/PONG, and reads MSG and HMSG
//! (headers skipped: a delivery is its payload). Pure: bytes in,
//! operations out, so every case is tested without a server.

use bytes::{Buf, Bytes, BytesMut};

/// Longest control line accepted (`MSG <subject> <sid> <size>`, or an
/// `INFO` with its JSON): nats-server's own default `max_control_line`
/// is 4 KiB; INFO lines of a large cluster run longer, so 64 KiB.
pub const CONTROL_LINE_MAX: usize = 64 * 1024;

/// What the server said.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp {
    Info(ServerInfo),
    Msg {
        subject: String,
        sid: u64,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed protocol line {0:?}")]
    Malformed(String),
    #[error("a control line longer than {CONTROL_LINE_MAX} bytes")]
    LineTooLong,
    #[error("a message of {size} bytes, over the {max} this connection takes")]
    TooLarge { size: usize, max: usize },
}

/// Takes one operation off the front of `buf`; None while it is incomplete
/// (nothing is consumed then).
pub fn parse(buf: &mut BytesMut, payload_max: usize) -> Result<Option<ServerOp>, WireError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > CONTROL_LINE_MAX {
            Err(WireError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut words = line.split_ascii_whitespace();
    let op = words.next().unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    let malformed = || WireError::Malformed(line.chars().take(200).collect());
    let simple = match op.as_str() {
        "PING" => Some(ServerOp::Ping),
        "PONG" => Some(ServerOp::Pong),
        "+OK" => Some(ServerOp::Ok),
        "INFO" => Some(ServerOp::Info(
            serde_json::from_str(line[4..].trim()).unwrap_or_default(),
        )),
        "-ERR" => Some(ServerOp::Err(
            line[4..].trim().trim_matches('\'').to_string(),
        )),
        "MSG" | "HMSG" => None,
        _ => return Err(malformed()),
    };
    if let Some(op) = simple {
        buf.advance(end + 2);
        return Ok(Some(op));
    }
    // MSG <subject> <sid> [reply-to] <size>
    // HMSG <subject> <sid> [reply-to] <header size> <total size>
    let sizes = if op == "MSG" { 1 } else { 2 };
    if !(2 + sizes..=3 + sizes).contains(&args.len()) {
        return Err(malformed());
    }
    let number = |s: &str| s.parse::<usize>().map_err(|_| malformed());
    let total = number(args[args.len() - 1])?;
    let header = if sizes == 2 {
        number(args[args.len() - 2])?
    } else {
        0
    };
    if header > total {
        return Err(malformed());
    }
    if total > payload_max {
        return Err(WireError::TooLarge {
            size: total,
            max: payload_max,
        });
    }
    if buf.len() < end + 2 + total + 2 {
        return Ok(None);
    }
    let subject = args[0].to_string();
    let sid = args[1].parse::<u64>().map_err(|_| malformed())?;
    buf.advance(end + 2);
    let payload = Bytes::copy_from_slice(&buf[header..total]);
    if &buf[total..total + 2] != b"\r\n" {
        return Err(malformed());
    }
    buf.advance(total + 2);
    Ok(Some(ServerOp::Msg {
        subject,
        sid,
        payload,
    }))
}

/// What a server's INFO says that the handshake needs.
#[derive(Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ServerInfo {
    /// Signed by an nkey or credentials identity.
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
}

/// The CONNECT line: no echo of our own publishes (we publish nothing
/// here), headers accepted, errors only (verbose off); `proof` says who we
/// are (`handshake.rs`).
pub fn connect_line(
    name: &str,
    proof: serde_json::Map<String, serde_json::Value>,
    tls: bool,
) -> Vec<u8> {
    let mut options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": false,
        "echo": false,
        "name": name,
        "tls_required": tls,
    });
    for (k, v) in proof {
        options[k] = v;
    }
    format!("CONNECT {options}\r\n").into_bytes()
}

pub fn sub_line(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

pub fn unsub_line(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

/// Whether the server ends the connection after this `-ERR`. It does not
/// for a refused subscription (permissions, a bad subject, too many): the
/// session goes on and the refusal is logged.
pub fn closes_connection(err: &str) -> bool {
    let err = err.to_ascii_lowercase();
    !(err.starts_with("permissions violation")
        || err.starts_with("invalid subject")
        || err.starts_with("maximum subscriptions exceeded"))
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> (Vec<ServerOp>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf, 1024).unwrap() {
            ops.push(op);
        }
        (ops, buf)
    }

    fn msg(subject: &str, sid: u64, payload: &[u8]) -> ServerOp {
        ServerOp::Msg {
            subject: subject.into(),
            sid,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_operation_parses_and_headers_are_skipped() {
        let wire = b"INFO {\"server_id\":\"x\"}\r\nPING\r\npong\r\n+OK\r\n\
            MSG im.deliver.a 1 5\r\nhello\r\n\
            MSG im.deliver.b 2 reply.to 0\r\n\r\n\
            HMSG im.deliver.c 3 12 15\r\nNATS/1.0\r\n\r\nabc\r\n\
            -ERR 'Permissions Violation'\r\n";
        let (ops, rest) = all(wire);
        assert_eq!(
            ops,
            vec![
                ServerOp::Info(ServerInfo::default()),
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                msg("im.deliver.a", 1, b"hello"),
                msg("im.deliver.b", 2, b""),
                msg("im.deliver.c", 3, b"abc"),
                ServerOp::Err("Permissions Violation".into()),
            ]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn a_message_split_anywhere_waits_for_the_rest_and_consumes_nothing() {
        let wire = b"MSG im.deliver.a 1 5\r\nhello\r\nPING\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut ops = Vec::new();
            while let Some(op) = parse(&mut buf, 1024).unwrap() {
                ops.push(op);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(op) = parse(&mut buf, 1024).unwrap() {
                ops.push(op);
            }
            assert_eq!(
                ops,
                vec![msg("im.deliver.a", 1, b"hello"), ServerOp::Ping],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_guess() {
        let bad = |b: &[u8]| parse(&mut BytesMut::from(b), 1024);
        assert!(matches!(bad(b"WHAT\r\n"), Err(WireError::Malformed(_))));
        assert!(matches!(
            bad(b"MSG a 1 x\r\n"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(bad(b"MSG a\r\n"), Err(WireError::Malformed(_))));
        assert!(matches!(
            bad(b"MSG a x 3\r\nabc\r\n"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            bad(b"HMSG a 1 9 3\r\n"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            bad(b"MSG a 1 3\r\nabcXY"),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            bad(b"MSG a 1 2000\r\n"),
            Err(WireError::TooLarge {
                size: 2000,
                max: 1024
            })
        );
        let long = vec![b'x'; CONTROL_LINE_MAX + 1];
        assert_eq!(bad(&long), Err(WireError::LineTooLong));
    }

    #[test]
    fn only_errors_the_server_closes_on_end_a_session() {
        assert!(!closes_connection(
            "Permissions Violation for Subscription to \"im.deliver.x\""
        ));
        assert!(!closes_connection("Maximum Subscriptions Exceeded"));
        assert!(closes_connection("Authorization Violation"));
        assert!(closes_connection("Slow Consumer"));
    }

    #[test]
    fn client_lines() {
        let mut out = Vec::new();
        sub_line(&mut out, "im.deliver.a", 7);
        unsub_line(&mut out, 7);
        assert_eq!(out, b"SUB im.deliver.a 7\r\nUNSUB 7\r\n");
        let mut proof = serde_json::Map::new();
        proof.insert("user".into(), "gw".into());
        let line = String::from_utf8(connect_line("g", proof, false)).unwrap();
        assert!(
            line.starts_with("CONNECT {") && line.ends_with("}\r\n"),
            "{line}"
        );
        assert!(line.contains("\"user\":\"gw\"") && line.contains("\"echo\":false"));
    }
}
