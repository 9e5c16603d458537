//! One snapshot of every `pg_promoter.*` setting, taken by the shell when the worker starts and
//! at each reload, never piecemeal: member lists are parsed once, durations are `Duration`.

use std::time::Duration;

use crate::conninfo::mask_password;
use crate::members::Member;

/// What a fenced primary does (`pg_promoter.fence_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FenceMode {
    /// Refuse ordinary connections, end ordinary sessions, block ordinary commits.
    #[default]
    RefuseConnections,
    /// A fast shutdown.
    Shutdown,
}

impl FenceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceMode::RefuseConnections => "refuse_connections",
            FenceMode::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The conninfo the check uses (ours, or else the server's `primary_conninfo`), unmasked.
    pub primary_conninfo: String,
    pub keep_alive: Duration,
    pub keepalives_count: u32,
    /// The effective deadline of one check (never more than `keep_alive`).
    pub check_timeout: Duration,
    pub enabled: bool,
    /// `pg_promoter.max_lag_on_failover` in bytes; `None` when off (-1).
    pub max_lag_bytes: Option<u64>,
    pub peers: Vec<Member>,
    pub witnesses: Vec<Member>,
    pub fence_mode: FenceMode,
    pub startup_hold_timeout: Duration,
    pub pre_promote_command: String,
    pub post_promote_command: String,
    pub command_timeout: Duration,
    /// Breaks ties between equally advanced standbys in an election; 0 never stands.
    pub priority: u32,
}

impl Default for Settings {
    /// The settings' defaults, as registered with PostgreSQL.
    fn default() -> Settings {
        Settings {
            primary_conninfo: String::new(),
            keep_alive: Duration::from_secs(1),
            keepalives_count: 5,
            check_timeout: Duration::from_secs(1),
            enabled: true,
            max_lag_bytes: Some(16 << 20),
            peers: Vec::new(),
            witnesses: Vec::new(),
            fence_mode: FenceMode::RefuseConnections,
            startup_hold_timeout: Duration::from_secs(10),
            pre_promote_command: String::new(),
            post_promote_command: String::new(),
            command_timeout: Duration::from_secs(30),
            priority: 1,
        }
    }
}

impl Settings {
    /// Whether a primary here has anyone to check.
    pub fn has_members(&self) -> bool {
        !self.peers.is_empty() || !self.witnesses.is_empty()
    }

    /// The settings a worker's `start` event names.
    pub fn describe(&self) -> String {
        format!(
            "keep_alive {} ms, keepalives_count {}, check_timeout {} ms, enabled {}, primary_conninfo {}",
            self.keep_alive.as_millis(),
            self.keepalives_count,
            self.check_timeout.as_millis(),
            onoff(self.enabled),
            quoted(&self.primary_conninfo)
        )
    }

    /// What a reload changed, as `name old -> new` (passwords masked), in a fixed order.
    pub fn changes(&self, new: &Settings) -> Vec<String> {
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        let names = |m: &[Member]| {
            let list: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
            format!("[{}]", list.join(", "))
        };
        let lag = |b: Option<u64>| b.map_or("-1".to_string(), |b| format!("{b} bytes"));
        let pairs = [
            ("keep_alive", ms(self.keep_alive), ms(new.keep_alive)),
            (
                "keepalives_count",
                self.keepalives_count.to_string(),
                new.keepalives_count.to_string(),
            ),
            ("check_timeout", ms(self.check_timeout), ms(new.check_timeout)),
            ("enabled", onoff(self.enabled).into(), onoff(new.enabled).into()),
            (
                "primary_conninfo",
                quoted(&self.primary_conninfo),
                quoted(&new.primary_conninfo),
            ),
            (
                "max_lag_on_failover",
                lag(self.max_lag_bytes),
                lag(new.max_lag_bytes),
            ),
            ("peers", names(&self.peers), names(&new.peers)),
            ("witnesses", names(&self.witnesses), names(&new.witnesses)),
            (
                "fence_action",
                self.fence_mode.as_str().into(),
                new.fence_mode.as_str().into(),
            ),
            (
                "startup_hold_timeout",
                ms(self.startup_hold_timeout),
                ms(new.startup_hold_timeout),
            ),
            (
                "command_timeout",
                ms(self.command_timeout),
                ms(new.command_timeout),
            ),
        ];
        let mut changed: Vec<String> = pairs
            .into_iter()
            .filter(|(_, from, to)| from != to)
            .map(|(name, from, to)| format!("{name} {from} -> {to}"))
            .collect();
        // A changed member conninfo under the same names is still a change worth naming.
        if self.peers != new.peers && names(&self.peers) == names(&new.peers) {
            changed.push("peers: a conninfo changed".into());
        }
        if self.witnesses != new.witnesses && names(&self.witnesses) == names(&new.witnesses) {
            changed.push("witnesses: a conninfo changed".into());
        }
        for (name, old, new) in [
            (
                "pre_promote_command",
                &self.pre_promote_command,
                &new.pre_promote_command,
            ),
            (
                "post_promote_command",
                &self.post_promote_command,
                &new.post_promote_command,
            ),
        ] {
            if old != new {
                changed.push(format!("{name} changed"));
            }
        }
        changed
    }
}

pub fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// A conninfo as it may appear in events and the log: password masked.
pub fn quoted(conninfo: &str) -> String {
    format!("'{}'", mask_password(conninfo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_what_changed_and_never_a_password() {
        let old = Settings {
            primary_conninfo: "host=a password=secret".into(),
            ..Settings::default()
        };
        assert!(old.changes(&old).is_empty());
        let new = Settings {
            keep_alive: Duration::from_millis(200),
            primary_conninfo: "host=b password=other".into(),
            witnesses: vec![Member {
                name: "w1".into(),
                conninfo: "host=w".into(),
            }],
            pre_promote_command: "true".into(),
            ..old.clone()
        };
        let changes = old.changes(&new).join(", ");
        assert_eq!(
            changes,
            "keep_alive 1000 ms -> 200 ms, primary_conninfo 'host=a password=********' -> \
             'host=b password=********', witnesses [] -> [w1], pre_promote_command changed"
        );
        let moved = Settings {
            witnesses: vec![Member {
                name: "w1".into(),
                conninfo: "host=elsewhere".into(),
            }],
            ..new.clone()
        };
        assert_eq!(new.changes(&moved), vec!["witnesses: a conninfo changed"]);
    }

    #[test]
    fn the_start_event_describes_the_check_and_masks_the_password() {
        let s = Settings {
            primary_conninfo: "host=a password=secret".into(),
            ..Settings::default()
        };
        assert_eq!(
            s.describe(),
            "keep_alive 1000 ms, keepalives_count 5, check_timeout 1000 ms, enabled on, \
             primary_conninfo 'host=a password=********'"
        );
        assert!(!s.has_members());
    }
}
