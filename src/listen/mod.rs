//! Where the listening sockets come from: systemd (socket activation), the running proxy this
//! one replaces (the handoff over `upgrade_socket`), or a bind of their own. Whichever it is,
//! the accept queue a client lands in is never closed under it while a proxy still serves
//! the port: see docs/src/operations.md.
//!
//! A socket this process binds has `SO_REUSEPORT` (and `SO_REUSEADDR`), so a second process
//! can bind the same address while the first still serves. That alone is not a handoff: the
//! kernel spreads connections over both sockets, and when the first closes its socket the
//! connections still waiting in its queue are reset. The handoff avoids that by giving the
//! new process the very socket the old one listens on (`handoff.rs`): one queue, two
//! processes accepting from it for a moment, then only the new one.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpSocket};

mod handoff;

pub use handoff::Offer;

/// The accept queue's length for a socket this process binds (tokio's `TcpListener::bind`
/// uses the same; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 1024;

/// Where a listener came from, as the start's log line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Bound by this process (with `SO_REUSEPORT`).
    Bound,
    /// Passed by systemd (`LISTEN_FDS`): socket activation.
    Systemd,
    /// Handed over by the proxy that served before, over `upgrade_socket`.
    HandedOver,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bound => "bound",
            Source::Systemd => "systemd (LISTEN_FDS)",
            Source::HandedOver => "handed over by the running proxy",
        }
    }
}

/// Why the listeners could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A descriptor systemd passed is not a listening TCP socket.
    #[error("LISTEN_FDS: descriptor {index} ({name}) is not a TCP listener: {source}")]
    Inherited {
        index: usize,
        name: &'static str,
        #[source]
        source: io::Error,
    },
    /// The `upgrade_socket` path cannot be reached or bound.
    #[error("upgrade_socket {}: {source}", path.display())]
    UpgradeSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The listeners systemd passed (socket activation), taken from the environment.
///
/// Which descriptor is which: the one named `public` in `LISTEN_FDNAMES` (else the first) is
/// the public listener, the one named `admin` (else the second) the admin listener.
#[derive(Debug, Default)]
pub struct Inherited {
    public: Option<io::Result<std::net::TcpListener>>,
    admin: Option<io::Result<std::net::TcpListener>>,
    indexes: (usize, usize),
}

impl Inherited {
    /// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (listenfd checks the pid and
    /// removes the first two from the environment). Call it before a second thread exists:
    /// changing the environment races with every other thread that reads it.
    pub fn from_env() -> Self {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Inherited::default();
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let named = |name: &str| names.iter().position(|n| n == name);
        let public = named("public").unwrap_or(0);
        let admin = named("admin").unwrap_or(if public == 1 { 0 } else { 1 });
        let mut take = |index: usize| fds.take_tcp_listener(index).transpose();
        Inherited {
            public: take(public),
            admin: if admin == public { None } else { take(admin) },
            indexes: (public, admin),
        }
    }
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub upgrade_socket: Option<&'a Path>,
}

/// The listeners this process serves on, with where each came from.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
    pub sources: (Source, Option<Source>),
    /// The proxy that handed its listeners over, told once this one serves.
    predecessor: Option<handoff::Predecessor>,
    upgrade_socket: Option<PathBuf>,
}

/// Gets the listeners `wanted` names: from systemd when it passed them (the handoff is then
/// not used: systemd holds the sockets across restarts), else from the running proxy that
/// answers on `upgrade_socket`, else bound here. A handed socket whose address is not the
/// wanted one is not used (and the running proxy keeps it).
pub async fn acquire(wanted: Wanted<'_>, inherited: Inherited) -> Result<Listeners, ListenError> {
    let Inherited {
        public: sd_public,
        admin: sd_admin,
        indexes,
    } = inherited;
    let systemd = sd_public.is_some();
    let mut handed = handoff::Handed::default();
    let mut predecessor = None;
    match wanted.upgrade_socket {
        Some(path) if !systemd => {
            if let Some((from, listeners)) = handoff::take_over(path).await? {
                (predecessor, handed) = (Some(from), listeners);
            }
        }
        Some(_) => tracing::info!(
            "upgrade_socket is not used: systemd passed the listeners (socket activation)"
        ),
        None => {}
    }
    let (public, public_from) = match sd_public {
        Some(listener) => (
            from_systemd(listener, indexes.0, "public")?,
            Source::Systemd,
        ),
        None => match matching(handed.public.take(), wanted.public, "public") {
            Some(listener) => (listener, Source::HandedOver),
            None => {
                // The predecessor keeps serving: nothing is taken from it.
                predecessor = None;
                handed.admin = None;
                (bind(wanted.public)?, Source::Bound)
            }
        },
    };
    let admin = match (wanted.admin, sd_admin) {
        (None, _) => None,
        (Some(_), Some(listener)) => {
            Some((from_systemd(listener, indexes.1, "admin")?, Source::Systemd))
        }
        (Some(addr), None) => match matching(handed.admin.take(), addr, "admin") {
            Some(listener) => Some((listener, Source::HandedOver)),
            None => Some((bind(addr)?, Source::Bound)),
        },
    };
    let (admin, admin_from) = admin.unzip();
    Ok(Listeners {
        public: tokio_listener(public).map_err(|source| ListenError::Bind {
            addr: wanted.public,
            source,
        })?,
        admin: admin
            .map(tokio_listener)
            .transpose()
            .map_err(|source| ListenError::Bind {
                addr: wanted.admin.unwrap_or(wanted.public),
                source,
            })?,
        sources: (public_from, admin_from),
        predecessor,
        // Under systemd nothing is offered either: the next process gets the sockets from it.
        upgrade_socket: wanted
            .upgrade_socket
            .filter(|_| !systemd)
            .map(Path::to_path_buf),
    })
}

impl Listeners {
    /// Called once this process is about to accept: takes over `upgrade_socket` for the next
    /// process (`None` without it), then tells the proxy that handed its listeners over, which
    /// stops accepting and drains. In that order: if the path cannot be bound, this process
    /// exits with the error and the old one, never told, serves on.
    pub async fn serving(&mut self) -> Result<Option<Offer>, ListenError> {
        let offer = match &self.upgrade_socket {
            Some(path) => {
                let dup = |l: &TcpListener| l.as_fd().try_clone_to_owned();
                let offered = dup(&self.public).and_then(|public| {
                    let admin = self.admin.as_ref().map(dup).transpose()?;
                    Offer::bind(path, public, admin)
                });
                Some(offered.map_err(|source| ListenError::UpgradeSocket {
                    path: path.clone(),
                    source,
                })?)
            }
            None => None,
        };
        if let Some(predecessor) = self.predecessor.take() {
            predecessor.serving().await;
        }
        Ok(offer)
    }
}

/// A socket of our own on `addr`, shareable with the next process (`SO_REUSEPORT`).
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let bound = || -> io::Result<std::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)?.into_std()
    };
    bound().map_err(|source| ListenError::Bind { addr, source })
}

fn from_systemd(
    listener: io::Result<std::net::TcpListener>,
    index: usize,
    name: &'static str,
) -> Result<std::net::TcpListener, ListenError> {
    listener.map_err(|source| ListenError::Inherited {
        index,
        name,
        source,
    })
}

/// The handed socket, if it listens on `wanted` (any port when `wanted`'s is 0).
fn matching(
    handed: Option<OwnedFd>,
    wanted: SocketAddr,
    name: &str,
) -> Option<std::net::TcpListener> {
    let listener = std::net::TcpListener::from(handed?);
    match listener.local_addr() {
        Ok(at) if at.ip() == wanted.ip() && (wanted.port() == 0 || at.port() == wanted.port()) => {
            Some(listener)
        }
        Ok(at) => {
            tracing::warn!(
                listener = name,
                running = %at,
                configured = %wanted,
                "the running proxy listens elsewhere; binding the configured address instead"
            );
            None
        }
        Err(error) => {
            tracing::warn!(listener = name, %error, "the handed socket is not a TCP listener");
            None
        }
    }
}

fn tokio_listener(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}
