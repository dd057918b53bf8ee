//! Issue 12's channel leak: subscribe+unsubscribe of new names must free the channels. In a
//! test binary of its own, so that the process's resident set, which it measures, is not
//! moved by other tests running at the same time.

mod common;

use std::time::Duration;

use common::{Client, config, http, hub};
use duplex_hub::HubConfig;
use serde_json::json;

/// Issue 12: 50,000 subscribe+unsubscribe of new names left ~780 B each. Now the channels are
/// freed: the count goes back to 0, and a second round of as many new names does not grow the
/// process (hub and client share it: a leak of 780 B a name would be 7.8 MB a round). 2 x
/// 10,000 names (pipelined, 200 at a time) keep the debug build's run short (seconds alone,
/// bounded at 120 s on busy cores); what is checked is per name, so fewer names prove the same.
#[tokio::test]
async fn subscribe_and_unsubscribe_of_new_names_frees_the_channels() {
    let churn = async {
        let hub = hub(HubConfig {
            subscribe_rate: 0.0,
            ..config()
        })
        .await;
        let addr = hub.local_addr();
        let mut client = Client::connect(addr, "").await;
        const NAMES: usize = 10_000;
        const BATCH: usize = 200;
        let mut rss = Vec::new();
        for round in 0..2 {
            for batch in 0..NAMES / BATCH {
                for i in 0..BATCH {
                    let name = format!("churn-{round}-{}", batch * BATCH + i);
                    let subscribe = json!({"id": i, "op": "subscribe", "channel": name});
                    client.send_text(&subscribe.to_string()).await;
                    let unsubscribe = json!({"id": i, "op": "unsubscribe", "channel": name});
                    client.send_text(&unsubscribe.to_string()).await;
                }
                let mut replies = 0;
                while replies < 2 * BATCH {
                    let message = client.next().await;
                    // Join pushes (the client's own) are not replies.
                    if message.get("id").is_some() {
                        assert_eq!(message["ok"], true, "{message}");
                        replies += 1;
                    }
                }
            }
            assert_eq!(hub.metrics().channels(), 0, "every channel freed");
            rss.push(rss_bytes());
        }
        let growth = rss[1].saturating_sub(rss[0]);
        eprintln!(
            "RSS after round 1: {} KiB, after round 2: {} KiB ({} B per name in round 2)",
            rss[0] / 1024,
            rss[1] / 1024,
            growth / NAMES as u64
        );
        assert!(
            growth < 3 << 20,
            "the second round grew the process by {growth} bytes"
        );
        assert_eq!(hub.metrics().subscriptions(), 0);
        let metrics = http(addr, "GET", "/metrics", &[], None).await.body;
        let metrics = String::from_utf8(metrics).unwrap();
        assert!(metrics.contains("duplex_hub_channels 0\n"), "{metrics}");
        let channels = http(addr, "GET", "/api/channels", &[], None).await.json();
        assert_eq!(channels["channels"], json!([]));
    };
    tokio::time::timeout(Duration::from_secs(120), churn)
        .await
        .expect("the churn within 120 s");
}

/// This process's resident set (Linux; 0 elsewhere, which the check above then passes).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
