//! What a reload (SIGHUP) cannot change in a running proxy: the sockets it listens on, the store
//! it opened, whether TLS is on, and the pieces opened once at start (the log's format, the
//! audit log, the assertion signer, the sweeper). A reload keeps these as they are, names the
//! ones the file changed, and applies the rest.

use std::time::Duration;

use super::{Config, StoreKind};

/// The backend `kind` names, without `store.timeout` (which it carries, and which has its own
/// name in the log line).
fn backend(kind: &StoreKind) -> StoreKind {
    let mut kind = kind.clone();
    match &mut kind {
        StoreKind::Sqlite(c) => c.timeout = Duration::ZERO,
        StoreKind::Redis(c) => c.timeout = Duration::ZERO,
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
        keep(
            "admin.listen",
            new.admin.as_ref().map(|a| a.listen) != self.admin.as_ref().map(|a| a.listen),
        );
        let (old, fresh) = (&self.store, &new.store);
        keep(
            "store (kind, path, url, cluster and the backend's settings)",
            backend(&fresh.kind) != backend(&old.kind),
        );
        keep("store.timeout", fresh.timeout != old.timeout);
        keep(
            "store.sweep_interval",
            fresh.sweep_interval != old.sweep_interval,
        );
        keep("store.hash_users", fresh.hash_users != old.hash_users);
        // The store keeps its user index by this key.
        keep(
            "session.user_key",
            new.session.user_key != self.session.user_key,
        );
        keep(
            "tls",
            new.tls
                .as_ref()
                .map(|t| (t.certs.cert_path(), t.certs.key_path()))
                != self
                    .tls
                    .as_ref()
                    .map(|t| (t.certs.cert_path(), t.certs.key_path())),
        );
        keep("log.format", new.log_format != self.log_format);
        keep("audit", new.audit != self.audit);
        keep("assertion", new.assertion != self.assertion);
        // The store's encryption keys are the reload's own (the sealer takes them); the rest
        // of the store section is the one in use.
        let keys = (
            new.store.encryption_keys.clone(),
            new.store.encryption_key_file.clone(),
        );
        new.listen = self.listen;
        // The admin token was checked against the new file's address (none is needed only on
        // loopback): with the address kept, the token is kept with it.
        if new.admin.as_ref().map(|a| a.listen) != self.admin.as_ref().map(|a| a.listen) {
            new.admin = self.admin.clone();
        }
        new.store = self.store.clone();
        (new.store.encryption_keys, new.store.encryption_key_file) = keys;
        new.session.user_key = self.session.user_key.clone();
        new.tls = self.tls.clone();
        new.log_format = self.log_format;
        new.audit = self.audit.clone();
        new.assertion = self.assertion.clone();
        changed
    }
}
