//! What a reload (SIGHUP) cannot change in a running proxy: the sockets it listens on, the store
//! it opened (and its user index), and whether TLS is on. A reload keeps
//! these as they are, names the ones the file changed, and applies the rest.

use std::time::Duration;

use super::{Config, StoreKind};

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
        keep(
            "store (kind, path, url, cluster and the backend's settings)",
            backend(&fresh.kind) != backend(&old.kind),
        );
        keep("store.hash_users", fresh.hash_users != old.hash_users);
        // The store keeps its user index by this key.
        keep(
            "session.user_key",
            new.session.user_key != self.session.user_key,
        );
        // On or off only: new files are read by the reload (the certificate in use adopts
        // them), new claims or a new key file are the assertion signer's.
        keep("tls", new.tls.is_some() != self.tls.is_some());
        // The store's timeout, sweep interval, error policy and encryption keys are the
        // reload's own; the rest of the store section is the one in use.
        let mut store = self.store.clone();
        store.timeout = new.store.timeout;
        store.sweep_interval = new.store.sweep_interval;
        store.on_error = new.store.on_error;
        store.encryption_keys = std::mem::take(&mut new.store.encryption_keys);
        store.encryption_key_file = new.store.encryption_key_file.take();
        new.listen = self.listen;
        new.upgrade_socket = self.upgrade_socket.clone();
        // The admin token was checked against the new file's address (none is needed only on
        // loopback): with the address kept, the token is kept with it.
        if new.admin.as_ref().map(|a| a.listen) != self.admin.as_ref().map(|a| a.listen) {
            new.admin = self.admin.clone();
        }
        new.store = store;
        new.session.user_key = self.session.user_key.clone();
        // The listener's certificate is the one in use (`Certs::adopt` takes the new files).
        new.tls = self.tls.clone();
        changed
    }
}
