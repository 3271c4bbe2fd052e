//! The `ecrPublic` provider through the real `aws-sdk-ecrpublic` against a
//! loopback server speaking ECR Public's wire protocol (AWS JSON 1.1,
//! `X-Amz-Target: SpencerFrontendService.GetAuthorizationToken`, SigV4 with
//! signing name `ecr-public`). moto has no ECR Public backend, so the server
//! is ours; it records the request so the test can check the region the SDK
//! signed for. Reached through `AWS_ENDPOINT_URL_ECR_PUBLIC`, as a user would
//! redirect the SDK.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regbridge_providers::spec::{CredentialSpec, EcrPublicSpec};
use regbridge_providers::{BuildContext, NoCluster, build};
use serde_json::json;

#[tokio::test]
async fn token_is_for_public_ecr_aws_and_signed_for_us_east_1_whatever_the_region() {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/",
        post(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let h = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                record
                    .lock()
                    .unwrap()
                    .push((h("x-amz-target"), h("authorization")));
                (
                    [("content-type", "application/x-amz-json-1.1")],
                    json!({
                        "authorizationData": {
                            "authorizationToken": STANDARD.encode("AWS:public-pull-password"),
                            "expiresAt": 1_900_000_000.0,
                        }
                    })
                    .to_string(),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // SAFETY: this binary has this one test, so nothing else reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL_ECR_PUBLIC", format!("http://{addr}"));
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIAREGBRIDGETEST");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test-secret");
        std::env::set_var("AWS_REGION", "eu-west-1"); // ignored: ECR Public is us-east-1 only
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let none = std::env::temp_dir().join("regbridge-no-such-aws-file");
        std::env::set_var("AWS_CONFIG_FILE", &none);
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &none);
    }
    let mut ctx = BuildContext::new("public");
    ctx.timeout = Duration::from_secs(10);
    let creds = build(&CredentialSpec::EcrPublic(EcrPublicSpec::default()), &ctx)
        .unwrap()
        .mint(&NoCluster)
        .await
        .expect("mint");
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].host, "public.ecr.aws");
    assert_eq!(creds[0].username, "AWS");
    assert_eq!(creds[0].password.expose(), "public-pull-password");
    assert_eq!(creds[0].expires_at.unwrap().timestamp(), 1_900_000_000);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "SpencerFrontendService.GetAuthorizationToken");
    assert!(
        seen[0].1.contains("/us-east-1/ecr-public/aws4_request"),
        "{}",
        seen[0].1
    );
}
