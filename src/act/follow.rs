//! Re-pointing a standby to a new leader: `primary_conninfo` set as ALTER SYSTEM does (and the
//! check's own conninfo, when it is set), then a reload, which restarts the WAL receiver without
//! restarting the server (13 and later). The worker has no database connection of its own, so it
//! asks this server through its own entry in `pg_promoter.peers`.

use std::ffi::CString;
use std::time::Instant;

use policy::Settings;

use crate::act::member;
use crate::check::members::{Ask, Pool};
use crate::check::probe;
use crate::pg::guc;
use crate::pg::latch::Interrupted;

/// Sets `conninfo` as this standby's upstream and reloads; `Ok(Err(why))` when it could not.
pub fn follow(
    pool: &mut Pool,
    settings: &Settings,
    conninfo: &str,
    stop: &dyn Fn() -> bool,
) -> Result<Result<(), String>, Interrupted> {
    let Some(me) = member::name() else {
        return Ok(Err("this server's name among the peers is not known yet".into()));
    };
    let Some(own) = settings.peers.iter().find(|p| p.name == me) else {
        return Ok(Err(format!("\"{me}\" is no longer in pg_promoter.peers")));
    };
    let mut statements = vec![format!(
        "ALTER SYSTEM SET primary_conninfo = {}",
        policy::text::literal(conninfo)
    )];
    if guc::own_primary_conninfo_set() {
        statements.push(format!(
            "ALTER SYSTEM SET pg_promoter.primary_conninfo = {}",
            policy::text::literal(conninfo)
        ));
    }
    statements.push("SELECT pg_catalog.pg_reload_conf()".into());
    for sql in statements {
        let Ok(sql) = CString::new(sql) else {
            return Ok(Err("the conninfo contains a zero byte".into()));
        };
        let ask = Ask {
            name: &own.name,
            conninfo: &own.conninfo,
            sql: &sql,
            args: Vec::new(),
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
