//! A fault-injecting TCP proxy on loopback, to cut, refuse, and heal the
//! network between two nodes without root-only tools like iptables.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::pg::free_port;

/// How often idle pumps look at the mode; bounds how late a change is seen
/// by a connection without traffic.
const TICK: Duration = Duration::from_millis(50);

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass = 0,
    /// A cut cable: connections stay open (new ones are even accepted) but
    /// nothing gets through in either direction. Bytes already sent are held
    /// and delivered if the mode returns to `Pass`, as TCP would after the
    /// cable is mended.
    Blackhole = 1,
    /// A dead host: connections are closed and new ones get ECONNREFUSED.
    Refuse = 2,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Pass,
            1 => Mode::Blackhole,
            _ => Mode::Refuse,
        }
    }
}

/// A proxy from 127.0.0.1:`port()` to 127.0.0.1:`upstream_port`. Dropping it
/// closes every socket and joins every thread.
pub struct Proxy {
    shared: Arc<Shared>,
    /// Interrupts the acceptor's poll when the mode changes or we stop.
    wake: UnixStream,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    port: u16,
    upstream: u16,
    /// The requested mode, read by pumps on every turn.
    mode: AtomicU8,
    stop: AtomicBool,
    /// Clones of both sockets of every live connection, so a mode change can
    /// shut down connections whose pumps are blocked.
    conns: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next_id: AtomicU64,
    control: Mutex<Control>,
    /// Signalled when the acceptor has applied a mode change.
    applied: Condvar,
}

/// Mode changes are numbered so `set_mode` can wait until the acceptor has
/// opened or closed the listening socket accordingly.
#[derive(Default)]
struct Control {
    requested: u64,
    applied: u64,
    error: Option<String>,
}

impl Shared {
    fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    fn shutdown_all(&self) {
        for sockets in self.conns.lock().unwrap().values() {
            for s in sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Proxy {
    /// Starts a proxy in `Pass` mode on a fresh port.
    pub fn start(upstream_port: u16) -> Proxy {
        let (listener, port) = (0..100)
            .find_map(|_| {
                let port = free_port();
                // Someone outside this process may have taken it meanwhile.
                Some((TcpListener::bind(("127.0.0.1", port)).ok()?, port))
            })
            .expect("no free port for the proxy");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let (wake, wake_rx) = UnixStream::pair().expect("socketpair");
        for s in [&wake, &wake_rx] {
            s.set_nonblocking(true).expect("nonblocking socketpair");
        }
        let shared = Arc::new(Shared {
            port,
            upstream: upstream_port,
            mode: AtomicU8::new(Mode::Pass as u8),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            control: Mutex::new(Control::default()),
            applied: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept_loop(&shared, listener, &wake_rx))
                .expect("spawning proxy thread")
        };
        Proxy {
            shared,
            wake,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Switches mode; when it returns, the listening socket is open or closed
    /// accordingly and connections to be cut are shut down.
    pub fn set_mode(&self, mode: Mode) {
        let generation = {
            let mut control = self.shared.control.lock().unwrap();
            self.shared.mode.store(mode as u8, Ordering::SeqCst);
            control.requested += 1;
            control.requested
        };
        self.wake();
        let control = self.shared.control.lock().unwrap();
        let (mut control, wait) = self
            .shared
            .applied
            .wait_timeout_while(control, Duration::from_secs(10), |c| c.applied < generation)
            .unwrap();
        assert!(
            !wait.timed_out(),
            "proxy {}: switching to {mode:?} took over 10 s",
            self.port()
        );
        if let Some(e) = control.error.take() {
            panic!("proxy {}: switching to {mode:?}: {e}", self.port());
        }
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    fn wake(&self) {
        // A full socket buffer already guarantees a wake-up.
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Owns the listening socket: accepts, applies mode changes, and on stop
/// tears everything down.
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, wake: &UnixStream) {
    let mut listener = Some(listener);
    // Connections accepted while blackholed: open, never answered.
    let mut held: Vec<TcpStream> = Vec::new();
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut applied = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let requested = shared.control.lock().unwrap().requested;
        if requested != applied {
            let result = apply_mode(shared, &mut listener, &mut held);
            applied = requested;
            let mut control = shared.control.lock().unwrap();
            control.applied = requested;
            control.error = result.err();
            shared.applied.notify_all();
        }
        handlers.retain(|h| !h.is_finished());

        wait_readable(wake, listener.as_ref());
        while matches!((&*wake).read(&mut [0; 64]), Ok(n) if n > 0) {}
        let Some(l) = &listener else { continue };
        loop {
            match l.accept() {
                Ok((stream, _)) => match shared.mode() {
                    Mode::Pass => {
                        let shared = Arc::clone(shared);
                        handlers.push(thread::spawn(move || forward(&shared, stream)));
                    }
                    Mode::Blackhole => held.push(stream),
                    // Refuse is requested but not applied yet: refuse.
                    Mode::Refuse => drop(stream),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Anything but "no more pending" (e.g. out of fds) would
                    // make poll report readable at once: back off.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        thread::sleep(TICK);
                    }
                    break;
                }
            }
        }
    }
    shared.shutdown_all();
    drop(held);
    drop(listener);
    for h in handlers {
        let _ = h.join();
    }
}

fn apply_mode(
    shared: &Shared,
    listener: &mut Option<TcpListener>,
    held: &mut Vec<TcpStream>,
) -> Result<(), String> {
    let mode = shared.mode();
    if mode != Mode::Blackhole {
        held.clear();
    }
    if mode == Mode::Refuse {
        *listener = None;
        shared.shutdown_all();
    } else if listener.is_none() {
        *listener = Some(rebind(shared.port)?);
    }
    Ok(())
}

/// Binds the proxy's port again after `Refuse`; the old sockets may linger
/// briefly in the kernel.
fn rebind(port: u16) -> Result<TcpListener, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => {
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                return Ok(l);
            }
            Err(_) if Instant::now() < deadline => thread::sleep(TICK),
            Err(e) => return Err(format!("cannot bind 127.0.0.1:{port} again: {e}")),
        }
    }
}

/// Blocks until the wake socket or the listener is readable, or a second
/// has passed (a safety net; every state change also writes to `wake`).
fn wait_readable(wake: &UnixStream, listener: Option<&TcpListener>) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(wake.as_raw_fd())
        .chain(listener.map(|l| l.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live, correctly sized array of pollfd for the whole
    // call, and the descriptors stay open because we borrow their owners.
    // The result is ignored: the caller just tries non-blocking reads.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
}

/// Serves one accepted connection: connects upstream and pumps both ways
/// until either side closes or the proxy cuts it.
fn forward(shared: &Arc<Shared>, client: TcpStream) {
    // Upstream down: closing the client is what a direct connection would
    // have looked like, give or take the handshake.
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
        return;
    };
    let clones = || Some([client.try_clone().ok()?, upstream.try_clone().ok()?]);
    let (Some(registered), Some([client_back, upstream_back])) = (clones(), clones()) else {
        return;
    };
    // Small writes (protocol messages) must not wait for Nagle.
    for s in [&client, &upstream] {
        let _ = s.set_nodelay(true);
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.conns.lock().unwrap().insert(id, registered);
    let back = {
        let shared = Arc::clone(shared);
        thread::spawn(move || pump(&shared, upstream_back, client_back))
    };
    pump(shared, client, upstream);
    let _ = back.join();
    shared.conns.lock().unwrap().remove(&id);
}

/// Copies `src` to `dst` while the mode is `Pass`, holds bytes while it is
/// `Blackhole`, and closes both sockets on EOF, error, `Refuse` or stop.
fn pump(shared: &Shared, mut src: TcpStream, mut dst: TcpStream) {
    // Short reads so a silent connection still notices mode changes.
    let _ = src.set_read_timeout(Some(TICK));
    let mut buf = vec![0; 64 * 1024];
    let mut pending = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match shared.mode() {
            Mode::Refuse => break,
            Mode::Blackhole => {
                thread::sleep(TICK);
                continue;
            }
            Mode::Pass => {}
        }
        // Bytes read just before a switch to Blackhole go out only now.
        if !pending.is_empty() {
            if dst.write_all(&pending).is_err() {
                break;
            }
            pending.clear();
        }
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}
