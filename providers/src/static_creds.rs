//! The `static` provider: credentials a user keeps in a Secret or a file,
//! such as a Docker Hub account used against anonymous rate limits.

use async_trait::async_trait;

use crate::registry::dockerconfig::{self, DATA_KEY, DOCKER_HUB, SECRET_TYPE};
use crate::spec::StaticSpec;
use crate::{Cluster, Provider, ProviderError, RegistryCredential};

pub(crate) struct StaticProvider {
    spec: StaticSpec,
}

impl StaticProvider {
    pub(crate) fn new(spec: StaticSpec) -> Result<Self, ProviderError> {
        match (&spec.secret_ref, &spec.file) {
            (Some(_), Some(_)) => Err(ProviderError::InvalidSpec(
                "static: set either secretRef or file, not both".into(),
            )),
            (None, None) => Err(ProviderError::InvalidSpec(
                "static: one of secretRef or file is required".into(),
            )),
            _ => Ok(Self { spec }),
        }
    }
}

#[async_trait]
impl Provider for StaticProvider {
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
        if let Some(path) = &self.spec.file {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| ProviderError::File {
                    path: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?;
            return dockerconfig::parse(&bytes).map_err(|e| ProviderError::Malformed {
                what: path.display().to_string(),
                reason: e.to_string(),
            });
        }
        let reference = self.spec.secret_ref.as_ref().expect("checked in new()");
        let what = format!("Secret {}/{}", reference.namespace, reference.name);
        let secret =
            cluster
                .secret(reference)
                .await?
                .ok_or_else(|| ProviderError::SecretNotFound {
                    namespace: reference.namespace.clone(),
                    name: reference.name.clone(),
                })?;
        if secret.type_.as_deref() == Some(SECRET_TYPE) {
            let bytes = secret
                .data
                .get(DATA_KEY)
                .ok_or_else(|| ProviderError::Malformed {
                    what: what.clone(),
                    reason: format!("has no `{DATA_KEY}` key"),
                })?;
            return dockerconfig::parse(bytes).map_err(|e| ProviderError::Malformed {
                what,
                reason: e.to_string(),
            });
        }
        let text = |key: &str| -> Result<Option<String>, ProviderError> {
            secret
                .data
                .get(key)
                .map(|v| {
                    String::from_utf8(v.clone()).map_err(|_| ProviderError::Malformed {
                        what: what.clone(),
                        reason: format!("key `{key}` is not UTF-8"),
                    })
                })
                .transpose()
        };
        match (text("username")?, text("password")?) {
            (Some(username), Some(password)) => Ok(vec![RegistryCredential {
                host: text("server")?.unwrap_or_else(|| DOCKER_HUB.into()),
                username: username.trim_end_matches('\n').to_owned(),
                password: password.trim_end_matches('\n').to_owned().into(),
                expires_at: None,
            }]),
            _ => Err(ProviderError::WrongSecretType {
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                found: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{SecretRef, ServiceAccountRef};
    use crate::{SecretData, SourceError};

    struct OneSecret(Option<SecretData>);

    #[async_trait]
    impl Cluster for OneSecret {
        async fn secret(&self, _: &SecretRef) -> Result<Option<SecretData>, SourceError> {
            Ok(self.0.clone())
        }

        async fn service_account_token(
            &self,
            _: &ServiceAccountRef,
            _: &str,
        ) -> Result<crate::Redacted<String>, SourceError> {
            Err(SourceError::NoCluster)
        }
    }

    fn provider() -> StaticProvider {
        StaticProvider::new(StaticSpec {
            secret_ref: Some(SecretRef {
                namespace: "regbridge".into(),
                name: "dockerhub".into(),
            }),
            ..StaticSpec::default()
        })
        .unwrap()
    }

    fn secret(type_: &str, pairs: &[(&str, &[u8])]) -> OneSecret {
        OneSecret(Some(SecretData {
            type_: Some(type_.into()),
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect::<BTreeMap<_, _>>(),
        }))
    }

    #[tokio::test]
    async fn username_password_secret_defaults_to_docker_hub() {
        let got = provider()
            .mint(&secret(
                "Opaque",
                &[("username", b"me"), ("password", b"pw\n")],
            ))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host, DOCKER_HUB);
        assert_eq!(got[0].password.expose(), "pw");
    }

    #[tokio::test]
    async fn server_key_overrides_the_host() {
        let got = provider()
            .mint(&secret(
                "kubernetes.io/basic-auth",
                &[
                    ("username", b"me"),
                    ("password", b"pw"),
                    ("server", b"quay.io"),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(got[0].host, "quay.io");
    }

    #[tokio::test]
    async fn dockerconfigjson_secret_yields_all_its_hosts() {
        let doc = br#"{"auths":{"a.io":{"username":"a","password":"1"},"b.io":{"username":"b","password":"2"}}}"#;
        let got = provider()
            .mint(&secret(SECRET_TYPE, &[(DATA_KEY, doc)]))
            .await
            .unwrap();
        let hosts: Vec<_> = got.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(hosts, ["a.io", "b.io"]);
    }

    #[tokio::test]
    async fn missing_secret_is_named_in_the_error() {
        let err = provider().mint(&OneSecret(None)).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::SecretNotFound { ref name, .. } if name == "dockerhub")
        );
    }

    #[tokio::test]
    async fn secret_of_the_wrong_shape_is_rejected_with_its_type() {
        let err = provider()
            .mint(&secret("kubernetes.io/tls", &[("tls.crt", b"x")]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::WrongSecretType { ref found, .. } if found == "kubernetes.io/tls")
        );
    }

    #[tokio::test]
    async fn file_is_read_as_a_docker_config() {
        let dir = std::env::temp_dir().join(format!("regbridge-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, br#"{"auths":{"f.io":{"auth":"dTpwdw=="}}}"#).unwrap();
        let p = StaticProvider::new(StaticSpec {
            secret_ref: None,
            file: Some(path),
            ..StaticSpec::default()
        })
        .unwrap();
        let got = p.mint(&OneSecret(None)).await.unwrap();
        assert_eq!(
            (got[0].username.as_str(), got[0].password.expose().as_str()),
            ("u", "pw")
        );
    }

    #[test]
    fn both_or_neither_source_is_an_invalid_spec() {
        assert!(StaticProvider::new(StaticSpec::default()).is_err());
        let both = StaticSpec {
            secret_ref: Some(SecretRef::default()),
            file: Some("x".into()),
            ..StaticSpec::default()
        };
        assert!(StaticProvider::new(both).is_err());
    }
}
