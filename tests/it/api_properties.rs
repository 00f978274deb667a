//! Property tests of the whole HTTP API against its own `/openapi.json` (proptest): every
//! documented operation, and routes and methods that do not exist, with malformed path and
//! query parameters, bodies, content types, encodings and credentials. Whatever comes in:
//! never a 5xx, and every error is the documented JSON shape with the request id of the
//! `X-Request-Id` header. Requests that are certainly wrong (no credentials on a secured route,
//! a word where a number belongs, an unknown route or method) get a 4xx naming the field.
//! The pages meant for people (`GET /u/{token}`, `/dashboard` and its sign-in) may answer in
//! HTML.

use crate::support::{Mode, Response, TestEnv, http, root, spawn_api, test_config};
use nurture::engine::SystemClock;
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::sync::Arc;

const KEY: &str = "wk-props";
const ADMIN: &str = "admin-props";
const REP: &str = "rep-props";
const BOUNCE: &str = "bounce-props";

/// How many requests one run sends: every operation many times over, in about 15 s.
const CASES: u32 = 2_000;

#[derive(Clone, Debug)]
struct Operation {
    method: String,
    template: String,
    /// `(name, in, integer)` of each parameter.
    parameters: Vec<(String, String, bool)>,
    /// Needs a key or token of some kind.
    secured: bool,
    /// Property names of the documented JSON body, to send them with values of any type.
    body_fields: Vec<String>,
}

fn operations(document: &Value) -> Vec<Operation> {
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(reference) => document
                .pointer(reference.trim_start_matches('#'))
                .cloned()
                .unwrap_or(Value::Null),
            None => schema.clone(),
        }
    };
    let mut operations = Vec::new();
    for (template, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let parameters = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["in"].as_str().unwrap_or_default().to_string(),
                        p["schema"]["type"] == "integer",
                    )
                })
                .collect();
            let secured = operation["security"].as_array().is_some_and(|schemes| {
                schemes.iter().all(|scheme| {
                    scheme.as_object().is_some_and(|s| {
                        s.keys().all(|name| {
                            ["writeKey", "adminToken", "repToken", "bounceToken", "bounceTokenBasic"]
                                .contains(&name.as_str())
                        })
                    })
                })
            });
            let mut body_fields = Vec::new();
            if let Some(content) = operation["requestBody"]["content"].as_object() {
                for media in content.values() {
                    let schema = resolve(&media["schema"]);
                    for schema in [schema.clone(), resolve(&schema["items"])]
                        .into_iter()
                        .chain(schema["oneOf"].as_array().into_iter().flatten().map(&resolve))
                    {
                        if let Some(properties) = schema["properties"].as_object() {
                            body_fields.extend(properties.keys().cloned());
                        }
                        if let Some(batch) = schema["properties"]["batch"]["items"].as_object() {
                            let items = resolve(&Value::Object(batch.clone()));
                            body_fields.extend(
                                items["properties"]
                                    .as_object()
                                    .into_iter()
                                    .flatten()
                                    .map(|(k, _)| k.clone()),
                            );
                        }
                    }
                }
            }
            body_fields.sort();
            body_fields.dedup();
            operations.push(Operation {
                method: method.to_ascii_uppercase(),
                template: template.clone(),
                parameters,
                secured,
                body_fields,
            });
        }
    }
    operations
}

#[derive(Clone, Debug)]
enum Credentials {
    None,
    UnknownBearer,
    BrokenBasic,
    WriteKey,
    Admin,
    Rep,
    Bounce,
}

#[derive(Clone, Debug)]
enum Body {
    Empty,
    Bytes(Vec<u8>),
    Text(String),
    Json(Value),
    /// An object with the documented field names, each with a value of any type.
    Fields(Vec<(usize, Value)>),
    /// A batch whose items are any JSON.
    Batch(Vec<Value>),
}

#[derive(Clone, Debug)]
struct Case {
    operation: usize,
    /// Call a route that does not exist, or an existing one with a method it does not take.
    mutation: u8,
    path_values: Vec<String>,
    query: Vec<(Option<usize>, String, String)>,
    credentials: Credentials,
    body: Body,
    content_type: Option<&'static str>,
    gzip: bool,
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        Just(json!("x".repeat(40_000))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_]{0,10}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn parameter_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9]{1,12}",
        any::<i64>().prop_map(|n| n.to_string()),
        "\\PC{1,24}",
        Just("99999999999999999999999".to_string()),
        Just("1.5".to_string()),
        Just("..".to_string()),
        Just("%".to_string()),
        Just("x".repeat(3_000)),
    ]
}

fn case(operations: usize) -> impl Strategy<Value = Case> {
    let credentials = prop_oneof![
        Just(Credentials::None),
        Just(Credentials::UnknownBearer),
        Just(Credentials::BrokenBasic),
        Just(Credentials::WriteKey),
        Just(Credentials::Admin),
        Just(Credentials::Rep),
        Just(Credentials::Bounce),
    ];
    let body = prop_oneof![
        Just(Body::Empty),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
        prop_oneof![
            "\\PC{0,80}",
            Just("{\"userId\": ".to_string()),
            Just("[{]".to_string()),
            Just("List-Unsubscribe=Two-Clicks".to_string()),
        ]
        .prop_map(Body::Text),
        any_json().prop_map(Body::Json),
        prop::collection::vec((0..64usize, any_json()), 0..6).prop_map(Body::Fields),
        prop::collection::vec(any_json(), 0..5).prop_map(Body::Batch),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("text/plain")),
        Just(Some("application/x-www-form-urlencoded")),
        Just(Some("multipart/form-data")),
        Just(Some("application/json; charset=latin-7")),
        Just(Some("image/gif")),
    ];
    (
        0..operations,
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        prop::collection::vec(parameter_value(), 3),
        prop::collection::vec((prop::option::of(0..8usize), "[a-z_]{1,8}", parameter_value()), 0..4),
        credentials,
        body,
        content_type,
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(operation, mutation, path_values, query, credentials, body, content_type, gzip)| Case {
                operation,
                mutation,
                path_values,
                query,
                credentials,
                body,
                content_type,
                gzip,
            },
        )
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// What the case sends: method, path and query, headers, body; and what it certainly is.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn build(case: &Case, operation: &Operation) -> (Request, Option<Expected>) {
    let mut expected = None;
    let mut path = operation.template.clone();
    let path_parameters: Vec<_> = operation.parameters.iter().filter(|p| p.1 == "path").collect();
    for (index, (name, _, integer)) in path_parameters.iter().enumerate() {
        let value = &case.path_values[index];
        if *integer && value.parse::<i64>().is_err() && !value.is_empty() && value != ".." && value != "%" {
            expected.get_or_insert(Expected::BadParameter(name.clone()));
        }
        path = path.replace(&format!("{{{name}}}"), &encode(value));
    }
    let mut method = operation.method.clone();
    match case.mutation {
        1 => {
            path = format!("/v1/no-such-route/{}", encode(&case.path_values[0]));
            expected = Some(Expected::Status(404));
        }
        2 => {
            // A method the route does not take (every route takes GET or POST, none PATCH).
            method = "PATCH".into();
            expected = Some(Expected::Status(405));
        }
        _ => {}
    }
    let query_names: Vec<&String> = operation
        .parameters
        .iter()
        .filter(|p| p.1 == "query")
        .map(|p| &p.0)
        .collect();
    let query: Vec<String> = case
        .query
        .iter()
        .map(|(documented, name, value)| {
            let name = match documented {
                Some(index) if !query_names.is_empty() => query_names[index % query_names.len()].clone(),
                _ => name.clone(),
            };
            format!("{}={}", encode(&name), encode(value))
        })
        .collect();
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let mut headers = Vec::new();
    let basic = |user: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
        )
    };
    let authorization = match case.credentials {
        Credentials::None => None,
        Credentials::UnknownBearer => Some("Bearer not-a-token".to_string()),
        Credentials::BrokenBasic => Some("Basic %%%".to_string()),
        Credentials::WriteKey => Some(basic(KEY)),
        Credentials::Admin => Some(format!("Bearer {ADMIN}")),
        Credentials::Rep => Some(format!("Bearer {REP}")),
        Credentials::Bounce => Some(format!("Bearer {BOUNCE}")),
    };
    if let Some(authorization) = authorization {
        headers.push(("authorization".to_string(), authorization));
    }
    if operation.secured
        && matches!(
            case.credentials,
            Credentials::None | Credentials::UnknownBearer | Credentials::BrokenBasic
        )
        && expected.is_none()
    {
        expected = Some(Expected::Refused);
    }
    if let Some(content_type) = case.content_type {
        headers.push(("content-type".to_string(), content_type.to_string()));
    }
    if case.gzip {
        headers.push(("content-encoding".to_string(), "gzip".to_string()));
    }
    let body = match &case.body {
        Body::Empty => Vec::new(),
        Body::Bytes(bytes) => bytes.clone(),
        Body::Text(text) => text.clone().into_bytes(),
        Body::Json(value) => value.to_string().into_bytes(),
        Body::Fields(fields) => {
            let names = &operation.body_fields;
            let object: serde_json::Map<String, Value> = fields
                .iter()
                .filter(|_| !names.is_empty())
                .map(|(index, value)| (names[index % names.len()].clone(), value.clone()))
                .collect();
            Value::Object(object).to_string().into_bytes()
        }
        Body::Batch(items) => json!({"batch": items}).to_string().into_bytes(),
    };
    (
        Request {
            method,
            target,
            headers,
            body,
        },
        expected,
    )
}

#[derive(Debug)]
enum Expected {
    Status(u16),
    /// A 4xx; one about the path names this parameter.
    BadParameter(String),
    /// 401 or 403 (or a 4xx found earlier, such as a bad parameter).
    Refused,
}

fn check(
    case: &Case,
    operation: &Operation,
    request: &Request,
    expected: &Option<Expected>,
    response: &Response,
) -> Result<(), TestCaseError> {
    let what = format!(
        "{} {} ({:?}) -> {} {}",
        request.method,
        request.target.chars().take(200).collect::<String>(),
        case.credentials,
        response.status,
        String::from_utf8_lossy(&response.body)
            .chars()
            .take(300)
            .collect::<String>()
    );
    prop_assert!(response.status < 500, "a server error: {}", what);
    prop_assert!(response.header("x-request-id").is_some(), "no request id: {}", what);
    let page_for_people = case.mutation == 0
        && ((request.method == "GET" && operation.template.starts_with("/u/"))
            || operation.template.starts_with("/dashboard"));
    if response.status >= 400 && !page_for_people {
        prop_assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "an error that is not JSON: {}",
            what
        );
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {what}")))?;
        let error = &body["error"];
        prop_assert!(
            error["code"].is_string() && error["message"].is_string(),
            "shape: {}",
            what
        );
        prop_assert_eq!(
            error["request_id"].as_str(),
            response.header("x-request-id"),
            "{}",
            what
        );
        if let Some(field) = error.get("field") {
            prop_assert!(field.as_str().is_some_and(|f| !f.is_empty()), "field: {}", what);
        }
    }
    match expected {
        Some(Expected::Status(status)) => prop_assert_eq!(response.status, *status, "{}", what),
        // Some routes check the token or the body first, and answer for that, so the path
        // parameter is named only where it is what the answer is about.
        Some(Expected::BadParameter(name)) => {
            prop_assert!((400..500).contains(&response.status), "{}", what);
            let body = response.json();
            if body["error"]["code"] == "invalid_path" {
                prop_assert_eq!(body["error"]["field"].as_str(), Some(name.as_str()), "{}", what);
            }
        }
        Some(Expected::Refused) => prop_assert!((400..500).contains(&response.status), "not refused: {}", what),
        None => {}
    }
    Ok(())
}

#[test]
fn malformed_requests_get_4xx_json_errors_and_never_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (env, base, document) = runtime.block_on(async {
        let mut config = test_config(Mode::Embedded, &root().join("journeys")).await;
        config.write_keys = vec![KEY.into()];
        config.admin_tokens = vec![ADMIN.into()];
        config.bounce_tokens = vec![BOUNCE.into()];
        config.rep_tokens = vec![("li-wei".into(), nurture::config::Secret(REP.into()))];
        let env = TestEnv::start(config, Arc::new(SystemClock), false).await;
        let base = spawn_api(&env).await;
        let document = http(&base, "GET", "/openapi.json", &[], b"").await.json();
        (env, base, document)
    });
    let operations = operations(&document);
    assert!(operations.len() >= 30, "{} operations", operations.len());
    let mut runner = TestRunner::new(Cases {
        cases: CASES,
        failure_persistence: None,
        ..Cases::default()
    });
    let result = runner.run(&case(operations.len()), |case| {
        let operation = &operations[case.operation];
        let (request, expected) = build(&case, operation);
        let response = runtime.block_on(async {
            let headers: Vec<(&str, &str)> = request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            http(&base, &request.method, &request.target, &headers, &request.body).await
        });
        check(&case, operation, &request, &expected, &response)
    });
    runtime.block_on(env.stop());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
