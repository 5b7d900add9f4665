//! The handoff over `upgrade_socket` (Pingora's upgrade, in small): the running proxy listens
//! on a Unix socket; a new process connects, receives the running proxy's listening sockets
//! (public, then admin) as `SCM_RIGHTS` in one message, and once it serves on them answers
//! `serving`. The old process then drops its copies (the sockets stay open in the new one, so
//! their accept queues are never closed: nothing waiting in them is reset) and drains. The
//! new process then binds the path anew (beside it, then renamed over it: the path always
//! names a socket) for the next upgrade.
//!
//! The wire: the old process sends `session-proxy-handoff/1 public[ admin]\n` with the
//! descriptors in that order; the new one answers `serving\n`. Only a peer of the same user
//! (`SO_PEERCRED`) is handed anything, and the socket file is `0600`.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::ListenError;

/// The first line's word, and the protocol's version.
const HELLO: &str = "session-proxy-handoff/1";
const SERVING: &[u8] = b"serving\n";
/// How long either side waits for the other during one handoff.
const LIMIT: Duration = Duration::from_secs(10);
/// The longest line either side sends.
const MAX_LINE: usize = 128;

/// The listening sockets a running proxy handed over.
#[derive(Debug, Default)]
pub(super) struct Handed {
    pub(super) public: Option<OwnedFd>,
    pub(super) admin: Option<OwnedFd>,
}

/// The running proxy that handed its listeners over, waiting to hear that this one serves.
pub(super) struct Predecessor {
    stream: UnixStream,
}

/// Asks the proxy answering on `path` for its listeners. `None` when none answers (no socket
/// file, or a stale one no process listens on): this process is the first.
pub(super) async fn take_over(path: &Path) -> Result<Option<(Predecessor, Handed)>, ListenError> {
    let failed = |source: io::Error| ListenError::UpgradeSocket {
        path: path.to_path_buf(),
        source,
    };
    let stream = match tokio::time::timeout(LIMIT, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => return Err(failed(io::ErrorKind::TimedOut.into())),
    };
    match tokio::time::timeout(LIMIT, receive(&stream)).await {
        Ok(Ok(handed)) => Ok(Some((Predecessor { stream }, handed))),
        Ok(Err(error)) => {
            // The running proxy went away (a drain began) or spoke another protocol: it
            // keeps what it has, and this process binds its own sockets.
            tracing::warn!(%error, path = %path.display(), "no listeners handed over; binding");
            Ok(None)
        }
        Err(_) => {
            tracing::warn!(path = %path.display(), "the running proxy did not hand its listeners over in time; binding");
            Ok(None)
        }
    }
}

/// Reads the old process's one line and the descriptors that came with it.
async fn receive(stream: &UnixStream) -> io::Result<Handed> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut line = [0u8; MAX_LINE];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    while !line[..got].contains(&b'\n') {
        if got == MAX_LINE {
            return Err(bad("a line longer than the protocol's"));
        }
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = stream
            .async_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut line[got..])];
                rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                    .map_err(io::Error::from)
            })
            .await?;
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(bad("more descriptors than a public and an admin listener"));
        }
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if received.bytes == 0 {
            return Err(bad("closed before the listeners came"));
        }
        got += received.bytes;
    }
    let text = std::str::from_utf8(&line[..got]).map_err(|_| bad("not text"))?;
    let mut words = text.trim_end().split(' ');
    if words.next() != Some(HELLO) {
        return Err(bad("not a session-proxy handoff"));
    }
    let names: Vec<&str> = words.collect();
    if names.len() != fds.len() {
        return Err(bad("as many names as descriptors"));
    }
    let mut handed = Handed::default();
    for (name, fd) in names.into_iter().zip(fds) {
        match name {
            "public" => handed.public = Some(fd),
            "admin" => handed.admin = Some(fd),
            _ => return Err(bad("a listener of an unknown name")),
        }
    }
    Ok(handed)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("handoff: {what}"))
}

impl Predecessor {
    /// Tells the old process that this one serves (it stops accepting and drains). A failure
    /// is only logged: this process holds the sockets either way, and an old process that is
    /// gone has nothing left to stop.
    pub(super) async fn serving(mut self) {
        let told = tokio::time::timeout(LIMIT, self.stream.write_all(SERVING)).await;
        match told {
            Ok(Ok(())) => tracing::info!("the running proxy was told to drain"),
            Ok(Err(error)) => {
                tracing::info!(%error, "the running proxy did not hear that this one serves (it stopped already)")
            }
            Err(_) => tracing::warn!("the running proxy did not read that this one serves"),
        }
    }
}

/// This process's offer of its listeners to the next one, on `upgrade_socket`. It holds a
/// copy of each listening socket: dropped (with the Unix socket) as soon as the offer is, which
/// the caller does when the drain begins, so a draining process never keeps a queue open that
/// nobody accepts from.
pub struct Offer {
    listener: UnixListener,
    public: OwnedFd,
    admin: Option<OwnedFd>,
}

impl Offer {
    /// Binds `path` (`0600`): beside it under a temporary name, then renamed over it, so that
    /// whoever connects to `path` meets either the old process or this one.
    pub(super) fn bind(path: &Path, public: OwnedFd, admin: Option<OwnedFd>) -> io::Result<Offer> {
        let mut name = OsString::from(path.file_name().unwrap_or_default());
        name.push(format!(".{}.new", std::process::id()));
        let fresh: PathBuf = path.with_file_name(name);
        let _ = std::fs::remove_file(&fresh);
        let placed = UnixListener::bind(&fresh).and_then(|listener| {
            std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&fresh, path)?;
            Ok(listener)
        });
        match placed {
            Ok(listener) => Ok(Offer {
                listener,
                public,
                admin,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&fresh);
                Err(e)
            }
        }
    }

    /// Waits for a new process and hands it the listeners; completes once one says it serves
    /// (then this process should stop accepting and drain). A new process that fails half-way
    /// changes nothing: this one serves on and waits for the next.
    pub async fn handed_over(self) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "upgrade_socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut stream = stream;
            match tokio::time::timeout(LIMIT, self.hand(&mut stream)).await {
                Ok(Ok(pid)) => {
                    tracing::info!(
                        successor = pid,
                        "handed the listeners to a new process; it serves now: draining"
                    );
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "upgrade_socket: a new process did not take over; serving on");
                }
                Err(_) => {
                    tracing::warn!(
                        "upgrade_socket: a new process did not take over in time; serving on"
                    );
                }
            }
        }
    }

    /// One handoff: the peer's user checked, the listeners sent, `serving` awaited. Returns
    /// the new process's pid.
    async fn hand(&self, stream: &mut UnixStream) -> io::Result<Option<i32>> {
        let peer = stream.peer_cred()?;
        if peer.uid() != rustix::process::geteuid().as_raw() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refused a peer of another user (uid {})", peer.uid()),
            ));
        }
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.public.as_fd()];
        let mut line = format!("{HELLO} public");
        if let Some(admin) = &self.admin {
            fds.push(admin.as_fd());
            line.push_str(" admin");
        }
        line.push('\n');
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(bad("no room for the descriptors"));
        }
        let bytes = line.as_bytes();
        let shared: &UnixStream = stream;
        let sent = shared
            .async_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    shared,
                    &[IoSlice::new(bytes)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            })
            .await?;
        stream.write_all(&bytes[sent..]).await?;
        let mut answer = Vec::new();
        let mut reader = BufReader::new((&mut *stream).take(MAX_LINE as u64));
        reader.read_until(b'\n', &mut answer).await?;
        if answer != SERVING {
            return Err(bad("the new process did not say it serves"));
        }
        Ok(peer.pid())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    async fn listener() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    fn dup(l: &tokio::net::TcpListener) -> OwnedFd {
        l.as_fd().try_clone_to_owned().unwrap()
    }

    /// The new process receives the very sockets (same addresses, both names), and the offer
    /// completes only once it says it serves.
    #[tokio::test]
    async fn the_listeners_pass_and_the_offer_ends_when_the_new_process_serves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let (public, admin) = (listener().await, listener().await);
        let offer = Offer::bind(&path, dup(&public), Some(dup(&admin))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut offered = tokio::spawn(offer.handed_over());
        let (predecessor, handed) = take_over(&path).await.unwrap().unwrap();
        let got = std::net::TcpListener::from(handed.public.unwrap());
        assert_eq!(got.local_addr().unwrap(), public.local_addr().unwrap());
        let got = std::net::TcpListener::from(handed.admin.unwrap());
        assert_eq!(got.local_addr().unwrap(), admin.local_addr().unwrap());
        let early = tokio::time::timeout(Duration::from_millis(100), &mut offered).await;
        assert!(
            early.is_err(),
            "the offer ended before the new process served"
        );
        predecessor.serving().await;
        tokio::time::timeout(LIMIT, offered).await.unwrap().unwrap();
    }

    /// A peer that takes the listeners and goes away without serving changes nothing: the
    /// offer waits for the next one.
    #[tokio::test]
    async fn a_new_process_that_fails_half_way_leaves_the_offer_standing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let public = listener().await;
        let offer = Offer::bind(&path, dup(&public), None).unwrap();
        let mut offered = tokio::spawn(offer.handed_over());
        let (failed, handed) = take_over(&path).await.unwrap().unwrap();
        assert!(handed.admin.is_none());
        drop((failed, handed));
        let early = tokio::time::timeout(Duration::from_millis(100), &mut offered).await;
        assert!(
            early.is_err(),
            "the offer ended without a new process serving"
        );
        let (next, _) = take_over(&path).await.unwrap().unwrap();
        next.serving().await;
        tokio::time::timeout(LIMIT, offered).await.unwrap().unwrap();
    }

    /// No socket file, or one nobody listens on (a proxy that died): no predecessor.
    #[tokio::test]
    async fn no_running_proxy_is_no_predecessor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        assert!(take_over(&path).await.unwrap().is_none());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(take_over(&path).await.unwrap().is_none());
        // And the next offer replaces the stale file.
        let public = listener().await;
        let _offer = Offer::bind(&path, dup(&public), None).unwrap();
        let stream = UnixStream::connect(&path).await;
        assert!(stream.is_ok());
    }

    /// Something else answering on the path is not a predecessor: the new process binds.
    #[tokio::test]
    async fn a_peer_that_speaks_another_protocol_hands_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let other = UnixListener::bind(&path).unwrap();
        let speaker = tokio::spawn(async move {
            let (mut stream, _) = other.accept().await.unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            stream
        });
        assert!(take_over(&path).await.unwrap().is_none());
        drop(speaker.await.unwrap());
    }
}
