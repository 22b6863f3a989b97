//! Key layout. Ids never contain a 0 byte (the id validator allows only
//! `[A-Za-z0-9_-]`), so 0 separates parts and keys sort by their parts.
//! Sequences are big-endian u64, so they sort numerically.

/// Keys starting with this byte are bookkeeping (checkpoints, dead letters,
/// partition set), not model: the digest leaves them out.
pub const META: u8 = 0xff;

pub fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(tag);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// `key(tag, parts)` followed by the separator: the prefix of everything
/// under those parts.
pub fn prefix(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(tag, parts);
    k.push(0);
    k
}

/// The first key after every key with this prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

pub fn seq(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The last 8 bytes of a key as a sequence.
pub fn seq_suffix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() >= 8 {
        b.copy_from_slice(&key[key.len() - 8..]);
    }
    u64::from_be_bytes(b)
}

/// The part after the last separator, as a string.
pub fn last_part(key: &[u8]) -> String {
    let start = key.iter().rposition(|b| *b == 0).map_or(1, |i| i + 1);
    String::from_utf8_lossy(&key[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_parts_and_sequences_numerically() {
        let a = key(b'h', &[b"c1", &seq(2)]);
        let b = key(b'h', &[b"c1", &seq(10)]);
        let c = key(b'h', &[b"c10", &seq(1)]);
        assert!(a < b && b < c);
        let p = prefix(b'h', &[b"c1"]);
        assert!(a.starts_with(&p) && !c.starts_with(&p));
        assert!(prefix_end(&p) > b && prefix_end(&p) <= c);
        assert_eq!(seq_suffix(&b), 10);
        assert_eq!(last_part(&key(b'm', &[b"conv", b"alice"])), "alice");
    }
}
