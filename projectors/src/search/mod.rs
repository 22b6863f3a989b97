//! The `search` projection's index: tantivy, beside the sled store
//! (`<data dir>/search-index/<keyspace>`), one per generation of the
//! projection's keyspace. The rows are the truth (`projections/search.rs`
//! folds them with the checkpoint, like every model); the index is built
//! from them by the indexer (`indexer.rs`), which drains the queue of
//! changed rows each fold leaves, so a crash between the two loses
//! nothing: the queue is drained again, and each entry only says "make
//! the index hold what this row holds now". Answers are checked against
//! the rows (`find.rs`), so a recalled or edited message's old text is
//! never shown once its event is folded, even before the index moves.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use im_schema::v1;
use tantivy::schema::{
    IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, STORED, STRING,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::digest::Digest;
use crate::projections::search::doc_id_of_key;

pub mod answer;
pub mod find;
pub mod indexer;
pub mod text;

#[cfg(test)]
mod tests;

/// Bytes the index writer buffers before it writes a segment: tantivy's
/// least (15 MB), since the indexer commits every `indexer::COMMIT_EVERY`
/// anyway and a projector holds one writer per partition it serves (and
/// one more while search is rebuilt).
pub const WRITER_HEAP_BYTES: usize = 15_000_000;

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("search index directory: {0}")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The content keys did not answer: tried again later.
    #[error(transparent)]
    Keys(#[from] im_streams::StreamsError),
}

/// The fields of a document.
#[derive(Clone, Copy)]
pub struct Fields {
    /// `doc_id`: deletes and replaces by it.
    pub id: tantivy::schema::Field,
    pub kind: tantivy::schema::Field,
    pub conv: tantivy::schema::Field,
    pub seq: tantivy::schema::Field,
    /// The IM_CONV stream sequence: newest-first order and cursors.
    pub pos: tantivy::schema::Field,
    pub sender: tantivy::schema::Field,
    /// `text_hash` of the text indexed: answers drop a hit whose row holds
    /// another text now, and `verify` compares it with the rows.
    pub hash: tantivy::schema::Field,
    pub text: tantivy::schema::Field,
    pub raw: tantivy::schema::Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = |analyzer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(analyzer)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
    };
    let number = || {
        NumericOptions::default()
            .set_indexed()
            .set_fast()
            .set_stored()
    };
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        kind: b.add_u64_field("kind", number()),
        conv: b.add_text_field("conv", STRING | STORED),
        seq: b.add_u64_field("seq", number()),
        pos: b.add_u64_field("pos", number()),
        sender: b.add_text_field("sender", STRING),
        hash: b.add_u64_field("hash", NumericOptions::default().set_stored()),
        text: b.add_text_field("text", words(text::STEMMED)),
        raw: b.add_text_field("raw", words(text::RAW)),
    };
    (b.build(), fields)
}

/// The hash of a text as the index records it.
pub fn text_hash(text: &str) -> u64 {
    bytes_hash(text.as_bytes())
}

fn bytes_hash(bytes: &[u8]) -> u64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The hash of what a row holds, as the index records it: its text, or
/// its sealed content's ciphertext (an edit changes either).
pub fn doc_hash(doc: &v1::SearchDoc) -> u64 {
    match &doc.sealed {
        Some(s) => bytes_hash(&s.ciphertext),
        None => text_hash(&doc.text),
    }
}

/// A row's text to index or show: its own, or its sealed content opened
/// (`opening::search_opener`); None when that content is erased or does
/// not open; an error when the keys did not answer.
pub type Opener =
    Arc<dyn Fn(&v1::SearchDoc) -> Result<Option<String>, im_streams::StreamsError> + Send + Sync>;

/// The opener of a deployment that keeps content clear: a sealed row
/// (never written there) shows nothing.
pub fn clear_only() -> Opener {
    Arc::new(|doc: &v1::SearchDoc| Ok(doc.sealed.is_none().then(|| doc.text.clone())))
}

/// One generation's index.
pub struct SearchIndex {
    pub fields: Fields,
    pub reader: IndexReader,
    /// None once closed.
    writer: Mutex<Option<IndexWriter<TantivyDocument>>>,
    /// Held by whoever drains the queue into it: two drains interleaving
    /// their deletes and adds could leave a document twice.
    drain: Mutex<()>,
    /// The IM_CONV position every fold up to which is in the index (what
    /// the keyspace's checkpoint was when its queue was last drained).
    pub indexed: tokio::sync::watch::Sender<u64>,
    pub dir: PathBuf,
}

impl SearchIndex {
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        std::fs::create_dir_all(dir).map_err(SearchError::Io)?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, schema)?;
        for name in [text::STEMMED, text::RAW] {
            index
                .tokenizers()
                .register(name, text::index_analyzer(name));
        }
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(SearchIndex {
            fields,
            reader,
            writer: Mutex::new(Some(writer)),
            drain: Mutex::new(()),
            indexed: tokio::sync::watch::channel(0).0,
            dir: dir.to_path_buf(),
        })
    }

    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut IndexWriter<TantivyDocument>) -> tantivy::Result<T>,
    ) -> Result<T, SearchError> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(w) => Ok(f(w)?),
            None => Err(SearchError::Io(std::io::Error::other(
                "the index is closed",
            ))),
        }
    }

    /// Whoever drains holds this.
    pub fn draining(&self) -> std::sync::MutexGuard<'_, ()> {
        self.drain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the writer (and its lock on the directory).
    pub fn close(&self) {
        let _one = self.draining();
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Makes the index hold `doc` under `id` (none: nothing), its text
    /// as `open` gives it (none: nothing either).
    pub fn sync(
        &self,
        id: &str,
        doc: Option<&v1::SearchDoc>,
        open: &Opener,
    ) -> Result<(), SearchError> {
        let f = self.fields;
        let opened = match doc {
            Some(d) => open(d)?.map(|text| (d, text)),
            None => None,
        };
        let Some((doc, text)) = opened else {
            return self
                .with_writer(|w| Ok(w.delete_term(Term::from_field_text(f.id, id))))
                .map(|_| ());
        };
        let mut d = TantivyDocument::default();
        d.add_text(f.id, id);
        d.add_u64(f.kind, doc.kind as u64);
        d.add_text(f.conv, &doc.conversation_id);
        d.add_u64(f.seq, doc.conv_seq);
        d.add_u64(f.pos, doc.stream_seq);
        d.add_text(f.sender, &doc.sender_id);
        d.add_u64(f.hash, doc_hash(doc));
        d.add_text(f.text, &text);
        d.add_text(f.raw, &text);
        self.with_writer(|w| {
            w.delete_term(Term::from_field_text(f.id, id));
            w.add_document(d).map(drop)
        })
    }

    /// Forgets every message `user` wrote and their name (their content
    /// was erased); a title they created is no content of theirs and
    /// stays.
    pub fn forget_sender(&self, user: &str) -> Result<(), SearchError> {
        use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
        let f = self.fields;
        let sender = TermQuery::new(
            Term::from_field_text(f.sender, user),
            IndexRecordOption::Basic,
        );
        let kind = |k: v1::SearchDocKind| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_u64(f.kind, k as u64),
                IndexRecordOption::Basic,
            ))
        };
        let kinds = BooleanQuery::new(vec![
            (Occur::Should, kind(v1::SearchDocKind::Message)),
            (Occur::Should, kind(v1::SearchDocKind::User)),
        ]);
        let theirs = BooleanQuery::new(vec![
            (Occur::Must, Box::new(sender) as Box<dyn Query>),
            (Occur::Must, Box::new(kinds)),
        ]);
        self.with_writer(|w| w.delete_query(Box::new(theirs)))
            .map(drop)
    }

    /// Merges every segment into one, so that documents deleted are gone
    /// from the files too (a deleted document's words stay in its segment
    /// until a merge rewrites it), and removes the files left over.
    pub fn purge_deleted(&self) -> Result<(), SearchError> {
        let segments = self.with_writer(|w| w.index().searchable_segment_ids())?;
        if segments.len() > 1 || self.has_deletes()? {
            let merging = self.with_writer(|w| Ok(w.merge(&segments)))?;
            merging.wait()?;
        }
        self.with_writer(|w| w.garbage_collect_files().wait())?;
        self.reader.reload()?;
        Ok(())
    }

    fn has_deletes(&self) -> Result<bool, SearchError> {
        Ok(self
            .reader
            .searcher()
            .segment_readers()
            .iter()
            .any(|s| s.num_deleted_docs() > 0))
    }

    /// Makes what was synced durable and searchable, covering `position`.
    pub fn commit(&self, position: u64) -> Result<(), SearchError> {
        self.with_writer(|w| w.commit())?;
        self.reader.reload()?;
        self.indexed.send_replace(position);
        Ok(())
    }

    /// The digest of (id, text hash) of every document, to compare with
    /// the rows' (`rows_digest`).
    pub fn digest(&self) -> Result<Digest, SearchError> {
        use tantivy::schema::Value;
        let searcher = self.reader.searcher();
        let mut d = Digest::default();
        for segment in searcher.segment_readers() {
            let store = segment.get_store_reader(64).map_err(SearchError::Io)?;
            for doc_id in segment.doc_ids_alive() {
                let doc: TantivyDocument = store.get(doc_id)?;
                let id = doc.get_first(self.fields.id).and_then(|v| v.as_str());
                let hash = doc.get_first(self.fields.hash).and_then(|v| v.as_u64());
                if let (Some(id), Some(hash)) = (id, hash) {
                    d.add_entry(id.as_bytes(), &hash.to_be_bytes());
                }
            }
        }
        Ok(d)
    }
}

/// The digest the index should have: (id, text hash) of every row whose
/// content opens.
pub fn rows_digest(ks: &dyn crate::store::Keyspace, open: &Opener) -> Result<Digest, SearchError> {
    let mut d = Digest::default();
    let mut bad: Option<SearchError> = None;
    ks.visit(&mut |k, v| {
        if !crate::projections::search::is_doc_key(k) {
            return;
        }
        let doc = match crate::store::decode_value::<v1::SearchDoc>(k, v) {
            Ok(doc) => doc,
            Err(e) => return bad = Some(e.into()),
        };
        match open(&doc) {
            // Erased content is in the rows (sealed), never in the index.
            Ok(None) => {}
            Ok(Some(_)) => d.add_entry(doc_id_of_key(k).as_bytes(), &doc_hash(&doc).to_be_bytes()),
            Err(e) => bad = Some(e.into()),
        }
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(d),
    }
}

/// Where a keyspace generation's index lives.
pub fn index_dir(data_dir: &Path, keyspace: &str) -> PathBuf {
    data_dir.join("search-index").join(keyspace)
}
