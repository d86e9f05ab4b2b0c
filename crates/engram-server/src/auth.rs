//! API keys: `Authorization: Bearer <key>`, scoped by role (admin, read-write, read-only) and by
//! a list of namespaces. The middleware identifies the caller; handlers ask it for the access
//! they need, so a refusal happens before anything is read or written.

use crate::config::{ApiKeyConfig, Role};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who is calling, attached to each authenticated request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
    /// `None`: every namespace.
    pub namespaces: Option<Arc<HashSet<String>>>,
}

impl Caller {
    /// The caller of a server without keys: everything is allowed (loopback only).
    pub fn open() -> Caller {
        Caller {
            name: Arc::from("anonymous"),
            role: Role::Admin,
            namespaces: None,
        }
    }

    fn from_key(index: usize, key: &ApiKeyConfig) -> Caller {
        Caller {
            name: Arc::from(key.name.clone().unwrap_or_else(|| format!("key #{index}"))),
            role: key.role,
            namespaces: key.namespaces.as_ref().map(|n| Arc::new(n.iter().cloned().collect())),
        }
    }

    fn namespace_allowed(&self, namespace: &str) -> Result<(), ApiError> {
        match &self.namespaces {
            Some(allowed) if !allowed.contains(namespace) => Err(forbidden(format!("this API key may not access namespace {namespace:?}"))),
            _ => Ok(()),
        }
    }

    pub fn read(&self, namespace: &str) -> Result<(), ApiError> {
        self.namespace_allowed(namespace)
    }

    pub fn write(&self, namespace: &str) -> Result<(), ApiError> {
        if self.role == Role::ReadOnly {
            return Err(forbidden("this API key is read-only"));
        }
        self.namespace_allowed(namespace)
    }

    /// Reads that span every namespace (the unfiltered change feed, cursors).
    pub fn read_all(&self) -> Result<(), ApiError> {
        if self.namespaces.is_some() {
            return Err(forbidden("this API key is limited to some namespaces; name one (e.g. ?namespace=)"));
        }
        Ok(())
    }

    pub fn write_all(&self) -> Result<(), ApiError> {
        if self.role == Role::ReadOnly {
            return Err(forbidden("this API key is read-only"));
        }
        self.read_all()
    }

    pub fn admin(&self) -> Result<(), ApiError> {
        if self.role != Role::Admin {
            return Err(forbidden("this endpoint needs an admin API key"));
        }
        Ok(())
    }
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn unauthorized(code: &'static str, message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// Finds the key presented, comparing in constant time against every configured key so that
/// timing tells nothing about how much of a key matched.
fn identify(keys: &[ApiKeyConfig], presented: &str) -> Option<Caller> {
    let mut found = None;
    for (i, k) in keys.iter().enumerate() {
        if bool::from(k.key.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(Caller::from_key(i, k));
        }
    }
    found
}

/// Middleware: attaches a [`Caller`] or answers 401.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let keys = &state.config.keys;
    let caller = if keys.is_empty() {
        static OPEN: std::sync::LazyLock<Caller> = std::sync::LazyLock::new(Caller::open);
        OPEN.clone()
    } else {
        let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return unauthorized("unauthenticated", "an API key is required: send Authorization: Bearer <key>");
        };
        let presented = header.strip_prefix("Bearer ").unwrap_or("").trim();
        match identify(keys, presented) {
            Some(caller) => caller,
            None => return unauthorized("invalid_key", "the API key is not valid"),
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route is missing the authentication layer"))
    }
}
