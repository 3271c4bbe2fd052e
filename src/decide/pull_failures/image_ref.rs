//! Image references as the kubelet reads them (`pkg/util/parsers`
//! `ParseImageName`, after Docker's `reference.ParseNormalizedNamed`): a
//! short name gains Docker Hub's domain and `library/`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PullFailureError {
    #[error("image reference {image:?}: {why}")]
    BadImage { image: String, why: &'static str },
}

/// Docker Hub's canonical domain after normalisation.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";

/// An image reference normalised the way containerd, CRI-O and the kubelet
/// do it (distribution's `ParseNormalizedNamed`): `nginx` is
/// `docker.io/library/nginx`, `index.docker.io` is `docker.io`, and a first
/// component is a registry only when it holds a `.` or a `:`, is
/// `localhost`, or has upper case letters.
///
/// A small parser rather than a crate: the one maintained candidate
/// (`oci-spec`'s `distribution::Reference`) brings regex and derive_builder
/// for what is forty lines here, and we need only the domain and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path without tag or digest, e.g. `library/nginx`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(image: &str) -> Result<Self, PullFailureError> {
        let bad = |why| PullFailureError::BadImage {
            image: image.to_string(),
            why,
        };
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(bad("empty or contains whitespace"));
        }
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) if d.contains(':') => (n, Some(d.to_string())),
            Some(_) => return Err(bad("digest must be algorithm:hex")),
            None => (image, None),
        };
        let (domain, remainder) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB_DOMAIN, name),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB_DOMAIN
        } else {
            domain
        };
        let last_slash = remainder.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match remainder[last_slash..].rfind(':') {
            Some(i) => (
                &remainder[..last_slash + i],
                Some(remainder[last_slash + i + 1..].to_string()),
            ),
            None => (remainder, None),
        };
        if tag.as_deref() == Some("") {
            return Err(bad("empty tag"));
        }
        if path.is_empty() || path.split('/').any(str::is_empty) {
            return Err(bad("empty path component"));
        }
        if !path
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        {
            return Err(bad(
                "repository must be lower case letters, digits and . _ -",
            ));
        }
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(bad("invalid registry host"));
        }
        let path = if domain == DOCKER_HUB_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(Self {
            domain: domain.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`: what the kubelet hands its keyring (`repoToPull`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str()),
            ("docker.io", "library/nginx")
        );
        assert_eq!(
            ImageRef::parse("user/app:1").unwrap().name(),
            "docker.io/user/app"
        );
        assert_eq!(
            ImageRef::parse("docker.io/nginx").unwrap().name(),
            "docker.io/library/nginx"
        );
        assert_eq!(
            ImageRef::parse("index.docker.io/user/app").unwrap().name(),
            "docker.io/user/app"
        );
    }

    #[test]
    fn first_component_is_a_registry_only_with_dot_colon_localhost_or_upper_case() {
        assert_eq!(
            ImageRef::parse("localhost/app").unwrap().domain,
            "localhost"
        );
        assert_eq!(
            ImageRef::parse("localhost:5000/a/b:t").unwrap().domain,
            "localhost:5000"
        );
        assert_eq!(
            ImageRef::parse("reg.example/a").unwrap().domain,
            "reg.example"
        );
        assert_eq!(ImageRef::parse("Reg/a").unwrap().domain, "Reg");
        assert_eq!(ImageRef::parse("team/a").unwrap().domain, "docker.io");
    }

    #[test]
    fn tags_and_digests_are_split_off_the_path() {
        let r = ImageRef::parse("reg.example:5000/team/app:1.2").unwrap();
        assert_eq!(r.domain, "reg.example:5000");
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("reg.example/app:1@{d}")).unwrap();
        assert_eq!((r.path.as_str(), r.tag.as_deref()), ("app", Some("1")));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            "",
            "a b",
            "docker.io/Nginx",
            "reg.example/",
            "reg.example//a",
            "app:",
            "a@nodigest",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
