//! The mocked-API test tier (feature `testing`): a [`kube::Client`] whose requests land in an
//! [`ApiServer`] the test drives, so a test asserts the exact requests a reconcile sends and answers each
//! as the API server would (an object, a 403, a 409, a 422). Modelled on kube-rs controller-rs's
//! `ApiServerVerifier`. A request the test did not expect fails it ([`ApiServer::done`]).

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// The other end of a mocked [`Client`].
pub struct ApiServer {
    handle: Handle,
}

/// One request of the client, waiting for its answer.
pub struct ApiRequest {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string, empty when there is none.
    pub query: String,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: serde_json::Value,
    respond: mock::SendResponse<Response<Body>>,
}

impl ApiServer {
    /// A client for a controller under test and the server end the test drives. The client's default
    /// namespace is `default`.
    pub fn new() -> (Client, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), ApiServer { handle })
    }

    /// The next request of the client; panics when the client is gone or sends none within 10 s.
    pub async fn next(&mut self) -> ApiRequest {
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.handle.next_request(),
        );
        let (request, respond) = next
            .await
            .expect("the client sent no further request within 10 s")
            .expect("the client is gone: no further request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a readable request body");
        ApiRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            respond,
        }
    }

    /// Asserts that the client sent nothing more. Call it once the code under test has returned: every
    /// request it made is then already here.
    pub fn done(mut self) {
        use futures::FutureExt;
        if let Some(Some((request, _))) = self.handle.next_request().now_or_never() {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }
}

impl ApiRequest {
    /// Asserts the method and path (without the query).
    pub fn assert(&self, method: &str, path: &str) {
        assert_eq!(
            (self.method.as_str(), self.path.as_str()),
            (method, path),
            "request {} {}?{} with body {}",
            self.method,
            self.path,
            self.query,
            self.body
        );
    }

    /// Answers 200 with `body`.
    pub fn respond_json(self, body: serde_json::Value) {
        self.respond_with(StatusCode::OK, body);
    }

    /// Answers with a `metav1.Status` failure, as the API server does for 403, 404, 409, 422.
    pub fn respond_status(self, code: u16, reason: &str, message: &str) {
        let status = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        self.respond_with(
            StatusCode::from_u16(code).expect("an HTTP status code"),
            status,
        );
    }

    /// Answers 200 with the request's own body: what a server-side apply or a create returns.
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond_json(body);
    }

    fn respond_with(self, code: StatusCode, body: serde_json::Value) {
        let response = Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
            .expect("a response");
        self.respond.send_response(response);
    }
}
