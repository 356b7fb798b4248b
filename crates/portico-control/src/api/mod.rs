//! The REST API `/api/v1`: routes by resource, each handler extracts, calls one service
//! function and maps the result. The OpenAPI 3.1 document is generated from these handlers.

pub mod admin;
pub mod analytics;
pub mod apis;
pub mod apps;
pub mod auth;
pub mod oauth;
pub mod orgs;
pub mod requests;
pub mod subscriptions;
pub mod webhooks;

use crate::error::{Error, Problem};
use crate::state::AppState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{ApiKey as ApiKeyScheme, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A JSON body whose every rejection is a problem+json that says what to fix.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> Error {
    match r {
        JsonRejection::JsonDataError(e) => Error::Invalid(format!("the JSON body does not fit: {}", source_text(&e))),
        JsonRejection::JsonSyntaxError(e) => Error::Invalid(format!("the body is not valid JSON: {}", source_text(&e))),
        JsonRejection::MissingJsonContentType(_) => {
            Error::UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`".into())
        }
        JsonRejection::BytesRejection(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            Error::PayloadTooLarge("the body is larger than this server accepts (5 MiB by default)".into())
        }
        other => Error::Invalid(other.body_text()),
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s = inner.to_string();
        cur = inner.source();
    }
    s
}

/// Query parameters whose rejection is a problem+json.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(Error::Invalid(format!("bad query string: {}", source_text(&e))))
            }
            Err(other) => Err(Error::Invalid(other.body_text())),
        }
    }
}

/// Path parameters whose rejection (e.g. a broken `%`-escape) is a problem+json.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => Err(Error::Invalid(format!("bad path parameter: {}", r.body_text()))),
        }
    }
}

/// `?limit=&offset=`; `limit` is at most 200 (default 50).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// 1-200, default 50.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl PageParams {
    pub fn page(&self) -> portico_store::Page {
        portico_store::Page::new(self.limit, self.offset)
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from POST /api/v1/auth/login or `portico admin create`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKeyScheme::Cookie(ApiKeyValue::new(crate::auth::SESSION_COOKIE))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portico API",
        version = "1.0.0",
        description = "The control plane of a Portico API marketplace: accounts, organizations, the catalog of APIs with their versions and plans, consumers' apps, API keys and subscriptions, usage, and declarative apply/export. Every error is application/problem+json (RFC 9457)."
    ),
    modifiers(&Security),
    components(schemas(Problem)),
    tags(
        (name = "auth", description = "Sign-up, sign-in and the current user"),
        (name = "orgs", description = "Provider and consumer organizations"),
        (name = "catalog", description = "APIs, versions and plans"),
        (name = "apps", description = "Consumers' apps and API keys"),
        (name = "subscriptions", description = "Subscriptions of apps to plans, and usage"),
        (name = "analytics", description = "Traffic over time and top-N, scoped to what you own"),
        (name = "admin", description = "Declarative configuration (platform admins)")
    )
)]
struct ApiDoc;

/// The routes under `/api/v1`, with the OpenAPI document at `/openapi.json`. The documented
/// routes must be exactly the route table's [`Surface::Api`](crate::routes::Surface::Api) rows
/// (checked here in debug builds, and by `routes`' tests); the others are mounted from the table.
pub fn router() -> axum::Router<AppState> {
    let (router, doc) = documented();
    let doc_json = std::sync::Arc::new(serde_json::to_value(&doc).unwrap_or_default());
    let mismatches = crate::routes::api_mismatches(&doc_json);
    debug_assert!(mismatches.is_empty(), "the API and the route table differ:\n{}", mismatches.join("\n"));
    for m in &mismatches {
        tracing::error!(mismatch = %m, "the API and the route table differ");
    }
    let router = crate::routes::mount(router, crate::routes::Surface::ApiPlain, |row| match row.mount_path() {
        "/openapi.json" => {
            let d = doc_json.clone();
            Some(on(row.method.filter(), move || {
                let d = d.clone();
                async move { axum::Json((*d).clone()) }
            }))
        }
        _ => None,
    });
    router
        .fallback(|| async { Error::NotFound("no such endpoint; the API reference is at /api/v1/docs".into()) })
        .method_not_allowed_fallback(|| async {
            Error::MethodNotAllowed("this endpoint does not accept that method; see /api/v1/docs".into())
        })
}

/// The API's OpenAPI 3.1 document (what `/api/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

/// The documented routes and their document.
fn documented() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::signup))
        .routes(routes!(auth::login))
        .routes(routes!(auth::sso_providers))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::sessions))
        .routes(routes!(auth::revoke_session))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::audit_log))
        .routes(routes!(auth::verify_email))
        .routes(routes!(auth::resend_verification))
        .routes(routes!(auth::request_reset))
        .routes(routes!(auth::confirm_reset))
        .routes(routes!(orgs::list, orgs::create))
        .routes(routes!(orgs::get))
        .routes(routes!(orgs::members))
        .routes(routes!(orgs::change_role, orgs::remove_member))
        .routes(routes!(orgs::invitations, orgs::invite))
        .routes(routes!(orgs::revoke_invitation))
        .routes(routes!(orgs::accept_invitation))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::test))
        .routes(routes!(webhooks::resend))
        .routes(routes!(apis::list, apis::create))
        .routes(routes!(apis::get, apis::update))
        .routes(routes!(apis::list_versions, apis::create_version))
        .routes(routes!(apis::get_version, apis::update_version))
        .routes(routes!(apis::openapi_document))
        .routes(routes!(apis::list_plans, apis::create_plan))
        .routes(routes!(apis::update_plan))
        .routes(routes!(apis::list_alerts, apis::create_alert))
        .routes(routes!(apis::delete_alert))
        .routes(routes!(apps::list, apps::create))
        .routes(routes!(apps::get, apps::update, apps::delete))
        .routes(routes!(apps::list_keys, apps::create_key))
        .routes(routes!(apps::revoke_key))
        .routes(routes!(apps::rotate_key))
        .routes(routes!(apps::usage))
        .routes(routes!(oauth::list_clients, oauth::create_client))
        .routes(routes!(oauth::revoke_client))
        .routes(routes!(oauth::list_external_clients, oauth::create_external_client))
        .routes(routes!(oauth::delete_external_client))
        .routes(routes!(oauth::app_token))
        .routes(routes!(oauth::rotate_key))
        .routes(routes!(subscriptions::list, subscriptions::create))
        .routes(routes!(subscriptions::get, subscriptions::cancel))
        .routes(routes!(subscriptions::usage))
        .routes(routes!(requests::list))
        .routes(routes!(analytics::usage))
        .routes(routes!(analytics::top))
        .routes(routes!(admin::apply))
        .routes(routes!(admin::export))
        .split_for_parts();
    doc.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    document_errors(&mut doc);
    (router, doc)
}

/// Makes the document say what every operation can answer besides its own results: errors are
/// `application/problem+json` (the handlers declare them with `body = Problem`, which utoipa
/// files under `application/json`), a bad path or query parameter is a 400 anywhere, a secured
/// operation can answer 401 and 403, one that names an object (path, query or body) 404, a body
/// can be too large (413) or not JSON (415), and a store that is down answers 503. Clients generated from the document then handle what the
/// server really sends, and schemathesis holds the server to it.
fn document_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    let problem = || Content::new(Some(Ref::from_schema_name("Problem")));
    let answer = |description: &str| {
        RefOr::T(ResponseBuilder::new().description(description).content("application/problem+json", problem()).build())
    };
    for item in doc.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            for (status, response) in responses.iter_mut() {
                if let RefOr::T(r) = response
                    && status.as_str() >= "400"
                    && r.content.shift_remove("application/json").is_some()
                {
                    r.content.insert("application/problem+json".into(), RefOr::T(problem()));
                }
            }
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut add = |status: &str, description: &str| {
                responses.entry(status.to_string()).or_insert_with(|| answer(description));
            };
            add("400", "A path or query parameter, or the body, is not valid; `detail` says which and why");
            if secured {
                add("401", "No valid session or bearer token");
                add("403", "Signed in, but this account may not do that");
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some() {
                add("404", "An object named in the path, query or body does not exist, or is not yours");
            }
            if op.request_body.is_some() {
                add("413", "The body is larger than the server accepts");
                add("415", "The body is not sent as `application/json`");
            }
            add("503", "The store is unreachable; try again shortly");
        }
    }
}

/// A `201 Created` JSON answer.
pub(crate) fn created<T: serde::Serialize>(v: T) -> Response {
    (axum::http::StatusCode::CREATED, axum::Json(v)).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every error an operation documents is problem+json, and every operation documents the
    /// errors any request can meet (a bad parameter, a store that is down).
    #[test]
    fn the_document_describes_errors_as_problems() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for status in ["400", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} does not document {status}");
                }
                if op.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty()) {
                    assert!(responses.contains_key("401"), "{method} {path} is secured but does not document 401");
                }
                for (status, r) in responses {
                    if status.as_str() >= "400" {
                        let types: Vec<_> = r["content"].as_object().unwrap().keys().collect();
                        assert_eq!(types, ["application/problem+json"], "{method} {path} {status}");
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 100, "only {seen} error answers documented");
    }
}
