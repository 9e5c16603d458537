//! pg_promoter itself: a primary and a standby on two simulated hosts, the worker in the standby.

use std::time::Duration;

use testbed::{Net, Node};

use super::common::NodePair;
use crate::cluster::{Cluster, Tool};

pub struct PgPromoter {
    pub keep_alive_ms: u64,
    pub count: u32,
}

impl Tool for PgPromoter {
    fn label(&self) -> String {
        let ka = if self.keep_alive_ms.is_multiple_of(1000) {
            format!("{}s", self.keep_alive_ms / 1000)
        } else {
            format!("{}ms", self.keep_alive_ms)
        };
        format!("pg_promoter {ka}×{}", self.count)
    }

    fn family(&self) -> &'static str {
        "pg_promoter"
    }

    fn budget(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms * u64::from(self.count))
    }

    fn phase_span(&self) -> Duration {
        // The worker's checks, and the standby's WAL receiver status messages (10 s).
        Duration::from_millis(self.keep_alive_ms).max(Duration::from_secs(10))
    }

    fn settings(&self) -> Vec<(String, String)> {
        self.conf().into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn start(&self) -> Result<Box<dyn Cluster>, String> {
        let net = Net::new("bench");
        let (hp, hs) = (net.host("p"), net.host("s"));
        let conf = self.conf();
        let conf: Vec<(&str, &str)> = conf.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let primary = Node::primary_on(&hp, "bp", &conf);
        primary.psql("CREATE EXTENSION pg_promoter")?;
        let standby = Node::standby_on(&hs, "bs", &primary, &conf);
        let watching = testbed::try_wait_until(Duration::from_secs(60), || {
            standby.psql("SELECT state FROM pg_promoter_status").as_deref() == Ok("watching")
        });
        watching.ok_or("the standby's worker never watched the primary")?;
        Ok(Box::new(NodePair {
            // Nothing: the worker runs inside the servers.
            tool: (),
            net,
            nodes: [primary, standby],
            reported: events,
        }))
    }
}

impl PgPromoter {
    fn conf(&self) -> Vec<(&'static str, String)> {
        vec![
            ("pg_promoter.keep_alive", format!("'{}ms'", self.keep_alive_ms)),
            ("pg_promoter.keepalives_count", self.count.to_string()),
        ]
    }
}

/// The worker's own events on the new primary: when it decided to promote, and when it had.
fn events(new_primary: &Node) -> Option<(f64, f64)> {
    let at = |kind: &str| {
        let sql = format!(
            "SELECT extract(epoch FROM at) FROM pg_promoter_events() WHERE event = '{kind}' ORDER BY seq LIMIT 1"
        );
        new_primary.psql(&sql).ok()?.parse().ok()
    };
    Some((at("decided")?, at("promoted")?))
}
