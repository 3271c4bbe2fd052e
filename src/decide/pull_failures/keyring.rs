//! kubelet's keyring: which dockerconfigjson key serves an image, with
//! keys read through `registry::key`, the one reading regbridge has.

use regbridge_providers::registry::key::{self, Location};

use super::image_ref::{DOCKER_HUB_DOMAIN, ImageRef};

/// Whether kubelet would use the dockerconfigjson entry `keys[i]` for
/// `image`; returns the key it would try first.
///
/// Follows kubernetes `pkg/credentialprovider/keyring.go`
/// (`BasicDockerKeyring.Add`/`Lookup`, `URLsMatch`, `ParseSchemelessURL`,
/// `SplitURL`, `isDefaultRegistryMatch`; v1.35), which the kubelet calls
/// with the normalised repository name (`pkg/util/parsers.ParseImageName`):
/// - a key loses its scheme and a leading `/v1/` or `/v2/`; a remaining
///   path of `/` is no path, so `https://index.docker.io/v1/` is
///   `index.docker.io`;
/// - the image's host must have as many dot-separated labels as the key's,
///   each matching the key's label as a glob (`*.dkr.ecr.*.amazonaws.com`);
/// - the ports must be equal (both absent counts as equal);
/// - the key's path must be a prefix of the image's path. kubelet compares
///   strings, not segments: `reg.example/team` also serves
///   `reg.example/teamx/app`. We follow kubelet, since the question is what
///   kubelet would have sent;
/// - keys are tried most specific first (reverse lexical order);
/// - when nothing matched, an `index.docker.io` key serves Docker Hub images,
///   which are named `docker.io/...` and so never match it by label count.
pub fn matching_key<'a>(image: &str, keys: &'a [String]) -> Option<&'a str> {
    let target = ImageRef::parse(image).ok()?;
    let target_name = target.name();
    let target_url = Location::parse(&target_name);
    let mut normalised: Vec<(String, &'a str)> = keys
        .iter()
        .filter_map(|k| key::normalize(k).map(|n| (n, k.as_str())))
        .collect();
    // Stable, so of two keys that normalise alike the first listed wins.
    normalised.sort_by(|a, b| b.0.cmp(&a.0));
    normalised
        .iter()
        .find(|(n, _)| urls_match(&Location::parse(n), &target_url))
        .or_else(|| {
            (target.domain == DOCKER_HUB_DOMAIN)
                .then(|| normalised.iter().find(|(n, _)| n == "index.docker.io"))
                .flatten()
        })
        .map(|(_, original)| *original)
}

fn urls_match(glob: &Location<'_>, target: &Location<'_>) -> bool {
    let (glob_labels, glob_port) = glob.labels_and_port();
    let (target_labels, target_port) = target.labels_and_port();
    glob_port == target_port
        && glob_labels.len() == target_labels.len()
        && target.path.starts_with(glob.path)
        && glob_labels
            .iter()
            .zip(&target_labels)
            .all(|(g, t)| glob_match(g, t) == Some(true))
}

/// Go's `path/filepath.Match` for one host label: `*`, `?`, `[...]` with
/// ranges and `^`, and `\` escapes. `None` for a malformed pattern, which
/// kubelet treats as no match.
fn glob_match(pattern: &str, text: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_chars(&p, &t)
}

fn glob_chars(p: &[char], t: &[char]) -> Option<bool> {
    match p.first() {
        None => Some(t.is_empty()),
        Some('*') => {
            for i in 0..=t.len() {
                if glob_chars(&p[1..], &t[i..])? {
                    return Some(true);
                }
            }
            Some(false)
        }
        Some('?') => match t.split_first() {
            Some((_, rest)) => glob_chars(&p[1..], rest),
            None => Some(false),
        },
        Some('[') => {
            let (used, hit) = class_match(&p[1..], t.first().copied())?;
            match t.split_first() {
                Some((_, rest)) if hit => glob_chars(&p[1 + used..], rest),
                _ => Some(false),
            }
        }
        Some('\\') => {
            let c = p.get(1)?;
            match t.split_first() {
                Some((x, rest)) if x == c => glob_chars(&p[2..], rest),
                _ => Some(false),
            }
        }
        Some(c) => match t.split_first() {
            Some((x, rest)) if x == c => glob_chars(&p[1..], rest),
            _ => Some(false),
        },
    }
}

/// A `[...]` class after its `[`: how many pattern chars it used (through
/// the `]`), and whether `c` is in it.
fn class_match(p: &[char], c: Option<char>) -> Option<(usize, bool)> {
    let negate = p.first() == Some(&'^');
    let mut i = usize::from(negate);
    let mut hit = false;
    let mut ranges = 0;
    loop {
        match p.get(i) {
            None => return None,
            Some(']') if ranges > 0 => {
                i += 1;
                break;
            }
            _ => {}
        }
        let (lo, used) = class_char(&p[i..])?;
        i += used;
        let hi = if p.get(i) == Some(&'-') {
            let (hi, used) = class_char(&p[i + 1..])?;
            i += 1 + used;
            hi
        } else {
            lo
        };
        hit |= c.is_some_and(|c| lo <= c && c <= hi);
        ranges += 1;
    }
    Some((i, hit != negate))
}

fn class_char(p: &[char]) -> Option<(char, usize)> {
    match p.first()? {
        '-' | ']' => None,
        '\\' => p.get(1).map(|c| (*c, 2)),
        c => Some((*c, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn docker_hub_short_name_matches_index_docker_io_key() {
        let k = keys(&["https://index.docker.io/v1/"]);
        assert_eq!(
            matching_key("nginx", &k),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(
            matching_key("docker.io/user/app:1", &k),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(matching_key("quay.io/user/app", &k), None);
    }

    #[test]
    fn docker_io_key_matches_hub_images_directly() {
        let k = keys(&["docker.io"]);
        assert_eq!(matching_key("library/nginx", &k), Some("docker.io"));
    }

    #[test]
    fn hub_fallback_applies_only_when_nothing_else_matched() {
        let k = keys(&["https://index.docker.io/v1/", "docker.io/team"]);
        assert_eq!(matching_key("team/app", &k), Some("docker.io/team"));
        assert_eq!(
            matching_key("other/app", &k),
            Some("https://index.docker.io/v1/")
        );
    }

    #[test]
    fn index_docker_io_v1_without_trailing_slash_is_a_path_as_in_kubelet() {
        // kubelet strips "/v1/" only with its trailing slash; "/v1" stays a
        // path and no Docker Hub image starts with it.
        assert_eq!(
            key::normalize("index.docker.io/v1").as_deref(),
            Some("index.docker.io/v1")
        );
        assert_eq!(matching_key("nginx", &keys(&["index.docker.io/v1"])), None);
    }

    #[test]
    fn registry_1_docker_io_key_does_not_serve_hub_images() {
        assert_eq!(
            matching_key("nginx", &keys(&["registry-1.docker.io"])),
            None
        );
    }

    #[test]
    fn scheme_and_v2_prefix_are_dropped_from_keys() {
        assert_eq!(
            key::normalize("https://reg.example/v2/").as_deref(),
            Some("reg.example")
        );
        assert_eq!(
            key::normalize("http://reg.example/v1/team").as_deref(),
            Some("reg.example/team")
        );
        assert_eq!(
            key::normalize("reg.example/").as_deref(),
            Some("reg.example")
        );
        let k = keys(&["https://reg.example/v2/"]);
        assert_eq!(
            matching_key("reg.example/app:1", &k),
            Some("https://reg.example/v2/")
        );
    }

    /// kubelet's `TestURLsMatch` cases (`keyring_test.go`), glob key against
    /// the image's `domain/path`.
    #[test]
    fn urls_match_as_in_kubelets_table() {
        let table = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", true),
            ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", true),
            (
                "*.kubernetes.io:1111/blah",
                "prefix.kubernetes.io:1111/blah",
                true,
            ),
            (
                "prefix.*.io:1111/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                true,
            ),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.*.kubernetes.io", "prefix.kubernetes.io", false),
            ("*.*.kubernetes.io", "kubernetes.io", false),
            ("kubernetes.io", "kubernetes.com", false),
            ("k*.io", "quay.io", false),
            (
                "*.kubernetes.io:1234/blah",
                "prefix.kubernetes.io:1111/blah",
                false,
            ),
            (
                "prefix.*.io/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                false,
            ),
        ];
        for (glob, target, want) in table {
            let got = urls_match(&Location::parse(glob), &Location::parse(target));
            assert_eq!(got, want, "{glob} against {target}");
        }
    }

    /// kubelet's `TestDockerKeyringForGlob` and `TestKeyringMiss`: a key,
    /// and an image under `/foo/bar` it must (or must not) serve.
    #[test]
    fn keys_serve_images_as_in_kubelets_keyring_tests() {
        let hits = [
            ("https://hello.kubernetes.io", "hello.kubernetes.io"),
            ("https://*.docker.io", "prefix.docker.io"),
            ("https://prefix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.*", "prefix.docker.io"),
            ("https://*.docker.io/path", "prefix.docker.io/path"),
            ("https://prefix.*.io/path", "prefix.docker.io/path/subpath"),
            ("https://prefix.docker.*/path", "prefix.docker.io/path"),
            ("https://*.docker.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.*.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.docker.*:8888", "prefix.docker.io:8888"),
            ("https://*.docker.io/v1/", "prefix.docker.io/path"),
            ("https://*.docker.io/v2/", "prefix.docker.io/path"),
            ("prefix.docker.io:1111", "prefix.docker.io:1111/path"),
            ("*.docker.io:1111", "prefix.docker.io:1111/path"),
        ];
        for (key, image) in hits {
            let image = format!("{image}/foo/bar");
            assert!(
                matching_key(&image, &keys(&[key])).is_some(),
                "{key} should serve {image}"
            );
        }
        let misses = [
            ("https://hello.kubernetes.io", "world.mesos.org/foo/bar"),
            ("https://*.docker.com", "prefix.docker.io"),
            ("https://suffix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.c*", "prefix.docker.io"),
            ("suffix.*.io", "prefix.docker.io"),
            ("https://index.docker.io/v1/", "world.mesos.org/foo/bar"),
        ];
        for (key, image) in misses {
            let image = format!("{image}/foo/bar");
            assert!(
                matching_key(&image, &keys(&[key])).is_none(),
                "{key} should not serve {image}"
            );
        }
        // Docker Hub's default key serves unqualified and qualified Hub images.
        for image in [
            "google/docker-registry",
            "jenkins",
            "index.docker.io/google/docker-registry",
        ] {
            assert!(
                matching_key(image, &keys(&["https://index.docker.io/v1/"])).is_some(),
                "{image}"
            );
        }
    }

    #[test]
    fn host_labels_glob_match_one_for_one() {
        let k = keys(&["*.dkr.ecr.*.amazonaws.com"]);
        assert!(matching_key("123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1", &k).is_some());
        assert!(matching_key("123456789012.dkr.ecr.eu-west-1.amazonaws.com.cn/app", &k).is_none());
        let k = keys(&["*.example.com"]);
        assert!(matching_key("a.example.com/x", &k).is_some());
        assert!(
            matching_key("a.b.example.com/x", &k).is_none(),
            "* never spans a dot"
        );
        assert!(matching_key("example.com/x", &k).is_none());
    }

    #[test]
    fn glob_classes_and_escapes_follow_go_filepath_match() {
        assert_eq!(glob_match("reg[0-9]", "reg7"), Some(true));
        assert_eq!(glob_match("reg[^0-9]", "reg7"), Some(false));
        assert_eq!(glob_match("r?g", "reg"), Some(true));
        assert_eq!(glob_match(r"a\*", "a*"), Some(true));
        assert_eq!(glob_match(r"a\*", "ab"), Some(false));
        assert_eq!(glob_match("[", "a"), None);
        assert_eq!(glob_match("[]", "a"), None);
        assert_eq!(matching_key("reg.example/x", &keys(&["[.example"])), None);
    }

    #[test]
    fn port_must_match_exactly() {
        let k = keys(&["reg.example:5000"]);
        assert!(matching_key("reg.example:5000/app", &k).is_some());
        assert!(matching_key("reg.example/app", &k).is_none());
        assert!(matching_key("reg.example:5001/app", &k).is_none());
        assert!(matching_key("reg.example:5000/app", &keys(&["reg.example"])).is_none());
        assert!(matching_key("localhost:5000/app", &keys(&["localhost:5000"])).is_some());
    }

    #[test]
    fn key_path_is_a_string_prefix_of_the_image_path_as_in_kubelet() {
        let k = keys(&["quay.io/team"]);
        assert!(matching_key("quay.io/team/app", &k).is_some());
        assert!(matching_key("quay.io/other/app", &k).is_none());
        // kubelet compares strings, not segments: it would send this key.
        assert!(matching_key("quay.io/teamx/app", &k).is_some());
    }

    #[test]
    fn most_specific_key_is_tried_first() {
        let k = keys(&["quay.io", "quay.io/team"]);
        assert_eq!(matching_key("quay.io/team/app", &k), Some("quay.io/team"));
        assert_eq!(matching_key("quay.io/other/app", &k), Some("quay.io"));
    }

    #[test]
    fn digest_references_match_by_repository() {
        let image = format!("reg.example/app@sha256:{}", "b".repeat(64));
        assert_eq!(
            matching_key(&image, &keys(&["reg.example"])),
            Some("reg.example")
        );
    }

    #[test]
    fn unparseable_image_matches_nothing() {
        assert_eq!(matching_key("not an image", &keys(&["docker.io"])), None);
    }
}
