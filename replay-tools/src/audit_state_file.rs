//! A state file read and written without holding it: the file is an
//! `AuditState` message followed by its sha256, and a
//! run in several passes (`Pass`) takes up, then writes, one pass's
//! conversations at a time. Protobuf lets a message's fields come in any
//! order, so the conversations are written pass by pass and the head
//! (position, counts) last, and the file is the same message however many
//! passes wrote it or will read it.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use super::state::{Position, StateError, DIGEST_BYTES};
use super::{Auditor, Pass};
use im_schema::v1;

/// Field number of `AuditState.conversations`.
const CONVERSATIONS_FIELD: u32 = 6;

/// A state file whose digest held when it was opened.
pub struct StateFile {
    path: PathBuf,
    body: u64,
    digest: [u8; 32],
}

/// Reads `inner`, hashing what it reads.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn malformed(why: &'static str) -> StateError {
    StateError::Malformed(why)
}

/// A varint, or None at the end of the input (before its first byte).
fn read_varint(r: &mut impl Read) -> Result<Option<u64>, StateError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8];
        if r.read(&mut byte).map_err(StateError::Io)? == 0 {
            return match shift {
                0 => Ok(None),
                _ => Err(malformed("a varint cut short")),
            };
        }
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(malformed("a varint longer than 10 bytes"))
}

impl StateFile {
    /// Opens the file: its digest (and that it is `expected`, when given)
    /// checked over one read that keeps only the head.
    pub fn open(
        path: &Path,
        expected: Option<&str>,
    ) -> Result<(StateFile, v1::AuditState), StateError> {
        use std::io::Seek as _;
        let len = std::fs::metadata(path).map_err(StateError::Io)?.len();
        let body = len
            .checked_sub(DIGEST_BYTES as u64)
            .ok_or(StateError::Digest)?;
        let mut file = std::fs::File::open(path).map_err(StateError::Io)?;
        let mut digest = [0u8; 32];
        file.seek(std::io::SeekFrom::Start(body))
            .and_then(|_| file.read_exact(&mut digest))
            .map_err(StateError::Io)?;
        if let Some(expected) = expected {
            let found = hex::encode(digest);
            if !found.eq_ignore_ascii_case(expected) {
                return Err(StateError::NotTheExpected {
                    expected: expected.to_string(),
                    found,
                });
            }
        }
        let file = StateFile {
            path: path.to_path_buf(),
            body,
            digest,
        };
        let head = file.read(None)?;
        Ok((file, head))
    }

    /// The saved head (every field but the conversations) with the
    /// conversations `pass` audits (none without a pass), read through;
    /// refused unless the bytes read are the ones the digest covers (a
    /// file changed or cut short is told as such, whatever else is wrong).
    pub fn read(&self, pass: Option<Pass>) -> Result<v1::AuditState, StateError> {
        let file = std::fs::File::open(&self.path).map_err(StateError::Io)?;
        let mut r = Hashing {
            inner: BufReader::new(file).take(self.body),
            hasher: Sha256::new(),
        };
        let parsed = parse(&mut r, pass);
        // What a refusal left unread still counts in the digest.
        let rest = std::io::copy(&mut r, &mut std::io::sink());
        if rest.is_err() || <[u8; 32]>::from(r.hasher.finalize()) != self.digest {
            return Err(StateError::Digest);
        }
        parsed
    }
}

/// An `AuditState` read field by field: the head, and the conversations
/// `pass` audits, each decoded alone.
fn parse(r: &mut impl Read, pass: Option<Pass>) -> Result<v1::AuditState, StateError> {
    let (mut head, mut conversations) = (Vec::new(), Vec::new());
    while let Some(key) = read_varint(r)? {
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                let v = read_varint(r)?.ok_or(malformed("a field without its value"))?;
                encode_key(field, WireType::Varint, &mut head);
                encode_varint(v, &mut head);
            }
            2 => {
                let bytes = read_field(r)?;
                if field != CONVERSATIONS_FIELD {
                    encode_key(field, WireType::LengthDelimited, &mut head);
                    encode_varint(bytes.len() as u64, &mut head);
                    head.extend_from_slice(&bytes);
                    continue;
                }
                let Some(pass) = pass else { continue };
                let c = v1::AuditedConversation::decode(bytes.as_slice())
                    .map_err(StateError::Undecodable)?;
                if pass.audits_conversation(&c.conversation_id) {
                    conversations.push(c);
                }
            }
            _ => return Err(malformed("a field of a wire type this build never writes")),
        }
    }
    let head = v1::AuditState::decode(head.as_slice()).map_err(StateError::Undecodable)?;
    Ok(v1::AuditState {
        conversations,
        ..head
    })
}

/// A length-delimited field's bytes.
fn read_field(r: &mut impl Read) -> Result<Vec<u8>, StateError> {
    let len = read_varint(r)?.ok_or(malformed("a field without its length"))?;
    // Read as it comes, not allocated up front: a length is believed only
    // once its bytes are there, so a huge one costs no more than the file.
    let mut bytes = Vec::new();
    r.take(len)
        .read_to_end(&mut bytes)
        .map_err(StateError::Io)?;
    match bytes.len() as u64 == len {
        true => Ok(bytes),
        false => Err(malformed("a field cut short")),
    }
}

/// A state file being written beside its final name (a name of this
/// process's own), pass by pass; moved over the old one only by `finish`,
/// so a run stopped, crashed or failed halfway leaves the last state whole.
pub struct StateWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<std::fs::File>,
    hasher: Sha256,
}

impl StateWriter {
    pub fn create(path: &Path) -> std::io::Result<StateWriter> {
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a state file name")
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let out = BufWriter::new(std::fs::File::create(&tmp)?);
        Ok(StateWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            hasher: Sha256::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    /// Writes the conversations `auditor` holds (one pass's).
    pub fn conversations(&mut self, auditor: &Auditor) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for conv in auditor.conversation_ids() {
            bytes.clear();
            auditor.encode_conversation(conv, &mut bytes);
            self.write(&bytes)?;
        }
        Ok(())
    }

    /// Writes the head and the digest, makes the file durable and moves it
    /// over the old one; the file's digest, hex.
    pub fn finish(mut self, position: &Position) -> std::io::Result<String> {
        let head = super::state::head(position).encode_to_vec();
        self.write(&head)?;
        let digest = std::mem::take(&mut self.hasher).finalize();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(hex::encode(digest))
    }
}

impl Drop for StateWriter {
    /// An unfinished file is removed (after `finish` it is gone already).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}
