//! A batch of writes over a keyspace that reads its own staged writes, so
//! several events folded into one commit see each other's effects.

use std::collections::BTreeMap;

use prost::Message;

use crate::keys::prefix_end;
use crate::store::{Keyspace, StoreError, Write};

pub struct Tx<'a> {
    ks: &'a dyn Keyspace,
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    pub fn new(ks: &'a dyn Keyspace) -> Self {
        Tx {
            ks,
            staged: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.staged.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.ks.get(key),
        }
    }

    pub fn get_msg<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StoreError> {
        self.get(key)?
            .map(|bytes| crate::store::decode_value(key, &bytes))
            .transpose()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.staged.insert(key, Some(value));
    }

    pub fn put_msg<M: Message>(&mut self, key: Vec<u8>, value: &M) {
        self.put(key, value.encode_to_vec());
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
    }

    /// Every entry under `prefix`, staged writes included, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<crate::store::Entry>, StoreError> {
        self.scan_range(prefix, &prefix_end(prefix))
    }

    /// Every entry with `start <= key < end`, staged writes included.
    pub fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<crate::store::Entry>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .ks
            .range(start, end, false, usize::MAX)?
            .into_iter()
            .collect();
        for (k, v) in self.staged.range(start.to_vec()..end.to_vec()) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// The first entry with `start <= key < end`, staged writes included.
    /// Reads the keyspace a page at a time past keys deleted here, so it
    /// costs one small read unless many of the first keys were deleted in
    /// this batch.
    pub fn first_in(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<crate::store::Entry>, StoreError> {
        if start >= end {
            return Ok(None);
        }
        // One entry first (the usual case: nothing before it deleted here),
        // pages doubling past deleted ones.
        let mut page = 1;
        let staged = self
            .staged
            .range(start.to_vec()..end.to_vec())
            .find_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())));
        let mut from = start.to_vec();
        let stored = loop {
            let read = self.ks.range(&from, end, false, page)?;
            let full = read.len() == page;
            let next = read.last().map(|(k, _)| k.clone());
            let live = read
                .into_iter()
                .find(|(k, _)| !matches!(self.staged.get(k), Some(None)));
            match (live, next) {
                (Some(e), _) => break Some(e),
                (None, Some(mut last)) if full => {
                    last.push(0);
                    from = last;
                    page = (page * 2).min(1024);
                }
                _ => break None,
            }
        };
        Ok(match (staged, stored) {
            (Some(a), Some(b)) if b.0 < a.0 => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b.map(|(k, v)| {
                let v = match self.staged.get(&k) {
                    Some(Some(staged)) => staged.clone(),
                    _ => v,
                };
                (k, v)
            }),
        })
    }

    /// Up to `limit` stored entries with `start <= key < end`, without
    /// the staged writes (a read outside any fold).
    pub fn ks_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<crate::store::Entry>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.ks.range(start, end, false, limit)
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    pub fn into_writes(self) -> Vec<Write> {
        self.staged.into_iter().collect()
    }
}
