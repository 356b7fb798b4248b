//! `portico-portal` is the developer portal: server-rendered pages (minijinja templates,
//! embedded in the binary) over `portico-control`'s services. No business rule lives here.
//! Today it is the landing page: the catalog, each API's plans, versions and operations, and
//! an interactive reference per version. The portal issue grows it into the full portal.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::on;
use minijinja::{Environment, context};
use portico_control::auth::MaybeAuth;
use portico_control::services::catalog;
use portico_control::{AppState, Error};
use std::sync::Arc;

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("api.html", include_str!("../templates/api.html")),
        ("reference.html", include_str!("../templates/reference.html")),
        ("token_action.html", include_str!("../templates/token_action.html")),
        ("invitation.html", include_str!("../templates/invitation.html")),
        ("sign_in.html", include_str!("../templates/sign_in.html")),
    ] {
        env.add_template(name, src).expect("the portal's templates parse");
    }
    env
}

#[derive(Clone)]
struct Portal {
    state: AppState,
    env: Arc<Environment<'static>>,
}

impl axum::extract::FromRef<Portal> for AppState {
    fn from_ref(p: &Portal) -> AppState {
        p.state.clone()
    }
}

/// The portal's pages: `/`, `/apis/{slug}`, `/apis/{slug}/reference/{version}`, `/verify-email`
/// and `/reset-password`, mounted from the route table's portal rows
/// ([`portico_control::routes::ROUTES`]).
pub fn router(state: AppState) -> axum::Router {
    use portico_control::routes::{self, Surface};
    let portal = Portal { state, env: Arc::new(templates()) };
    routes::mount(axum::Router::new(), Surface::Portal, |row| {
        let m = row.method.filter();
        Some(match row.path {
            "/" => on(m, home),
            "/apis/{slug}" => on(m, api_page),
            "/apis/{slug}/reference/{version}" => on(m, reference),
            "/verify-email" => on(m, verify_email_page),
            "/reset-password" => on(m, reset_password_page),
            "/invitations" => on(m, invitation_page),
            "/sign-in" => on(m, sign_in_page),
            _ => return None,
        })
    })
    .with_state(portal)
}

fn render(p: &Portal, name: &str, ctx: minijinja::Value) -> Response {
    match p.env.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => {
            let mut r = Html(html).into_response();
            let h = r.headers_mut();
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"),
            );
            r
        }
        Err(e) => Error::Internal(format!("rendering {name}: {e}")).into_response(),
    }
}

fn page_error(e: Error) -> Response {
    let status = match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        _ => return e.into_response(),
    };
    (
        status,
        Html(format!(
            "<!doctype html><title>Not found</title><p>{}</p><p><a href=\"/\">Back to the catalog</a></p>",
            minijinja::HtmlEscape(&e.to_string())
        )),
    )
        .into_response()
}

async fn home(State(p): State<Portal>, MaybeAuth(who): MaybeAuth) -> Response {
    match catalog::list_apis(&p.state, who.as_ref(), portico_store::Page::new(Some(200), None)).await {
        Ok(apis) => render(
            &p,
            "home.html",
            context! { apis => minijinja::value::Serde(&apis), gateway_url => p.state.config.gateway_url.clone() },
        ),
        Err(e) => page_error(e),
    }
}

async fn api_page(State(p): State<Portal>, MaybeAuth(who): MaybeAuth, Path(slug): Path<String>) -> Response {
    match catalog::get_api(&p.state, who.as_ref(), &slug).await {
        Ok(d) => render(
            &p,
            "api.html",
            context! {
                api => minijinja::value::Serde(&d.api),
                plans => minijinja::value::Serde(&d.plans),
                versions => minijinja::value::Serde(&d.versions),
                gateway_url => p.state.config.gateway_url.trim_end_matches('/'),
            },
        ),
        Err(e) => page_error(e),
    }
}

async fn reference(
    State(p): State<Portal>,
    MaybeAuth(who): MaybeAuth,
    Path((slug, version)): Path<(String, String)>,
) -> Response {
    let v = match catalog::get_version(&p.state, who.as_ref(), &slug, &version).await {
        Ok(v) => v,
        Err(e) => return page_error(e),
    };
    let api = match catalog::get_api(&p.state, who.as_ref(), &slug).await {
        Ok(d) => d.api,
        Err(e) => return page_error(e),
    };
    render(
        &p,
        "reference.html",
        context! {
            api => minijinja::value::Serde(&api),
            version => v.version.clone(),
            spec_url => format!("/api/v1/apis/{slug}/versions/{}/openapi.json", v.version),
            server => format!("{}/{slug}/v{}", p.state.config.gateway_url.trim_end_matches('/'), v.major),
        },
    )
}

/// The `token` query parameter, keeping only the characters a Portico e-mail token has
/// (anything else is not one of ours); a malformed query is just no token.
fn token_param(query: Option<&str>) -> String {
    let raw = query.unwrap_or_default().split('&').find_map(|p| p.strip_prefix("token=")).unwrap_or_default();
    raw.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(80).collect()
}

/// The page an e-mail verification link opens: a button that confirms (a GET never changes
/// anything, so mail scanners that open links verify nothing).
async fn verify_email_page(State(p): State<Portal>, axum::extract::RawQuery(q): axum::extract::RawQuery) -> Response {
    let mut r = render(
        &p,
        "token_action.html",
        context! {
            title => "Confirm your e-mail address", token => token_param(q.as_deref()), reset => false,
            button => "Confirm", endpoint => "/api/v1/auth/verify-email", done => "Thank you: your address is confirmed.",
        },
    );
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The page a password-reset link opens.
async fn reset_password_page(State(p): State<Portal>, axum::extract::RawQuery(q): axum::extract::RawQuery) -> Response {
    let mut r = render(
        &p,
        "token_action.html",
        context! {
            title => "Choose a new password", token => token_param(q.as_deref()), reset => true,
            button => "Set the password", endpoint => "/api/v1/auth/password-reset/confirm",
            done => "Your password is changed. Sign in with it; every other session has ended.",
        },
    );
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The page an invitation link opens: sign in (or sign up) with the invited address, then a
/// button accepts (a GET changes nothing).
async fn invitation_page(State(p): State<Portal>, axum::extract::RawQuery(q): axum::extract::RawQuery) -> Response {
    let mut r = render(&p, "invitation.html", context! { token => token_param(q.as_deref()) });
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The sign-in page: e-mail and password, and a button per single sign-on provider.
async fn sign_in_page(State(p): State<Portal>) -> Response {
    let providers = portico_control::services::sso::providers(&p.state);
    render(&p, "sign_in.html", context! { providers => minijinja::value::Serde(&providers) })
}
