//! `cargo run --release -- [EVENTS] [all|sled|fjall|redb]` (from this
//! directory): synthetic rebuild writes: rounds of 16,384 events over 1,000
//! conversations; per event, keys in several trees shaped like the
//! projections' (conv-prefixed rows with a sequence suffix, per-member
//! rows rewritten once per round, unique ids). Committed per tree per
//! round, sorted, as the rebuild commits.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::time::Instant;

const ROUND: u64 = 16_384;
const CONVS: u64 = 1_000;

fn round_writes(round: u64, events: u64) -> Vec<(String, BTreeMap<Vec<u8>, Vec<u8>>)> {
    let mut trees: Vec<(String, BTreeMap<Vec<u8>, Vec<u8>>)> = [
        "history", "dedupe", "search", "searchq", "members", "recent", "unread",
    ]
    .iter()
    .map(|n| (n.to_string(), BTreeMap::new()))
    .collect();
    let start = round * ROUND;
    for n in start..(start + ROUND).min(events) {
        let c = n % CONVS;
        let seq = n / CONVS;
        let conv = format!("rb{c}");
        let k = |tag: u8, rest: &[u8]| {
            let mut v = vec![tag];
            v.extend_from_slice(conv.as_bytes());
            v.push(0);
            v.extend_from_slice(rest);
            v
        };
        trees[0]
            .1
            .insert(k(b'h', &seq.to_be_bytes()), vec![7u8; 220]);
        trees[1].1.insert(
            format!("d{}x{}\0e{n}", c, n % 3).into_bytes(),
            vec![1u8; 16],
        );
        trees[2].1.insert(k(b's', &n.to_be_bytes()), vec![3u8; 120]);
        trees[3]
            .1
            .insert([b"q".as_slice(), &n.to_be_bytes()].concat(), vec![4u8; 40]);
        trees[4].1.insert(k(b'c', b""), vec![5u8; 60]);
        trees[5]
            .1
            .insert(k(b'i', &seq.to_be_bytes()), vec![6u8; 40]);
        for m in 0..3 {
            trees[6]
                .1
                .insert(format!("u{c}x{m}\0{conv}").into_bytes(), vec![8u8; 24]);
        }
    }
    trees
}

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .map_or(300_000, |a| a.parse().unwrap());
    let which = std::env::args().nth(2).unwrap_or("all".into());
    let rounds = events.div_ceil(ROUND);
    let total: usize = (0..rounds)
        .map(|r| {
            round_writes(r, events)
                .iter()
                .map(|t| t.1.len())
                .sum::<usize>()
        })
        .sum();
    eprintln!("{events} events, {total} keys written");
    if which == "all" || which == "sled" {
        let dir = tempfile();
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(1 << 30)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000))
            .open()
            .unwrap();
        let mut commit = 0.0;
        let t = Instant::now();
        for r in 0..rounds {
            let w = round_writes(r, events);
            let c = Instant::now();
            for (name, kv) in w {
                let tree = db.open_tree(&name).unwrap();
                let mut b = sled::Batch::default();
                for (k, v) in kv {
                    b.insert(k, v);
                }
                tree.apply_batch(b).unwrap();
            }
            commit += c.elapsed().as_secs_f64();
        }
        db.flush().unwrap();
        println!(
            "sled: {:.2} s total, commits {:.2} s, {:.2} µs/key",
            t.elapsed().as_secs_f64(),
            commit,
            commit * 1e6 / total as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    if which == "all" || which == "fjall" {
        let dir = tempfile();
        let ks = fjall::Config::new(&dir).open().unwrap();
        let parts: BTreeMap<String, fjall::PartitionHandle> = [
            "history", "dedupe", "search", "searchq", "members", "recent", "unread",
        ]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                ks.open_partition(n, Default::default()).unwrap(),
            )
        })
        .collect();
        let mut commit = 0.0;
        let t = Instant::now();
        for r in 0..rounds {
            let w = round_writes(r, events);
            let c = Instant::now();
            for (name, kv) in w {
                let mut b = ks.batch();
                for (k, v) in kv {
                    b.insert(&parts[&name], k, v);
                }
                b.commit().unwrap();
            }
            commit += c.elapsed().as_secs_f64();
        }
        ks.persist(fjall::PersistMode::SyncAll).unwrap();
        println!(
            "fjall: {:.2} s total, commits {:.2} s, {:.2} µs/key",
            t.elapsed().as_secs_f64(),
            commit,
            commit * 1e6 / total as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    if which == "all" || which == "redb" {
        let dir = tempfile();
        std::fs::create_dir_all(&dir).unwrap();
        let db = redb::Database::create(dir.join("db")).unwrap();
        let mut commit = 0.0;
        let t = Instant::now();
        for r in 0..rounds {
            let w = round_writes(r, events);
            let c = Instant::now();
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(redb::Durability::None);
            for (name, kv) in w {
                let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(&name);
                let mut table = tx.open_table(def).unwrap();
                for (k, v) in kv {
                    table.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            commit += c.elapsed().as_secs_f64();
        }
        println!(
            "redb: {:.2} s total, commits {:.2} s, {:.2} µs/key",
            t.elapsed().as_secs_f64(),
            commit,
            commit * 1e6 / total as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn tempfile() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "storebench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    p
}
