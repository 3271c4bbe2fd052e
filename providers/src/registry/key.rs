//! How kubelet reads a dockerconfigjson key (kubernetes
//! `pkg/credentialprovider/keyring.go`: `BasicDockerKeyring.Add`,
//! `ParseSchemelessURL`, `SplitURL`). The one reading in regbridge:
//! composition de-duplicates by it, verification asks the host it names,
//! and pull feedback matches images against it, so the three can never
//! disagree about which registry a key is.
//!
//! - The scheme goes (`https://`, `http://`).
//! - A leading `/v1/` or `/v2/` goes, and a path of `/` is no path, so
//!   `https://index.docker.io/v1/` is `index.docker.io`. `/v1` without its
//!   trailing slash stays a path, as in kubelet.
//! - User information goes, as Go's `url.Parse` keeps it out of the host.
//! - Case is kept: kubelet compares hosts as written.

/// A key as kubelet reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key<'a> {
    /// Written with `http://`: a registry served over plain HTTP.
    pub plain_http: bool,
    /// The key carried user information (`user@host`), which kubelet drops.
    pub userinfo: bool,
    /// `host[:port]`, possibly with glob characters.
    pub host: &'a str,
    /// What kubelet keeps of the path: empty, or starting with `/`.
    pub path: String,
}

impl<'a> Key<'a> {
    /// `None` for a key that names no host.
    pub fn parse(key: &'a str) -> Option<Self> {
        let key = key.trim();
        let (plain_http, rest) = match (key.get(..7), key.get(..8)) {
            (_, Some(s)) if s.eq_ignore_ascii_case("https://") => (false, &key[8..]),
            (Some(s), _) if s.eq_ignore_ascii_case("http://") => (true, &key[7..]),
            _ => (false, key),
        };
        let location = Location::parse(rest);
        if location.host.is_empty() {
            return None;
        }
        let path = location
            .path
            .strip_prefix("/v2/")
            .or_else(|| location.path.strip_prefix("/v1/"))
            .map(|p| format!("/{p}"))
            .unwrap_or_else(|| location.path.to_string());
        Some(Self {
            plain_http,
            userinfo: location.userinfo,
            host: location.host,
            path: if path == "/" { String::new() } else { path },
        })
    }

    /// The key kubelet indexes the credential under: `host` or `host/path`.
    pub fn normalized(&self) -> String {
        format!("{}{}", self.host, self.path)
    }
}

/// kubelet's index key for a dockerconfigjson key; `None` when it names no
/// host (kubelet skips such keys).
pub fn normalize(key: &str) -> Option<String> {
    Key::parse(key).map(|k| k.normalized())
}

/// Whether two keys are one entry to kubelet.
pub fn same(a: &str, b: &str) -> bool {
    match (normalize(a), normalize(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// The parts of a scheme-less URL that matching reads: `host[:port]` and
/// the path. Query and fragment go; so does user information, flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub userinfo: bool,
}

impl<'a> Location<'a> {
    pub fn parse(s: &'a str) -> Self {
        let s = s.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let (host, userinfo) = match authority.rsplit_once('@') {
            Some((_, host)) => (host, true),
            None => (authority, false),
        };
        Self {
            host,
            path,
            userinfo,
        }
    }

    /// The host's dot-separated labels and the port (empty if none), as
    /// kubelet's `SplitURL` gives them: Go's `net.SplitHostPort`, falling
    /// back to the whole host with no port when it does not parse.
    pub fn labels_and_port(&self) -> (Vec<&'a str>, &'a str) {
        let (host, port) = split_host_port(self.host).unwrap_or((self.host, ""));
        (host.split('.').collect(), port)
    }
}

fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = hostport.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of kubelet's own keyring tests (`keyring_test.go`:
    /// `TestDockerKeyringForGlob`, `TestKeyringMiss`, and the Docker Hub
    /// cases), with the index key kubelet files each under.
    #[test]
    fn keys_normalise_as_in_kubelets_keyring_tests() {
        let table = [
            ("https://hello.kubernetes.io", "hello.kubernetes.io"),
            ("https://*.docker.io", "*.docker.io"),
            ("https://prefix.*.io", "prefix.*.io"),
            ("https://*.docker.io/path", "*.docker.io/path"),
            ("https://prefix.docker.*/path", "prefix.docker.*/path"),
            ("https://*.docker.io:8888", "*.docker.io:8888"),
            ("https://*.docker.io/path:1111", "*.docker.io/path:1111"),
            ("https://*.docker.io/v1/", "*.docker.io"),
            ("https://*.docker.io/v2/", "*.docker.io"),
            ("prefix.docker.io:1111", "prefix.docker.io:1111"),
            ("*.docker.io:1111", "*.docker.io:1111"),
            ("suffix.*.io", "suffix.*.io"),
            ("https://index.docker.io/v1/", "index.docker.io"),
            // Beyond kubelet's tests, what its code does:
            ("index.docker.io/v1", "index.docker.io/v1"),
            ("http://reg.example/v1/team", "reg.example/team"),
            ("reg.example/", "reg.example"),
            ("HTTPS://Reg.Example:5000/", "Reg.Example:5000"),
            ("user@reg.example/team?x#y", "reg.example/team"),
        ];
        for (key, want) in table {
            assert_eq!(normalize(key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(normalize("https:///v2/"), None);
        assert_eq!(normalize(""), None);
    }

    #[test]
    fn a_key_keeps_its_scheme_and_userinfo_as_flags() {
        let k = Key::parse("http://u@reg.example:5000/v2/").unwrap();
        assert!(k.plain_http && k.userinfo);
        assert_eq!((k.host, k.path.as_str()), ("reg.example:5000", ""));
        let k = Key::parse("reg.example").unwrap();
        assert!(!k.plain_http && !k.userinfo);
    }

    #[test]
    fn same_compares_as_kubelet_indexes() {
        assert!(same("https://index.docker.io/v1/", "index.docker.io"));
        assert!(same("http://r.io/v2/team", "r.io/team"));
        assert!(!same("index.docker.io/v1", "index.docker.io"));
        assert!(!same("Reg.example", "reg.example"));
    }

    #[test]
    fn locations_split_host_port_as_go_does() {
        let l = Location::parse("prefix.docker.io:1111/path");
        assert_eq!(
            l.labels_and_port(),
            (vec!["prefix", "docker", "io"], "1111")
        );
        let l = Location::parse("[::1]:5000/x");
        assert_eq!(l.labels_and_port(), (vec!["::1"], "5000"));
        // No port that parses: the whole host, no port.
        let l = Location::parse("reg.example:/x");
        assert_eq!(l.labels_and_port().1, "");
    }
}
