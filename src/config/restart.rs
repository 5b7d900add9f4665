//! What a reload (SIGHUP) cannot change in a running proxy: the sockets it listens on, where the
//! store's sessions are (its kind, file, directory, server or cluster), and whether TLS is on.
//! A reload keeps these as they are, names the ones the file changed, and applies the rest; a
//! store whose other settings changed is opened again in the same place
//! ([`StoreConfig::reopens`]).

use std::path::Path;
use std::time::Duration;

use super::{Config, StoreConfig, StoreKind};

/// The backend `kind` names, without `store.timeout` (which it carries, and which a reload
/// changes: [`Timed`](crate::store::Timed)'s bound).
fn backend(kind: &StoreKind) -> StoreKind {
    let mut kind = kind.clone();
    match &mut kind {
        StoreKind::Sqlite(c) => c.timeout = Duration::ZERO,
        StoreKind::Redis(c) => c.timeout = Duration::ZERO,
        StoreKind::Postgres(c) => c.timeout = Duration::ZERO,
        StoreKind::Memory | StoreKind::Fs(_) => {}
    }
    kind
}

/// Where a store's sessions are: another place is another store, which takes a restart.
#[derive(PartialEq)]
enum Place<'a> {
    /// This process's memory (opened again, it keeps its sessions: `store::Reload`).
    Memory,
    Fs(&'a Path),
    Sqlite(&'a Path),
    Redis(&'a [String], bool),
    Postgres(&'a str),
}

fn place(kind: &StoreKind) -> Place<'_> {
    match kind {
        StoreKind::Memory => Place::Memory,
        StoreKind::Fs(c) => Place::Fs(&c.path),
        StoreKind::Sqlite(c) => Place::Sqlite(&c.path),
        StoreKind::Redis(c) => Place::Redis(&c.urls, c.cluster),
        StoreKind::Postgres(c) => Place::Postgres(&c.url),
    }
}

impl StoreConfig {
    /// Whether a reload from `self` to `new` (the same place, as
    /// [`Config::keep_restart_only`] left it) opens the store again: its backend's settings
    /// or its user index changed.
    pub fn reopens(&self, new: &StoreConfig) -> bool {
        backend(&self.kind) != backend(&new.kind) || self.users != new.users
    }
}

impl Config {
    /// Puts back into `new` every setting of `self` (the configuration in use) that takes a
    /// restart, and names those whose value `new` had changed, as the file spells them.
    pub fn keep_restart_only(&self, new: &mut Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut keep = |key: &'static str, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        keep("listen", new.listen != self.listen);
        keep("upgrade_socket", new.upgrade_socket != self.upgrade_socket);
        keep(
            "admin.listen",
            new.admin.as_ref().map(|a| a.listen) != self.admin.as_ref().map(|a| a.listen),
        );
        let (old, fresh) = (&self.store, &new.store);
        let moved = place(&fresh.kind) != place(&old.kind);
        keep("store (kind, path, url, cluster)", moved);
        // The user index is the store's: kept with a store that stays where it was.
        keep(
            "store.hash_users",
            moved && fresh.hash_users != old.hash_users,
        );
        keep(
            "session.user_key",
            moved && new.session.user_key != self.session.user_key,
        );
        // On or off only: new files are read by the reload (the certificate in use adopts
        // them), new claims or a new key file are the assertion signer's.
        keep("tls", new.tls.is_some() != self.tls.is_some());
        if moved {
            // The store's timeout, sweep interval, error policy and encryption keys are the
            // reload's own; the rest of the store section is the one in use.
            let mut store = self.store.clone();
            store.timeout = new.store.timeout;
            store.sweep_interval = new.store.sweep_interval;
            store.on_error = new.store.on_error;
            store.encryption_keys = std::mem::take(&mut new.store.encryption_keys);
            store.encryption_key_file = new.store.encryption_key_file.take();
            new.store = store;
            new.session.user_key = self.session.user_key.clone();
        }
        new.listen = self.listen;
        new.upgrade_socket = self.upgrade_socket.clone();
        // The admin token was checked against the new file's address (none is needed only on
        // loopback): with the address kept, the token is kept with it.
        if new.admin.as_ref().map(|a| a.listen) != self.admin.as_ref().map(|a| a.listen) {
            new.admin = self.admin.clone();
        }
        // The listener's certificate is the one in use (`Certs::adopt` takes the new files).
        new.tls = self.tls.clone();
        changed
    }
}
