//! Token scopes over real HTTP: every route of the router, enumerated from `src/api/mod.rs`
//! and `/openapi.json` (so a new route without a row here fails), called with no token, an
//! unknown token, each credential outside the route's scope and the right one. Secrets in logs
//! and the expiry of links are in `secrets.rs`.

use crate::support::{HttpFake, Mode, TestEnv, eventually, http, root, spawn_api, test_config};
use nurture::engine::SystemClock;
use std::sync::Arc;
use std::time::Duration;

const WRITE_KEY: &str = "wk-scopes";
const ADMIN: &str = "admin-scopes";
const BOUNCE: &str = "bounce-scopes";
const ANN: &str = "ann-scopes";
const BO: &str = "bo-scopes";
const INBOUND_SECRET: &str = "inbound-scopes";
const UNKNOWN: &str = "nobody-knows-this";

/// A credential, as a request presents it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    None,
    Unknown,
    WriteKey,
    Admin,
    Rep,
    Bounce,
}

impl Token {
    const ALL: [Token; 6] = [
        Token::None,
        Token::Unknown,
        Token::WriteKey,
        Token::Admin,
        Token::Rep,
        Token::Bounce,
    ];

    fn secret(self) -> Option<&'static str> {
        match self {
            Token::None => None,
            Token::Unknown => Some(UNKNOWN),
            Token::WriteKey => Some(WRITE_KEY),
            Token::Admin => Some(ADMIN),
            Token::Rep => Some(ANN),
            Token::Bounce => Some(BOUNCE),
        }
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Only these credentials; no token or an unknown one is a 401, any other known one a 403.
    Scoped(&'static [Token]),
    /// The dashboard page: as `Scoped(admin)`, but a browser without a token is sent to sign in.
    Page,
    /// The sign-in form's POST: the token is in the form, not a header.
    SignIn,
    /// analytics.js's settings: the write key is in the path; anything else is "no such
    /// project", 404, whatever the header says.
    WriteKeyInPath,
    /// No credential by design, for the reason given: a token neither opens nor closes it.
    Public(&'static str),
    /// Signed by the caller instead of a token (the reason says how): a token changes
    /// nothing, and an unsigned request is a 401.
    Signed(&'static str),
}

const INGEST: Rule = Rule::Scoped(&[Token::WriteKey, Token::Admin]);
const ADMIN_ONLY: Rule = Rule::Scoped(&[Token::Admin]);
const SALES: Rule = Rule::Scoped(&[Token::Rep, Token::Admin]);
const BOUNCES: Rule = Rule::Scoped(&[Token::Bounce, Token::Admin]);
const LINK: &str = "a link in an email, authenticated by its HMAC signature (channels::links)";
const TWILIO: &str =
    "Twilio's callbacks carry no token: X-Twilio-Signature over the URL and form, checked with the auth token";

/// One request per route and method: `(method, path with example values, body, rule)`.
fn table() -> Vec<(&'static str, &'static str, &'static str, Rule)> {
    vec![
        ("POST", "/v1/track", r#"{"userId":"u1","event":"Scoped"}"#, INGEST),
        ("POST", "/v1/identify", r#"{"userId":"u1"}"#, INGEST),
        ("POST", "/v1/page", r#"{"userId":"u1"}"#, INGEST),
        ("POST", "/v1/screen", r#"{"userId":"u1"}"#, INGEST),
        ("POST", "/v1/group", r#"{"userId":"u1","groupId":"g1"}"#, INGEST),
        ("POST", "/v1/alias", r#"{"userId":"u1","previousId":"a1"}"#, INGEST),
        ("POST", "/v1/batch", r#"{"batch":[]}"#, INGEST),
        ("POST", "/v1/import", r#"{"batch":[]}"#, INGEST),
        ("POST", "/v1/t", r#"{"userId":"u1","event":"Scoped"}"#, INGEST),
        ("GET", "/v1/projects/wk-scopes/settings", "", Rule::WriteKeyInPath),
        ("GET", "/v1/contacts?user_id=u1", "", ADMIN_ONLY),
        ("GET", "/v1/contacts/999999", "", ADMIN_ONLY),
        ("DELETE", "/v1/contacts/999999", "", ADMIN_ONLY),
        ("GET", "/v1/contacts/999999/score", "", ADMIN_ONLY),
        (
            "POST",
            "/v1/contacts/999999/stage",
            r#"{"stage":"customer"}"#,
            ADMIN_ONLY,
        ),
        ("GET", "/v1/sales/leads", "", SALES),
        ("GET", "/v1/sales/leads/999999", "", SALES),
        ("POST", "/v1/sales/leads/999999/accept", "{}", SALES),
        (
            "POST",
            "/v1/sales/leads/999999/reject",
            r#"{"reason":"no budget"}"#,
            SALES,
        ),
        (
            "POST",
            "/v1/sales/leads/999999/outcome",
            r#"{"outcome":"lost","reason":"no budget"}"#,
            SALES,
        ),
        ("GET", "/v1/enrollments/failed", "", ADMIN_ONLY),
        ("POST", "/v1/enrollments/999999/retry", "", ADMIN_ONLY),
        ("GET", "/u/1-2-3.AAAAAAAAAAAAAAAAAAAAAA", "", Rule::Public(LINK)),
        (
            "POST",
            "/u/1-2-3.AAAAAAAAAAAAAAAAAAAAAA",
            "List-Unsubscribe=One-Click",
            Rule::Public(LINK),
        ),
        ("GET", "/c/e30.AAAAAAAAAAAAAAAAAAAAAA", "", Rule::Public(LINK)),
        ("GET", "/o/e30.AAAAAAAAAAAAAAAAAAAAAA.gif", "", Rule::Public(LINK)),
        ("POST", "/v1/email/bounces", r#"{"type":"bounce"}"#, BOUNCES),
        (
            "POST",
            "/v1/email/bounces/postmark",
            r#"{"RecordType":"Bounce"}"#,
            BOUNCES,
        ),
        ("GET", "/v1/suppressions", "", ADMIN_ONLY),
        ("DELETE", "/v1/suppressions/email/nobody@example.com", "", ADMIN_ONLY),
        (
            "POST",
            "/v1/sms/twilio/status",
            "MessageSid=SM1&MessageStatus=delivered",
            Rule::Signed(TWILIO),
        ),
        (
            "POST",
            "/v1/sms/twilio/inbound",
            "From=%2B8613800000000&Body=STOP",
            Rule::Signed(TWILIO),
        ),
        // The gateway's `?secret=` is its own credential; see `the_gateway_secret_is_a_credential_of_its_own`.
        ("POST", "/v1/sms/inbound", "{}", ADMIN_ONLY),
        ("GET", "/v1/reports/roi", "", ADMIN_ONLY),
        ("GET", "/v1/reports/journeys/handoff/funnel", "", ADMIN_ONLY),
        ("GET", "/v1/reports/kpis", "", ADMIN_ONLY),
        ("POST", "/v1/journeys/handoff/pause", "", ADMIN_ONLY),
        ("POST", "/v1/journeys/handoff/resume", "", ADMIN_ONLY),
        ("GET", "/v1/journeys/handoff/counts", "", ADMIN_ONLY),
        // Also a metrics token (`NURTURE_METRICS_TOKENS`), tested in `ops.rs`.
        ("GET", "/metrics", "", ADMIN_ONLY),
        ("GET", "/dashboard", "", Rule::Page),
        ("GET", "/dashboard/login", "", Rule::Public("the sign-in form itself")),
        ("POST", "/dashboard/login", "", Rule::SignIn),
        (
            "GET",
            "/openapi.json",
            "",
            Rule::Public("the API's description, for client generators"),
        ),
        (
            "GET",
            "/health",
            "",
            Rule::Public("load balancers' liveness probe; says nothing but ok"),
        ),
        (
            "GET",
            "/healthz",
            "",
            Rule::Public("load balancers' liveness probe; says nothing but ok"),
        ),
        (
            "GET",
            "/readyz",
            "",
            Rule::Public("readiness probe: names which dependency is not ready, nothing more"),
        ),
    ]
}

/// Requests the routes cannot parse: a path parameter that is not a number or not UTF-8, a
/// query field given twice. The credential is checked first, so without the right one these
/// answer 401 / 403 like the good requests of `table`, never a 400 that says something about
/// the route; with it, the 400.
fn malformed() -> Vec<(&'static str, &'static str, &'static str, Rule)> {
    vec![
        ("GET", "/v1/contacts?email=a@b.c&email=d@e.f", "", ADMIN_ONLY),
        ("GET", "/v1/contacts/not-a-number", "", ADMIN_ONLY),
        ("DELETE", "/v1/contacts/not-a-number", "", ADMIN_ONLY),
        ("GET", "/v1/contacts/not-a-number/score", "", ADMIN_ONLY),
        ("POST", "/v1/contacts/%FF/stage", r#"{"stage":"customer"}"#, ADMIN_ONLY),
        ("GET", "/v1/sales/leads?status=won&status=lost", "", SALES),
        ("GET", "/v1/sales/leads/%FF", "", SALES),
        ("POST", "/v1/sales/leads/%FF/accept", "{}", SALES),
        ("POST", "/v1/sales/leads/%FF/reject", r#"{"reason":"no budget"}"#, SALES),
        (
            "POST",
            "/v1/sales/leads/%FF/outcome",
            r#"{"outcome":"lost","reason":"no budget"}"#,
            SALES,
        ),
        ("POST", "/v1/enrollments/not-a-number/retry", "", ADMIN_ONLY),
        ("GET", "/v1/suppressions?email=a@b.c&email=d@e.f", "", ADMIN_ONLY),
        ("DELETE", "/v1/suppressions/%FF/%FF", "", ADMIN_ONLY),
        ("POST", "/v1/sms/inbound?secret=a&secret=b", "{}", ADMIN_ONLY),
        ("GET", "/v1/reports/roi?from=2026-01-01&from=2026-02-01", "", ADMIN_ONLY),
        ("GET", "/v1/reports/journeys/%FF/funnel", "", ADMIN_ONLY),
        ("GET", "/v1/reports/kpis?model=linear&model=linear", "", ADMIN_ONLY),
        ("POST", "/v1/journeys/%FF/pause", "", ADMIN_ONLY),
        ("POST", "/v1/journeys/%FF/resume", "", ADMIN_ONLY),
        ("GET", "/v1/journeys/%FF/counts", "", ADMIN_ONLY),
        ("GET", "/dashboard?from=2026-01-01&from=2026-02-01", "", Rule::Page),
        ("POST", "/v1/%FF", r#"{"userId":"u1","event":"Scoped"}"#, INGEST),
    ]
}

/// `(METHOD, path)` of every `.route(...)` in `api::router`.
fn router_routes() -> Vec<(String, String)> {
    let source = std::fs::read_to_string(root().join("src/api/mod.rs")).unwrap();
    let router = &source[source.find("pub fn router(").expect("api::router")..];
    // `.fallback(` is not a route: it answers every unknown path with a 404 (`edge.rs` tests it).
    for hidden in [".nest(", ".merge(", ".route_service("] {
        assert!(
            !router.contains(hidden),
            "api::router uses `{hidden}`: teach router_routes to read it, so its routes are checked too"
        );
    }
    let mut routes = Vec::new();
    for chunk in router.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().to_string();
        let mut depth = 1;
        let end = chunk
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(at, _)| at)
            .unwrap();
        let handlers = &chunk[..end];
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers.match_indices(&format!("{method}(")).any(|(at, _)| {
                at == 0 || !handlers.as_bytes()[at - 1].is_ascii_alphanumeric() && handlers.as_bytes()[at - 1] != b'_'
            });
            if called {
                routes.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    assert!(routes.len() > 20, "the router was not read: {routes:?}");
    routes
}

/// Whether `path` (a request's, query dropped) fits `template` (`{name}` matches a segment).
fn fits(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap();
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| t == p || (t.contains('{') && !p.is_empty()))
}

async fn call(base: &str, method: &str, path: &str, body: &str, token: Token, rule: Rule) -> u16 {
    let content_type = if body.starts_with('{') {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut headers = vec![("content-type", content_type.to_string())];
    let mut body = body.to_string();
    match (rule, token.secret()) {
        (Rule::SignIn, secret) => body = format!("token={}", secret.unwrap_or("")),
        (_, Some(secret)) => headers.push(("authorization", format!("Bearer {secret}"))),
        (_, None) => {}
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http(base, method, path, &headers, body.as_bytes()).await.status
}

async fn start() -> (TestEnv, String) {
    let dir = crate::sales::project("4h", "");
    let mut config = test_config(Mode::Embedded, &dir.join("journeys")).await;
    config.write_keys = vec![WRITE_KEY.into()];
    config.admin_tokens = vec![ADMIN.into()];
    config.bounce_tokens = vec![BOUNCE.into()];
    config.rep_tokens = vec![("ann".into(), ANN.into()), ("bo".into(), BO.into())];
    config.sms.inbound_secret = Some(INBOUND_SECRET.into());
    config.sms.twilio = Some(crate::support::twilio_config(&HttpFake::twilio().await));
    let env = TestEnv::start(config, Arc::new(SystemClock), false).await;
    let base = spawn_api(&env).await;
    (env, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_or_unknown_token_and_every_wrong_scope() {
    let (env, base) = start().await;
    let table = table();

    // Every route of the router and of /openapi.json has a row, so a new one cannot slip by.
    let openapi = http(&base, "GET", "/openapi.json", &[], b"").await.json();
    let mut routes = router_routes();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let untested: Vec<_> = routes
        .iter()
        .filter(|(method, template)| !table.iter().any(|(m, path, _, _)| m == method && fits(template, path)))
        .collect();
    assert!(
        untested.is_empty(),
        "routes without a row in security::table: {untested:?}"
    );

    let mut wrong = Vec::new();
    for (method, path, body, rule) in table.iter().chain(&malformed()) {
        let anonymous = call(&base, method, path, body, Token::None, *rule).await;
        for token in Token::ALL {
            let status = call(&base, method, path, body, token, *rule).await;
            let expected = expect(*rule, token);
            let fine = match expected {
                Expect::Status(expected) => status == expected,
                Expect::InScope => status != 401 && status != 403 && status < 500,
                Expect::AsWithout => status == anonymous,
            };
            if !fine {
                wrong.push(format!(
                    "{method} {path} with {token:?}: {status}, expected {expected:?}"
                ));
            }
        }
        let (public_answer_is_wrong, reason) = match rule {
            Rule::Public(reason) => (anonymous == 401 || anonymous == 403 || anonymous >= 500, *reason),
            Rule::Signed(reason) => (anonymous != 401, *reason),
            _ => (false, ""),
        };
        if public_answer_is_wrong {
            wrong.push(format!(
                "{method} {path} ({reason}) answers {anonymous} without a token"
            ));
        }
    }

    // The settings route answers only for a write key in the path, whatever the header says.
    for (key, expected) in [
        (WRITE_KEY, 200),
        (ADMIN, 404),
        (ANN, 404),
        (BOUNCE, 404),
        (UNKNOWN, 404),
    ] {
        let status = http(&base, "GET", &format!("/v1/projects/{key}/settings"), &[], b"")
            .await
            .status;
        if status != expected {
            wrong.push(format!("settings of {key}: {status}, expected {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    env.stop().await;
}

#[derive(Debug)]
enum Expect {
    Status(u16),
    /// Neither 401 nor 403 (nor a 5xx): the route's own answer, such as 404 for a made-up id.
    InScope,
    /// What the route answers without a token: a token neither opens nor closes it.
    AsWithout,
}

fn expect(rule: Rule, token: Token) -> Expect {
    let allowed: &[Token] = match rule {
        Rule::Scoped(allowed) => allowed,
        Rule::Page | Rule::SignIn => &[Token::Admin],
        Rule::WriteKeyInPath | Rule::Public(_) | Rule::Signed(_) => return Expect::AsWithout,
    };
    match token {
        // A browser without a session is sent to sign in.
        Token::None if matches!(rule, Rule::Page) => Expect::Status(303),
        Token::None | Token::Unknown => Expect::Status(401),
        token if allowed.contains(&token) => Expect::InScope,
        _ => Expect::Status(403),
    }
}

async fn leads(base: &str, token: &str) -> Vec<i64> {
    let response = http(
        base,
        "GET",
        "/v1/sales/leads",
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    response.json()["leads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lead| lead["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rep_sees_and_acts_on_their_own_leads_only() {
    let (env, base) = start().await;
    let ada = crate::sales::contact(&env, "ada@example.com").await;
    crate::sales::qualify(&env, ada).await;
    // ann has the first turn of the team.
    let lead = eventually("a lead for ann", Duration::from_secs(60), || async {
        leads(&base, ANN).await.first().copied()
    })
    .await;
    assert!(leads(&base, ADMIN).await.contains(&lead), "admin sees every lead");
    assert!(leads(&base, BO).await.is_empty(), "bo does not see ann's lead");
    let bo = format!("Bearer {BO}");
    let as_bo = [("authorization", bo.as_str()), ("content-type", "application/json")];
    for (method, action, body) in [
        ("GET", "", ""),
        ("POST", "/accept", "{}"),
        ("POST", "/reject", r#"{"reason":"mine now"}"#),
        ("POST", "/outcome", r#"{"outcome":"won","revenue":1}"#),
    ] {
        let path = format!("/v1/sales/leads/{lead}{action}");
        let answer = http(&base, method, &path, &as_bo, body.as_bytes()).await;
        assert_eq!(
            answer.status, 404,
            "{method} {path} by another rep, like a lead that does not exist"
        );
    }
    let ann = format!("Bearer {ANN}");
    let shown = http(
        &base,
        "GET",
        &format!("/v1/sales/leads/{lead}"),
        &[("authorization", &ann)],
        b"",
    )
    .await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json()["status"], "assigned", "nothing bo tried changed it");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_secret_is_a_credential_of_its_own() {
    let (env, base) = start().await;
    let rep = format!("Bearer {ANN}");
    // `(secret, with the rep's token, status)`; 400: past the check, the empty body names no sender.
    for (secret, with_rep, expected) in [
        (INBOUND_SECRET, false, 400),
        (INBOUND_SECRET, true, 400),
        ("wrong", false, 401),
        ("wrong", true, 403),
        (WRITE_KEY, false, 401),
    ] {
        let headers = if with_rep {
            vec![("authorization", rep.as_str())]
        } else {
            vec![]
        };
        let path = format!("/v1/sms/inbound?secret={secret}");
        let answer = http(&base, "POST", &path, &headers, b"{}").await;
        assert_eq!(answer.status, expected, "secret {secret}, rep token {with_rep}");
    }
    env.stop().await;
}
