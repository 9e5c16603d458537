//! Simulated hosts: network namespaces on one private bridge, with per-link
//! cuts, for topologies a single proxy cannot express (the standby loses the
//! primary while a witness still sees it).

use std::fs::{self, File, TryLockError};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::pg::run;

/// Where the claim files live: in /run, like the namespaces themselves, so
/// they share their lifetime (until reboot) and escape cleanups of /tmp.
const CLAIMS: &str = "/run/pg_promoter_testbed";

/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Routing protocol number that tags the routes making cuts, so healing
/// removes exactly those and never the connected ones.
const CUT_PROTO: &str = "231";

/// In every host, a veth whose peer stays down: packets routed into it vanish
/// without an error to the sender, as in a real partition. A `blackhole`
/// route cannot do that (local senders get EINVAL at once) and the dummy
/// device is not always built into the kernel; veth must be there anyway.
const SINK: &str = "sink";
const SINK_PEER: &str = "sinkpeer";

/// Where `ip netns exec` finds a namespace's own /etc files, which it mounts
/// over /etc for whatever it starts.
const NETNS_ETC: &str = "/etc/netns";

/// How host-name lookups behave on a host (see [`Net::set_resolver`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolver {
    /// The names given are in /etc/hosts.
    Works,
    /// No name resolves: the name server refuses at once.
    Fails,
    /// No name resolves, and every lookup hangs for minutes: the name server's
    /// packets vanish.
    Hangs,
}

/// A private network 10.231.N.0/24: a bridge in the root namespace holding
/// 10.231.N.254 (the "admin" path, over which the test process reaches every
/// host and which cuts never touch) and one namespace per [`Host`]. Dropping
/// it deletes every namespace and interface it made.
pub struct Net {
    name: String,
    id: u8,
    bridge: String,
    hosts: Mutex<Vec<Host>>,
    /// Locked while this Net lives, telling other processes that `id` is
    /// taken; the kernel unlocks it if we crash.
    _claim: File,
}

/// A simulated host: a network namespace with one address on its [`Net`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

impl Host {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace's name, for `ip netns exec`.
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

impl Net {
    /// A fresh network. N comes from the pid and a process-wide counter, then
    /// a lock file per N settles contention with other live test beds, and
    /// pieces with N's names left by a crashed run are deleted first.
    pub fn new(name: &str) -> Net {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        // Processes start 16 apart, so concurrent runs rarely contend.
        let first = (std::process::id() as usize)
            .wrapping_mul(16)
            .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
        fs::create_dir_all(CLAIMS).unwrap_or_else(|e| panic!("creating {CLAIMS}: {e}"));
        let (id, claim) = (0..256)
            .map(|i| ((first + i) % 256) as u8)
            .find_map(|id| Some((id, claim(id)?)))
            .unwrap_or_else(|| panic!("net {name}: all 256 subnets 10.231.N.0/24 are in use"));
        if let Err(e) = remove_pieces(id) {
            panic!("net {name}: stale pieces of subnet {id}: {e}");
        }

        let net = Net {
            name: name.to_string(),
            id,
            bridge: format!("ppb{id}"),
            hosts: Mutex::new(Vec::new()),
            _claim: claim,
        };
        // Without a bridge, traffic to 10.231/16 would follow the default
        // route off this machine. The guard is left in place on purpose: it
        // also covers nodes that outlive their Net and crashed runs.
        net.ip(&["route", "replace", "unreachable", "10.231.0.0/16"]);
        let bridge = net.bridge.as_str();
        // A fixed MAC: by default a bridge takes its lowest port's, which
        // changes as hosts come and go and leaves stale ARP entries behind.
        let mac = format!("02:e7:00:00:{id:02x}:fe");
        net.ip(&["link", "add", "name", bridge, "address", &mac, "type", "bridge"]);
        net.ip(&[
            "link",
            "set",
            bridge,
            "alias",
            &format!("pg_promoter testbed net {name}"),
        ]);
        net.ip(&["addr", "add", &format!("10.231.{id}.254/24"), "dev", bridge]);
        net.ip(&["link", "set", bridge, "up"]);
        net
    }

    /// N, which names every piece: subnet 10.231.N.0/24, bridge `ppbN`,
    /// namespaces `ppN-k`, veth ends `pvNhk` (bridge side) and `pvNpk`.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// A new host, the k-th (from 0) of this Net: a namespace with loopback
    /// up and a veth to the bridge, at 10.231.N.(k+1).
    pub fn host(&self, name: &str) -> Host {
        let mut hosts = self.hosts();
        let k = hosts.len();
        assert!(k < 253, "net {}: no addresses left for host {name}", self.name);
        let host = Host {
            name: name.to_string(),
            netns: format!("pp{}-{k}", self.id),
            ip: Ipv4Addr::new(10, 231, self.id, k as u8 + 1),
        };
        let (outer, inner) = (format!("pv{}h{k}", self.id), format!("pv{}p{k}", self.id));
        let ns = host.netns.as_str();
        self.ip(&["netns", "add", ns]);
        self.ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns,
        ]);
        self.ip(&["link", "set", &outer, "master", &self.bridge, "up"]);
        self.ip(&["-n", ns, "addr", "add", &format!("{}/24", host.ip), "dev", &inner]);
        self.ip(&["-n", ns, "link", "set", "lo", "up"]);
        self.ip(&["-n", ns, "link", "set", &inner, "up"]);
        self.ip(&[
            "-n", ns, "link", "add", SINK, "type", "veth", "peer", "name", SINK_PEER,
        ]);
        // No ARP, or the kernel would ask the void for a neighbour and
        // report "no route to host" after a few seconds instead of hanging.
        self.ip(&["-n", ns, "link", "set", SINK, "arp", "off", "up"]);
        hosts.push(host.clone());
        host
    }

    /// Cuts `a` and `b` apart in both directions, silently: their packets to
    /// each other are dropped, so connects and reads hang.
    pub fn cut(&self, a: &Host, b: &Host) {
        self.set_cut(a, b, &["unicast"], &["dev", SINK]);
    }

    /// Cuts `a` and `b` apart so that new connections between them fail at
    /// once ("No route to host"). Connections already open hang as with
    /// [`Net::cut`]: nothing tells the peer.
    pub fn cut_refusing(&self, a: &Host, b: &Host) {
        self.set_cut(a, b, &["unreachable"], &[]);
    }

    /// Cuts the way from `from` to `to` only: what `from` sends to `to` is
    /// lost, what `to` sends arrives (and its replies are lost).
    pub fn cut_one_way(&self, from: &Host, to: &Host) {
        self.check_pair(from, to);
        self.route_cut(from, to, &["unicast"], &["dev", SINK]);
        self.assert_cut(from, to);
    }

    /// Splits the hosts in two: `side` on one side, every other host of
    /// this Net on the other, each pair across cut both ways.
    pub fn split(&self, side: &[&Host]) {
        let others: Vec<Host> = self
            .hosts()
            .iter()
            .filter(|h| !side.contains(h))
            .cloned()
            .collect();
        for a in side {
            for b in &others {
                self.cut(a, b);
            }
        }
    }

    /// Undoes a cut between `a` and `b`; a no-op if there is none.
    pub fn heal(&self, a: &Host, b: &Host) {
        self.check_pair(a, b);
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", to.ip);
            self.ip(&["-n", &from.netns, "route", "flush", &dst, "proto", CUT_PROTO]);
        }
    }

    /// Cuts `a` silently from every other host this Net has now; the admin
    /// path stays. `a`'s side of every link goes in one command, so the cut
    /// starts at once however many hosts there are (on a busy machine each
    /// `ip` waits for the CPU); the other sides and the checks follow.
    pub fn isolate(&self, a: &Host) {
        let others: Vec<Host> = self.hosts().iter().filter(|h| *h != a).cloned().collect();
        let routes: Vec<String> = others
            .iter()
            .map(|o| format!("route replace unicast {}/32 dev {SINK} proto {CUT_PROTO}", o.ip))
            .collect();
        self.batch(&a.netns, &routes);
        for other in &others {
            self.route_cut(other, a, &["unicast"], &["dev", SINK]);
        }
        for other in &others {
            self.assert_cut(a, other);
            self.assert_cut(other, a);
        }
    }

    /// Gives `host` resolver files of its own (/etc/hosts, resolv.conf and
    /// nsswitch.conf, which `ip netns exec` mounts over /etc): `names` resolve
    /// while the resolver [`Resolver::Works`], nothing resolves otherwise.
    /// The first call must come before any process starts on the host; later
    /// calls rewrite the files in place, and running processes see them (glibc
    /// rereads them when they change).
    pub fn set_resolver(&self, host: &Host, names: &[(&str, Ipv4Addr)], resolver: Resolver) {
        self.check_host(host);
        // The name server: loopback, where nothing listens (refused at once),
        // or an address whose route leads into the sink (no answer, ever).
        let lost = Ipv4Addr::new(10, 231, self.id, 250);
        let (server, options) = match resolver {
            Resolver::Works | Resolver::Fails => (Ipv4Addr::LOCALHOST, "timeout:1 attempts:1"),
            Resolver::Hangs => (lost, "timeout:30 attempts:5"),
        };
        if resolver == Resolver::Hangs {
            let dst = format!("{lost}/32");
            self.ip(&[
                "-n",
                &host.netns,
                "route",
                "replace",
                "unicast",
                &dst,
                "dev",
                SINK,
            ]);
        }
        let mut hosts = String::from("127.0.0.1 localhost\n");
        if resolver == Resolver::Works {
            for (name, ip) in names {
                hosts.push_str(&format!("{ip} {name}\n"));
            }
        }
        let dir = Path::new(NETNS_ETC).join(&host.netns);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let files = [
            ("hosts", hosts),
            ("resolv.conf", format!("nameserver {server}\noptions {options}\n")),
            (
                "nsswitch.conf",
                "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".to_string(),
            ),
        ];
        for (file, text) in files {
            // In place: a bind mount holds the file itself, not its name.
            let path = dir.join(file);
            let written = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
            written.unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
    }

    /// Undoes every cut.
    pub fn heal_all(&self) {
        for host in self.hosts().iter() {
            self.ip(&["-n", &host.netns, "route", "flush", "proto", CUT_PROTO]);
        }
    }

    /// Routes each host's traffic to the other one as `kind` (a route type,
    /// then the destination, then `tail`), replacing any earlier cut.
    fn set_cut(&self, a: &Host, b: &Host, kind: &[&str], tail: &[&str]) {
        self.check_pair(a, b);
        for (from, to) in [(a, b), (b, a)] {
            self.route_cut(from, to, kind, tail);
        }
        for (from, to) in [(a, b), (b, a)] {
            self.assert_cut(from, to);
        }
    }

    fn route_cut(&self, from: &Host, to: &Host, kind: &[&str], tail: &[&str]) {
        let dst = format!("{}/32", to.ip);
        let head = ["-n", &from.netns, "route", "replace"];
        self.ip(&[&head[..], kind, &[dst.as_str()], tail, &["proto", CUT_PROTO]].concat());
    }

    /// The sink's route is "linkdown", which a namespace set to
    /// ignore_routes_with_linkdown would skip, silently leaving the link up;
    /// so ask the kernel where the traffic goes now (behind a refusing cut,
    /// the lookup itself fails).
    fn assert_cut(&self, from: &Host, to: &Host) {
        if let Ok(route) = ip(&["-n", &from.netns, "route", "get", &to.ip.to_string()]) {
            assert!(
                route.contains(&format!(" dev {SINK} ")),
                "net {}: {} still routes to {} over the link: {}",
                self.name,
                from.name,
                to.name,
                route.trim()
            );
        }
    }

    /// Runs `commands` (`ip` subcommands, one a line) in `netns` with one `ip`.
    fn batch(&self, netns: &str, commands: &[String]) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(CLAIMS).join(format!("batch-{}-{n}", std::process::id()));
        let write = fs::write(&path, commands.join("\n") + "\n");
        write.unwrap_or_else(|e| panic!("net {}: writing {}: {e}", self.name, path.display()));
        let result = ip(&["-n", netns, "-batch", &path.to_string_lossy()]);
        let _ = fs::remove_file(&path);
        if let Err(e) = result {
            panic!("net {}: {e}", self.name);
        }
    }

    fn check_pair(&self, a: &Host, b: &Host) {
        self.check_host(a);
        self.check_host(b);
        assert_ne!(a, b, "net {}: a host cannot be cut from itself", self.name);
    }

    fn check_host(&self, h: &Host) {
        let known = self.hosts().contains(h);
        assert!(known, "net {}: {} is not one of its hosts", self.name, h.name);
    }

    fn hosts(&self) -> MutexGuard<'_, Vec<Host>> {
        // A panic elsewhere must not stop Drop or later calls.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ip(&self, args: &[&str]) {
        if let Err(e) = ip(args) {
            panic!("net {}: {e}", self.name);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Drop may run while a test panics: report, never panic.
        if let Err(e) = remove_pieces(self.id) {
            eprintln!("testbed: net {}: {e}", self.name);
        }
    }
}

/// Locks the claim file of subnet `id`, or None if a live Net holds it.
fn claim(id: u8) -> Option<File> {
    let path = Path::new(CLAIMS).join(format!("net-{id}.lock"));
    let file = File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    match file.try_lock() {
        Ok(()) => Some(file),
        Err(TryLockError::WouldBlock) => None,
        Err(TryLockError::Error(e)) => panic!("locking {}: {e}", path.display()),
    }
}

/// Deletes every namespace and root-namespace interface named for subnet
/// `id`, whoever made them: `Err` names what is still there afterwards.
/// Going by name rather than by a record also catches the pieces of a host
/// whose creation failed halfway.
fn remove_pieces(id: u8) -> Result<(), String> {
    let outer_veth = format!("pv{id}h");
    let netns = format!("pp{id}-");
    let bridge = format!("ppb{id}");
    let ours = || -> Result<Vec<String>, String> {
        let links = links()?
            .into_iter()
            .filter(|l| l.starts_with(&outer_veth) || *l == bridge);
        let namespaces = namespaces()?.into_iter().filter(|n| n.starts_with(&netns));
        Ok(links.chain(namespaces).collect())
    };
    for name in ours()? {
        // Deleting the outer veth end also removes the inner one, even when
        // processes keep its namespace alive (`netns delete` then only drops
        // the name). Failures show up in the second listing; a piece that
        // vanished on its own in between is fine.
        let _ = if name.starts_with(&netns) {
            ip(&["netns", "delete", &name])
        } else {
            ip(&["link", "delete", &name])
        };
    }
    // Resolver files (`Net::set_resolver`).
    if let Ok(dirs) = fs::read_dir(NETNS_ETC) {
        for dir in dirs.flatten() {
            if dir.file_name().to_string_lossy().starts_with(&netns) {
                let _ = fs::remove_dir_all(dir.path());
            }
        }
    }
    match ours()? {
        left if left.is_empty() => Ok(()),
        left => Err(format!("cannot remove {left:?}")),
    }
}

/// Interface names in the root namespace.
fn links() -> Result<Vec<String>, String> {
    // Lines look like "7: pv3h0@if2: <BROADCAST,...".
    let out = ip(&["-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
        .map(str::to_string)
        .collect())
}

/// Named network namespaces.
fn namespaces() -> Result<Vec<String>, String> {
    // Lines look like "pp3-0 (id: 1)" or just "pp3-0".
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Runs `ip args`: `Ok(stdout)`, or `Err` with the command and its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run(cmd, IP_TIMEOUT)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("ip {} failed: {}", args.join(" "), out.stderr.trim()))
    }
}
