//! Re-pointing a standby to a new leader: where members use slots, its own slot made on the
//! leader if missing; `primary_conninfo` set as ALTER SYSTEM does (and the check's own conninfo
//! when it is set, and `primary_slot_name`), then a reload, which restarts the WAL receiver
//! without restarting the server (13 and later); and a new leader's slots for its followers.
//! The worker has no database connection of its own, so it asks this server through its own
//! entry in `pg_promoter.peers`, and the leader through the leader's.

use std::ffi::CString;
use std::time::Instant;

use policy::members::Member;
use policy::text::literal;
use policy::Settings;

use crate::act::leadership;
use crate::check::members::{Ask, Pool};
use crate::check::probe;
use crate::pg::guc;
use crate::pg::latch::Interrupted;

/// A statement and its text parameters.
type Statement = (String, Vec<String>);

/// A physical slot made where missing, reserving no WAL until a standby streams through it: a
/// slot kept for a member that never comes back must not hold WAL on the primary.
const CREATE_SLOT: &str = "SELECT pg_catalog.pg_create_physical_replication_slot($1, false) \
    WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)";

/// Sets `conninfo` (and `slot`, where members use slots, made on the leader first) as this
/// standby's upstream and reloads; `Ok(Err(why))` when it could not. A slot that could not be
/// made on the leader is named anyway (a new leader makes its followers' slots once promoted),
/// and said in the note.
pub fn follow(
    pool: &mut Pool,
    settings: &Settings,
    leader: &str,
    conninfo: &str,
    slot: Option<&str>,
    stop: &dyn Fn() -> bool,
) -> Result<Result<Option<String>, String>, Interrupted> {
    let mut note = None;
    if let Some(slot) = slot {
        let made = match settings.peers.iter().find(|p| p.name == leader) {
            Some(entry) => run_on(pool, settings, entry, vec![create_slot(slot)], stop)?,
            None => Err(format!("\"{leader}\" is no longer in pg_promoter.peers")),
        };
        if let Err(why) = made {
            note = Some(format!(
                "replication slot \"{slot}\" could not be made on {leader}: {why}"
            ));
        }
    }
    let set = |name: &str, value: &str| {
        (
            format!("ALTER SYSTEM SET {name} = {}", literal(value)),
            Vec::new(),
        )
    };
    let mut statements = vec![set("primary_conninfo", conninfo)];
    if guc::own_primary_conninfo_set() {
        statements.push(set("pg_promoter.primary_conninfo", conninfo));
    }
    if let Some(slot) = slot {
        statements.push(set("primary_slot_name", slot));
    }
    statements.push(("SELECT pg_catalog.pg_reload_conf()".into(), Vec::new()));
    Ok(run_on_self(pool, settings, statements, stop)?.map(|()| note))
}

fn create_slot(name: &str) -> Statement {
    (CREATE_SLOT.to_string(), vec![name.to_string()])
}

/// Creates the physical replication slots `names` on this server where missing, so followers
/// that connect find them.
pub fn create_slots(
    pool: &mut Pool,
    settings: &Settings,
    names: &[String],
    stop: &dyn Fn() -> bool,
) -> Result<Result<(), String>, Interrupted> {
    // Each on its own: one that fails (a follower made it at the same moment) does not keep
    // the others from being made.
    let mut failed = Vec::new();
    for name in names {
        if let Err(why) = run_on_self(pool, settings, vec![create_slot(name)], stop)? {
            failed.push(format!("{name}: {why}"));
        }
    }
    Ok(if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    })
}

/// Runs statements in turn on this server, through its own entry in the peers.
fn run_on_self(
    pool: &mut Pool,
    settings: &Settings,
    statements: Vec<Statement>,
    stop: &dyn Fn() -> bool,
) -> Result<Result<(), String>, Interrupted> {
    let Some(me) = leadership::find_name(pool, settings, stop)? else {
        return Ok(Err("this server is not found among pg_promoter.peers".into()));
    };
    let Some(own) = settings.peers.iter().find(|p| p.name == me) else {
        return Ok(Err(format!("\"{me}\" is no longer in pg_promoter.peers")));
    };
    run_on(pool, settings, own, statements, stop)
}

/// Runs statements in turn on `member`, over its kept connection.
fn run_on(
    pool: &mut Pool,
    settings: &Settings,
    member: &Member,
    statements: Vec<Statement>,
    stop: &dyn Fn() -> bool,
) -> Result<Result<(), String>, Interrupted> {
    for (sql, args) in statements {
        let Ok(sql) = CString::new(sql) else {
            return Ok(Err("a statement contains a zero byte".into()));
        };
        let ask = Ask {
            name: &member.name,
            conninfo: &member.conninfo,
            sql: &sql,
            args,
        };
        let deadline = Instant::now() + settings.check_timeout;
        for (_, rows) in pool.ask_all(&[ask], deadline, stop)? {
            if let Err(outcome) = rows {
                return Ok(Err(probe::reason(&outcome)));
            }
        }
    }
    Ok(Ok(()))
}
