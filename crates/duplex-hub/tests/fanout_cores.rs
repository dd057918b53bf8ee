//! One large fan-out is written by every fan-out thread: with two of them, both spend a real
//! share of the CPU time of a publish burst to one big channel (read from
//! `/proc/self/task/*/stat`), and every subscriber still gets every publication once, in
//! order.
//!
//! The only test of its binary: the fan-out threads are told apart from those of other hubs
//! by name only, and it takes thousands of sockets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Client, config, hub, publish_http};
use duplex_hub::{Compression, HubConfig};
use serde_json::json;

const CHANNEL: &str = "big";
const SUBSCRIBERS: usize = 2000;
const PUBLICATIONS: u64 = 300;

/// CPU time (utime + stime, in clock ticks) of this process's threads named `duplex-fanout-*`,
/// by name.
#[cfg(target_os = "linux")]
fn fanout_thread_ticks() -> HashMap<String, u64> {
    let mut ticks = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path();
        // A thread may end between the listing and the reads.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        let name = comm.trim();
        if !name.starts_with("duplex-fanout-") {
            continue;
        }
        // After the `(comm)` field: state is field 3, utime 14, stime 15 (proc(5)).
        let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        *ticks.entry(name.to_owned()).or_default() += utime + stime;
    }
    ticks
}

/// The soft limit on open files lifted to the hard one; panics if that cannot hold
/// `SUBSCRIBERS` connections (two descriptors each: the client's and the hub's).
fn lift_open_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let allowed = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = 2 * SUBSCRIBERS as u64 + 300;
    assert!(
        allowed >= needed,
        "this test needs {needed} open files, the limit is {allowed}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_fan_out_threads_write_one_large_fan_out() {
    lift_open_files();
    let test = async {
        let hub = hub(HubConfig {
            join_leave: false,
            compression: Compression::Off,
            fanout_threads: 2,
            max_connections: SUBSCRIBERS + 10,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let options = duplex::ClientOptions {
            deflate: None,
            ..Default::default()
        };
        // Subscribed one by one, then each reads on a task of its own (started once all are
        // subscribed: a read gives up after 10 s without a message).
        let mut clients = Vec::with_capacity(SUBSCRIBERS);
        for _ in 0..SUBSCRIBERS {
            let mut client = Client::connect_with(addr, "", options.clone())
                .await
                .expect("a subscriber connects");
            client.subscribe(CHANNEL).await;
            clients.push(client);
        }
        let mut readers = Vec::with_capacity(SUBSCRIBERS);
        for mut client in clients {
            readers.push(tokio::spawn(async move {
                let mut offsets = Vec::with_capacity(PUBLICATIONS as usize);
                while offsets.len() < PUBLICATIONS as usize {
                    let push = client.publication().await;
                    offsets.push(push["offset"].as_u64().expect("an offset"));
                }
                (offsets, client)
            }));
        }
        let before = fanout_thread_ticks();
        assert_eq!(before.len(), 2, "two fan-out threads: {before:?}");
        let start = Instant::now();
        for i in 0..PUBLICATIONS {
            let reply = publish_http(addr, CHANNEL, json!({ "i": i })).await;
            assert_eq!(reply["offset"], i + 1, "{reply}");
        }
        for (conn, reader) in readers.into_iter().enumerate() {
            let (offsets, mut client) = reader.await.expect("a reader");
            let expected: Vec<u64> = (1..=PUBLICATIONS).collect();
            assert_eq!(
                offsets, expected,
                "subscriber {conn}: each publication once, in order"
            );
            // Nothing more (a duplicate would follow the last one).
            if conn == 0 {
                client.assert_quiet().await;
            }
        }
        let elapsed = start.elapsed();
        let after = fanout_thread_ticks();
        let spent: Vec<(String, u64)> = {
            let mut spent: Vec<_> = after
                .iter()
                .map(|(name, t)| (name.clone(), t - before.get(name).copied().unwrap_or(0)))
                .collect();
            spent.sort();
            spent
        };
        let total: u64 = spent.iter().map(|(_, t)| t).sum();
        let split: Vec<String> = spent
            .iter()
            .map(|(name, t)| {
                format!(
                    "{name} {t} ticks ({:.0}%)",
                    100.0 * *t as f64 / total.max(1) as f64
                )
            })
            .collect();
        println!(
            "{} deliveries in {elapsed:.2?}; fan-out thread CPU (clock ticks, 1/100 s on Linux): {}",
            SUBSCRIBERS as u64 * PUBLICATIONS,
            split.join(", ")
        );
        assert!(
            total >= 10,
            "the fan-out threads spent {total} ticks for {} deliveries: too little to split",
            SUBSCRIBERS as u64 * PUBLICATIONS
        );
        for (name, t) in &spent {
            // An even split is 50%; one thread writing everything would leave the other near 0.
            assert!(
                *t * 4 >= total,
                "{name} did {t} of {total} ticks: not a real share ({split:?})"
            );
        }
        hub.shutdown();
    };
    tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .expect("the test did not finish within 180 s");
}
