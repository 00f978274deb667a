//! `Path`, `Query` and `Form` as axum's, with rejections in our error shape naming the field
//! (axum's own answer plain text). Handlers import these instead of axum's.

use super::error::ApiError;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A path parameter; a value that does not parse is a 400 naming the parameter.
pub struct Path<T>(pub T);

/// The query string; a bad one is a 400 naming the field when serde says which.
pub struct Query<T>(pub T);

/// A form body; a bad one is a 400 (415 when it is not a form) naming the field.
pub struct Form<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => {
                let raw = RawPathParams::from_request_parts(parts, state).await.ok();
                Err(path_error(rejection, raw))
            }
        }
    }
}

fn path_error(rejection: PathRejection, raw: Option<RawPathParams>) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(error) = &rejection else {
        return ApiError::bad_request("invalid_path", "path", rejection.body_text());
    };
    let params: Vec<(String, String)> = raw
        .iter()
        .flat_map(|raw| raw.iter().map(|(key, value)| (key.to_string(), value.to_string())))
        .collect();
    let key_of = |wanted: &str| {
        params
            .iter()
            .find(|(_, value)| value == wanted)
            .map(|(key, _)| key.clone())
    };
    let (field, message) = match error.kind() {
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => (Some(key.clone()), describe(value, expected_type)),
        ErrorKind::ParseErrorAtIndex {
            index,
            value,
            expected_type,
        } => (
            params.get(*index).map(|(key, _)| key.clone()),
            describe(value, expected_type),
        ),
        ErrorKind::ParseError { value, expected_type } => (key_of(value), describe(value, expected_type)),
        ErrorKind::InvalidUtf8InPathParam { key } => (Some(key.clone()), "is not valid UTF-8".to_string()),
        _ => (None, error.body_text()),
    };
    let field = field.unwrap_or_else(|| "path".into());
    ApiError::bad_request("invalid_path", &field, format!("`{field}` {message}"))
}

fn describe(value: &str, expected_type: &str) -> String {
    let expected = if expected_type.starts_with('i') || expected_type.starts_with('u') {
        "a whole number"
    } else {
        expected_type
    };
    let shown: String = value.chars().take(40).collect();
    format!("must be {expected}, not `{shown}`")
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection: QueryRejection| {
                let text = rejection.body_text();
                let field = field_named_in(&text).unwrap_or_else(|| "query".into());
                ApiError::bad_request("invalid_query", &field, text)
            })
    }
}

impl<T, S> FromRequest<S> for Form<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Form::<T>::from_request(request, state)
            .await
            .map(|axum::extract::Form(value)| Form(value))
            .map_err(|rejection: FormRejection| {
                let text = rejection.body_text();
                let field = if rejection.status() == axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    "content-type".to_string()
                } else {
                    field_named_in(&text).unwrap_or_else(|| "body".into())
                };
                ApiError {
                    field: Some(field),
                    ..ApiError::new(rejection.status(), "invalid_body", text)
                }
            })
    }
}

/// The field serde names in a message such as "missing field `email`".
fn field_named_in(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("field `")?;
    let (name, _) = rest.split_once('`')?;
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            super::field_named_in("Failed to deserialize query string: missing field `from`").as_deref(),
            Some("from")
        );
        assert_eq!(super::field_named_in("expected a string"), None);
    }
}
