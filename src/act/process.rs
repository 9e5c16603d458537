//! Runs the pre- and post-promote commands without blocking the worker: `/bin/sh -c` in its own
//! process group, output read through a pipe the latch waits on, the whole group killed at the
//! deadline or when the worker must stop.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use policy::hook::Exit;

use crate::pg::latch::{sleep_until, wait, Interrupted, Socket};

/// Output kept from a command: its last bytes, enough for a diagnosis.
const KEEP_OUTPUT: usize = 8 * 1024;

/// How often to look for the child's exit while its output is quiet.
const POLL: Duration = Duration::from_millis(20);

pub struct Ran {
    pub exit: Exit,
    pub took: Duration,
    /// stdout and stderr, interleaved, at most the last `KEEP_OUTPUT` bytes.
    pub output: String,
}

pub fn run(command: &str, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Ran, String> {
    let (reader, writer) = pipe().map_err(|e| format!("could not create a pipe: {e}"))?;
    let start = Instant::now();
    let mut group = Group(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(writer))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not run /bin/sh: {e}"))?,
    );
    let child = &mut group.0;
    let deadline = start + timeout;
    let mut output = Vec::new();
    let mut pipe = std::fs::File::from(reader);
    let mut open = true;
    let result = loop {
        if open {
            open = drain(&mut pipe, &mut output);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                // The shell is gone; what it wrote is in the pipe unless a background child of
                // it still holds the pipe open.
                drain(&mut pipe, &mut output);
                let exit = match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(sig)) => Exit::Signal(sig),
                    (None, None) => Exit::Code(-1),
                };
                break Ok(exit);
            }
            Ok(None) => {}
            Err(e) => break Err(format!("could not wait for the command: {e}")),
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            break Ok(Exit::TimedOut);
        }
        let next = deadline.min(now + POLL);
        let waited = if open {
            wait(Socket::Readable(pipe.as_raw_fd()), next, stop).map(|_| ())
        } else {
            sleep_until(next, stop).map(|_| ())
        };
        if let Err(Interrupted) = waited {
            kill_group(child);
            break Err("interrupted: the worker is stopping".into());
        }
    };
    let keep = output.len().saturating_sub(KEEP_OUTPUT);
    result.map(|exit| Ran {
        exit,
        took: start.elapsed(),
        output: String::from_utf8_lossy(&output[keep..]).into_owned(),
    })
}

/// Reads what the pipe holds now; false once the writers are all gone (EOF).
fn drain(pipe: &mut std::fs::File, output: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => output.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The command's process group, killed and reaped if it is dropped while the shell still runs:
/// an ERROR raised by an interrupt in a backend unwinds through `run`.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            kill_group(&mut self.0);
        }
    }
}

/// Kills the command and everything it started, then reaps the shell.
fn kill_group(child: &mut Child) {
    // SAFETY: signals the process group the child leads (process_group(0) made it so).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
}

/// A pipe whose read end does not block and neither end leaks into other children.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors, owned from here on.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        let flags = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        if libc::fcntl(r.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((r, w))
    }
}
