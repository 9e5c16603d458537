//! Re-pointing a standby to a new leader: `primary_conninfo` set as ALTER SYSTEM does (and the
//! check's own conninfo when it is set, and `primary_slot_name` where members use slots), then a
//! reload, which restarts the WAL receiver without restarting the server (13 and later); and a
//! new leader's slots for its followers. The worker has no database connection of its own, so
//! it asks this server through its own entry in `pg_promoter.peers`.

use std::ffi::CString;
use std::time::Instant;

use policy::text::literal;
use policy::Settings;

use crate::act::leadership;
use crate::check::members::{Ask, Pool};
use crate::check::probe;
use crate::pg::guc;
use crate::pg::latch::Interrupted;

/// A statement and its text parameters.
type Statement = (String, Vec<String>);

/// Sets `conninfo` (and `slot`, where members use slots) as this standby's upstream and
/// reloads; `Ok(Err(why))` when it could not.
pub fn follow(
    pool: &mut Pool,
    settings: &Settings,
    conninfo: &str,
    slot: Option<&str>,
    stop: &dyn Fn() -> bool,
) -> Result<Result<(), String>, Interrupted> {
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
    run_on_self(pool, settings, statements, stop)
}

/// Creates the physical replication slots `names` on this server where missing, reserving WAL
/// from now, so followers that connect find them.
pub fn create_slots(
    pool: &mut Pool,
    settings: &Settings,
    names: &[String],
    stop: &dyn Fn() -> bool,
) -> Result<Result<(), String>, Interrupted> {
    let sql = "SELECT pg_catalog.pg_create_physical_replication_slot($1, true) \
               WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)";
    let statements = names.iter().map(|n| (sql.to_string(), vec![n.clone()])).collect();
    run_on_self(pool, settings, statements, stop)
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
    for (sql, args) in statements {
        let Ok(sql) = CString::new(sql) else {
            return Ok(Err("a statement contains a zero byte".into()));
        };
        let ask = Ask {
            name: &own.name,
            conninfo: &own.conninfo,
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
