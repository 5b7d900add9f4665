//! The admin web page: three static files shipped inside the binary. The page holds no data of
//! its own; its script calls the JSON API and inserts what comes back only through
//! `textContent`, so escaping holds by construction, and the policy below forbids inline
//! script and every origin but this one. `/openapi.yaml` is the admin API's own contract
//! (docs/src/admin-openapi.yaml, built in), open like the page: it describes, and holds nothing.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Admin;

const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

pub(super) fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route(
            "/",
            get(|| file(include_str!("page/index.html"), "text/html; charset=utf-8")),
        )
        .route(
            "/admin.js",
            get(|| {
                file(
                    include_str!("page/admin.js"),
                    "text/javascript; charset=utf-8",
                )
            }),
        )
        .route(
            "/admin.css",
            get(|| file(include_str!("page/admin.css"), "text/css; charset=utf-8")),
        )
        .route(
            "/openapi.yaml",
            get(|| {
                file(
                    include_str!("../../docs/src/admin-openapi.yaml"),
                    "application/yaml",
                )
            }),
        )
}

async fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    resp
}
