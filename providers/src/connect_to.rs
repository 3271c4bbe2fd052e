//! `REGBRIDGE_CONNECT_TO`: host names that every HTTPS client of regbridge
//! reaches at a fixed address instead of through DNS, as curl's `--resolve`
//! does. The URL, the `Host` header and the certificate check keep the
//! name, so nothing else changes: a certificate must still be valid for it.
//!
//! Meant for tests and debugging, not for production. It lets a test point
//! `myregistry.azurecr.io` and `login.microsoftonline.com` at loopback stubs
//! and run `regbridge mint --verify` on a shipped example unchanged.
//!
//! The format is `name=ip:port`, comma-separated:
//! `REGBRIDGE_CONNECT_TO=myregistry.azurecr.io=127.0.0.1:8443`. A URL that
//! names its own port keeps it, as reqwest's resolver overrides do. Entries
//! that do not parse are reported once and ignored.
//!
//! The table is read once per process. The providers' clients get it
//! through [`crate::Trust::client_builder`], and the registry handshake also
//! uses it when it checks where a token realm resolves.

use std::net::SocketAddr;
use std::sync::OnceLock;

/// The variable's name.
pub const VAR: &str = "REGBRIDGE_CONNECT_TO";

fn table() -> &'static [(String, SocketAddr)] {
    static TABLE: OnceLock<Vec<(String, SocketAddr)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let raw = std::env::var(VAR).unwrap_or_default();
        let (table, bad) = parse(&raw);
        for entry in bad {
            tracing::warn!(variable = VAR, %entry, "ignoring an entry that is not name=ip:port");
        }
        if !table.is_empty() {
            tracing::warn!(
                variable = VAR,
                names = ?table.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                "DNS is bypassed for these names (meant for tests)"
            );
        }
        table
    })
}

/// The entries of `raw` that parse, and those that do not.
fn parse(raw: &str) -> (Vec<(String, SocketAddr)>, Vec<String>) {
    let mut table = Vec::new();
    let mut bad = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=').and_then(|(name, addr)| {
            let name = name.trim().to_ascii_lowercase();
            let addr = addr.trim().parse::<SocketAddr>().ok()?;
            (!name.is_empty()).then_some((name, addr))
        }) {
            Some(pair) => table.push(pair),
            None => bad.push(entry.to_owned()),
        }
    }
    (table, bad)
}

/// `builder` with every entry installed as a resolver override.
pub(crate) fn apply(mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    for (name, addr) in table() {
        builder = builder.resolve(name, *addr);
    }
    builder
}

/// Where a client built by [`apply`] connects for `name`, when the table
/// names it: the entry's address, with `explicit_port` when the URL has one.
pub(crate) fn lookup(name: &str, explicit_port: Option<u16>) -> Option<SocketAddr> {
    let name = name.to_ascii_lowercase();
    table().iter().find(|(n, _)| *n == name).map(|(_, addr)| {
        let mut addr = *addr;
        if let Some(port) = explicit_port {
            addr.set_port(port);
        }
        addr
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_name_equals_address_and_bad_ones_are_set_aside() {
        let (table, bad) = parse(
            " MyRegistry.azurecr.io=127.0.0.1:8443, login.microsoftonline.com=[::1]:9443,nonsense,x=notanaddr,",
        );
        assert_eq!(
            table,
            [
                (
                    "myregistry.azurecr.io".to_string(),
                    "127.0.0.1:8443".parse().unwrap()
                ),
                (
                    "login.microsoftonline.com".to_string(),
                    "[::1]:9443".parse().unwrap()
                ),
            ]
        );
        assert_eq!(bad, ["nonsense", "x=notanaddr"]);
        assert_eq!(parse(""), (vec![], vec![]));
    }
}
