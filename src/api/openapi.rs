//! `GET /openapi.json`: the OpenAPI 3.1 description of every endpoint.

use axum::Json;
use serde_json::{Value, json};

pub async fn document() -> Json<Value> {
    let message = json!({"$ref": "#/components/schemas/Message"});
    let ingest = |summary: &str, kind: &str| {
        json!({"post": {
            "summary": summary, "tags": ["events"], "security": [{"writeKey": []}],
            "description": format!("Segment-compatible `{kind}`. JSON whatever the Content-Type; gzip accepted; at most 32 KB."),
            "requestBody": {"required": true, "content": {"application/json": {"schema": message}, "text/plain": {"schema": message}}},
            "responses": responses()
        }})
    };
    let admin = json!([{"adminToken": []}]);
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {"title": "nurture", "version": env!("CARGO_PKG_VERSION"), "description": "Events in (Segment tracking spec), contacts out. Every response carries `X-Request-Id` (the one the client sent, if short and plain). Every error is an `Error`; 429 and 503 come with `Retry-After`."},
        "paths": {
            "/v1/track": ingest("Record an event", "track"),
            "/v1/identify": ingest("Identify a person and set traits", "identify"),
            "/v1/page": ingest("Record a page view", "page"),
            "/v1/screen": ingest("Record a screen view", "screen"),
            "/v1/group": ingest("Associate a person with a group", "group"),
            "/v1/alias": ingest("Merge two identities", "alias"),
            "/v1/batch": {"post": {
                "summary": "Send many messages", "tags": ["events"], "security": [{"writeKey": []}],
                "description": "Also `/v1/import` and `/v1/b`. At most 500 KB and 2,500 messages; a bad message is reported by index and the good ones are kept.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["batch"], "properties": {"batch": {"type": "array", "items": message}, "sentAt": {"type": "string", "format": "date-time"}, "context": {"type": "object"}, "writeKey": {"type": "string"}}}}}},
                "responses": responses()
            }},
            "/v1/projects/{key}/settings": {"get": {"summary": "Settings for analytics.js", "tags": ["events"], "parameters": [{"name": "key", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "Where to send events"}, "404": error_response("Unknown write key")}}},
            "/v1/contacts": {"get": {"summary": "Find a contact by email, phone or user id", "tags": ["contacts"], "security": admin,
                "parameters": [{"name": "email", "in": "query", "schema": {"type": "string"}}, {"name": "phone", "in": "query", "schema": {"type": "string"}}, {"name": "user_id", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The contact 360 view"}, "400": error_response("No lookup key"), "401": error_response("No or unknown token"), "403": error_response("A write key, not an admin token"), "404": error_response("No such contact")}}},
            "/v1/contacts/{id}": {
                "get": {"summary": "The contact 360 view", "tags": ["contacts"], "security": admin, "parameters": [id_parameter()], "responses": {"200": {"description": "Traits, stage, score, tags, consent, events, enrollments, messages, messages not sent (`suppressed`: journey, step, reason, time), owner"}, "401": error_response("No or unknown token"), "404": error_response("No such contact")}},
                "delete": {"summary": "Erase a contact (GDPR/PIPL)", "tags": ["contacts"], "security": admin, "parameters": [id_parameter()], "responses": {"204": {"description": "Erased"}, "404": error_response("No such contact")}}
            },
            "/v1/contacts/{id}/score": {"get": {"summary": "Every point of a contact's lead score explained", "tags": ["contacts"], "security": admin, "parameters": [id_parameter()], "responses": {"200": {"description": "Rule, event, time and decayed value of each entry"}, "404": error_response("No such contact")}}},
            "/v1/enrollments/failed": {"get": {"summary": "Failed enrollments (the dead-letter list)", "tags": ["enrollments"], "security": admin, "responses": {"200": {"description": "Newest first"}}}},
            "/v1/enrollments/{id}/retry": {"post": {"summary": "Retry a failed enrollment", "tags": ["enrollments"], "security": admin, "parameters": [id_parameter()], "responses": {"200": {"description": "Queued again"}, "404": error_response("Not in the failed list")}}},
            "/v1/sms/twilio/status": {"post": {"summary": "Twilio delivery report (StatusCallback)", "tags": ["sms"], "security": [{"twilioSignature": []}],
                "description": "Form fields `MessageSid`, `MessageStatus`, `ErrorCode` (others are ignored). The state of a message only moves forward, so reports may arrive in any order.",
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["MessageSid", "MessageStatus"], "properties": {"MessageSid": {"type": "string"}, "MessageStatus": {"type": "string"}, "ErrorCode": {"type": "string"}}}}}},
                "responses": {"204": {"description": "Recorded"}, "400": error_response("A field is missing"), "401": error_response("The signature does not match"), "404": error_response("No Twilio provider is configured")}}},
            "/v1/sms/twilio/inbound": {"post": {"summary": "An SMS reply, from Twilio", "tags": ["sms"], "security": [{"twilioSignature": []}],
                "description": "Set as the number's incoming-message webhook. STOP, 退订, TD (and Twilio's other stop words) take the sender's SMS consent; START and UNSTOP give it back. Answers empty TwiML.",
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["From"], "properties": {"From": {"type": "string"}, "Body": {"type": "string"}}}}}},
                "responses": {"200": {"description": "Empty TwiML `<Response/>`", "content": {"text/xml": {}}}, "401": error_response("The signature does not match"), "404": error_response("No Twilio provider is configured")}}},
            "/v1/sms/inbound": {"post": {"summary": "An SMS reply, forwarded by a gateway", "tags": ["sms"], "security": [{"adminToken": []}, {"inboundSecret": []}],
                "description": "JSON or a form. The sender in `from` (or `mobile`, `phone`), the text in `body` (or `content`, `text`). Authorised by `?secret=` (`[sms] inbound_secret`) or an admin token.",
                "parameters": [{"name": "secret", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"from": {"type": "string"}, "body": {"type": "string"}}}}}},
                "responses": {"200": {"description": "`{\"success\": true, \"action\": \"opted_out\" | \"opted_in\" | \"none\", \"contacts\": N}`"}, "400": error_response("`from` or `body` is missing"), "401": error_response("Neither the secret nor an admin token")}}}
        },
        "components": {
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "basic", "description": "The write key as the user name, empty password; or `writeKey` in the body."},
                "adminToken": {"type": "http", "scheme": "bearer"},
                "repToken": {"type": "http", "scheme": "bearer", "description": "A sales rep's token (NURTURE_REP_TOKENS or [rep_tokens]): their own leads only."},
                "bounceToken": {"type": "http", "scheme": "bearer", "description": "A bounce token (NURTURE_BOUNCE_TOKENS) or an admin token. Never a write key: write keys are public."},
                "bounceTokenBasic": {"type": "http", "scheme": "basic", "description": "A bounce token as the user name or the password, for providers that only do HTTP Basic."},
                "twilioSignature": {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature", "description": "HMAC-SHA1 with the Twilio auth token over the public URL and the sorted form fields."},
                "inboundSecret": {"type": "apiKey", "in": "query", "name": "secret", "description": "`[sms] inbound_secret` of nurture.toml."}
            },
            "schemas": {
                "Message": {"type": "object", "properties": {
                    "type": {"type": "string", "enum": ["identify", "track", "page", "screen", "group", "alias"]},
                    "userId": {"type": ["string", "number", "null"]}, "anonymousId": {"type": ["string", "number", "null"]},
                    "event": {"type": "string"}, "properties": {"type": "object"}, "traits": {"type": "object"}, "context": {"type": "object"},
                    "messageId": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"}, "sentAt": {"type": "string", "format": "date-time"},
                    "previousId": {"type": "string"}, "groupId": {"type": "string"}, "name": {"type": "string"}, "writeKey": {"type": "string"}
                }},
                "BounceReport": {"type": "object", "required": ["email", "type"], "properties": {
                    "email": {"type": "string"}, "type": {"type": "string", "enum": ["hard_bounce", "soft_bounce", "complaint"]},
                    "reason": {"type": "string"}, "id": {"type": "string", "description": "The provider's id of the report: a retry with the same id is a no-op"},
                    "timestamp": {"type": "string", "format": "date-time"}
                }},
                "Error": {"type": "object", "required": ["error"], "description": "Every error, whatever the route: axum's own (404, 405, 413, bad path or query) too. `field` names the part of the request at fault when there is one; `request_id` is also the `X-Request-Id` response header, and in every log line of the request.",
                    "properties": {"error": {"type": "object", "required": ["code", "message", "request_id"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}, "details": {"type": "object"}, "request_id": {"type": "string"}}}}}
            }
        }
    });
    if let Some(paths) = document["paths"].as_object_mut() {
        paths.extend(health_paths());
        paths.extend(email_paths(&admin));
        paths.extend(sales_paths(&admin));
        if let Value::Object(reports) = super::reports::openapi_paths(&admin) {
            paths.extend(reports);
        }
        if let Value::Object(dashboard) = super::dashboard::openapi_paths() {
            paths.extend(dashboard);
        }
    }
    Json(document)
}

/// Liveness and readiness, for a load balancer or an orchestrator.
fn health_paths() -> serde_json::Map<String, Value> {
    let paths = json!({
        "/healthz": {"get": {"summary": "The process is alive (asks nothing else)", "tags": ["operations"], "description": "Also `/health`. Not counted against `max_concurrent_requests`.", "responses": {"200": {"description": "`{\"status\": \"ok\"}`"}}}},
        "/readyz": {"get": {"summary": "The process can serve: database reachable with this build's migrations, Redis reachable (production mode)", "tags": ["operations"],
            "responses": {"200": {"description": "`{\"status\": \"ready\", \"checks\": {\"database\": \"ok\", \"redis\": \"ok\"}}`"}, "503": error_response("Not ready: `details.not_ready` names each check that failed, `details.checks` says why")}}}
    });
    match paths {
        Value::Object(paths) => paths,
        _ => serde_json::Map::new(),
    }
}

/// Unsubscribe, tracking, bounce reports and suppressions (apart: `json!` nests only so deep).
fn email_paths(admin: &Value) -> serde_json::Map<String, Value> {
    let bounce = json!([{"bounceToken": []}, {"bounceTokenBasic": []}]);
    let token = json!({"name": "token", "in": "path", "required": true, "description": "Signed by the server; a changed token is refused", "schema": {"type": "string"}});
    let feedback = json!({
        "200": {"description": "`{\"success\": true, \"report\": {\"suppressed\", \"events\", \"duplicates\"}}`"},
        "400": error_response("Not JSON, or a report without `email` or `type`; `field` names it (`[1].email` in an array)"),
        "401": error_response("No or unknown bounce token")
    });
    let paths = json!({
        "/u/{token}": {
            "get": {"summary": "Unsubscribe page (changes nothing)", "tags": ["email"], "description": "The link in marketing email and its `List-Unsubscribe` header. A GET only shows a page with a button: link scanners follow links.", "parameters": [token], "responses": {"200": {"description": "A page with the unsubscribe button", "content": {"text/html": {}}}, "404": {"description": "Not a valid link", "content": {"text/html": {}}}, "410": {"description": "The link is more than a year old; the page points to the latest email's link", "content": {"text/html": {}}}}},
            "post": {"summary": "Unsubscribe from marketing email (RFC 8058 one-click)", "tags": ["email"], "description": "Body `List-Unsubscribe=One-Click` (form-encoded or multipart). Opts the contact out of marketing email, exits their marketing journeys and records `Unsubscribed`. Idempotent. Authenticated by the link's signature only.", "parameters": [token],
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["List-Unsubscribe"], "properties": {"List-Unsubscribe": {"const": "One-Click"}}}}}},
                "responses": {"200": {"description": "Unsubscribed (never a redirect)", "content": {"text/html": {}}}, "400": error_response("No `List-Unsubscribe=One-Click`"), "404": error_response("Not a valid link"), "410": error_response("The link is more than a year old (`link_expired`)")}}
        },
        "/c/{token}": {"get": {"summary": "Tracked link: records `Email Link Clicked`, then redirects", "tags": ["email"], "description": "The destination is signed inside the token, so this is never an open redirect. The first click of each link of a message becomes an event; `HEAD` redirects without recording. A link more than 90 days old still redirects but records nothing.", "parameters": [token], "responses": {"302": {"description": "To the link's address"}, "404": error_response("Not a valid link")}}},
        "/o/{token}.gif": {"get": {"summary": "Open pixel: records `Email Opened` (once per message)", "tags": ["email"], "description": "A pixel more than 90 days old answers the GIF and records nothing.", "parameters": [token], "responses": {"200": {"description": "A 1x1 transparent GIF", "content": {"image/gif": {}}}, "404": error_response("Not a valid link")}}},
        "/v1/email/bounces": {"post": {"summary": "Report bounces and complaints (generic shape)", "tags": ["email"], "security": bounce,
            "description": "One report or an array. A hard bounce or a complaint suppresses the address for every journey; each report becomes `Email Bounced` or `Email Marked as Spam` on the contacts with that address. A report with an `id` seen before does nothing.",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/BounceReport"}, {"type": "array", "items": {"$ref": "#/components/schemas/BounceReport"}}]}}}},
            "responses": feedback}},
        "/v1/email/bounces/postmark": {"post": {"summary": "Postmark's Bounce and Spam Complaint webhooks", "tags": ["email"], "security": bounce,
            "description": "Point Postmark's Bounce and Spam Complaint webhooks here, with HTTP Basic auth holding a bounce token (as user name or password). `HardBounce`, `BadEmailAddress`, `ManuallyDeactivated` and `SpamComplaint` suppress; other types are recorded only.",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["RecordType", "Email"], "properties": {"RecordType": {"type": "string"}, "Type": {"type": "string"}, "Email": {"type": "string"}, "ID": {"type": "integer"}, "Description": {"type": "string"}, "Details": {"type": "string"}, "BouncedAt": {"type": "string", "format": "date-time"}}}}}},
            "responses": feedback}},
        "/v1/suppressions": {"get": {"summary": "Suppressed addresses", "tags": ["email"], "security": admin, "parameters": [{"name": "email", "in": "query", "description": "One address's record, lifted suppressions included", "schema": {"type": "string"}}], "responses": {"200": {"description": "`{\"suppressions\": [...]}`"}, "400": error_response("Not an email address")}}},
        "/v1/suppressions/{channel}/{address}": {"delete": {"summary": "Lift a suppression", "tags": ["email"], "security": admin, "parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string", "enum": ["email", "sms"]}}, {"name": "address", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "Lifted: the address may be mailed again; the record stays"}, "400": error_response("Unknown channel or bad address"), "404": error_response("Not suppressed")}}}
    });
    match paths {
        Value::Object(paths) => paths,
        _ => serde_json::Map::new(),
    }
}

/// A rep's leads, what reps do with them, and stages set by an admin.
fn sales_paths(admin: &Value) -> serde_json::Map<String, Value> {
    let rep = json!([{"repToken": []}, {"adminToken": []}]);
    let id = id_parameter();
    let denied = |extra: Value| {
        let mut responses = json!({
            "200": {"description": "The lead afterwards: `id`, `contact_id`, `team`, `rep`, `status`, `assigned_at`, `accept_by`, `accepted_at`, `closed_at`, `reason`, `revenue`, `currency`"},
            "401": error_response("No or unknown token"),
            "403": error_response("A write key"),
            "404": error_response("No such lead, or another rep's"),
            "409": error_response("The lead is not in a state that allows this (e.g. already closed)")
        });
        if let (Some(responses), Value::Object(extra)) = (responses.as_object_mut(), extra) {
            responses.extend(extra);
        }
        responses
    };
    let paths = json!({
        "/v1/sales/leads": {"get": {"summary": "Leads, newest first: a rep's own, or everybody's with an admin token", "tags": ["sales"], "security": rep,
            "parameters": [{"name": "status", "in": "query", "schema": {"type": "string", "enum": ["assigned", "accepted", "pooled", "rejected", "recycled", "reassigned", "won", "lost"]}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}}],
            "responses": {"200": {"description": "`{\"leads\": [...]}`, each with its `contact` (email, phone, name, company, score, stage)"}, "400": error_response("Unknown status or bad limit; `field` names it"), "401": error_response("No or unknown token"), "403": error_response("A write key")}}},
        "/v1/sales/leads/{id}": {"get": {"summary": "One lead", "tags": ["sales"], "security": rep, "parameters": [id], "responses": {"200": {"description": "The lead and its contact"}, "401": error_response("No or unknown token"), "404": error_response("No such lead, or another rep's")}}},
        "/v1/sales/leads/{id}/accept": {"post": {"summary": "Accept a lead", "tags": ["sales"], "security": rep, "parameters": [id],
            "description": "Ends the accept deadline and records `Lead Accepted` on the contact. Accepting twice is a no-op.", "responses": denied(json!({}))}},
        "/v1/sales/leads/{id}/reject": {"post": {"summary": "Reject a lead, with a reason", "tags": ["sales"], "security": rep, "parameters": [id],
            "description": "Records `Lead Rejected`, releases the rep's capacity, and sends the lead back to the team's pool at once: another rep gets it (never the same one twice in a row), or it waits for the next free slot.",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string", "maxLength": 500}}}}}},
            "responses": denied(json!({"400": error_response("No `reason`")}))}},
        "/v1/sales/leads/{id}/outcome": {"post": {"summary": "Close a lead: won (with revenue) or lost (with a reason)", "tags": ["sales"], "security": rep, "parameters": [id],
            "description": "Releases the rep's capacity. `won` records `Lead Won` with `revenue` (kept exactly, to the cent), a conversion of the journey that handed the lead over, and moves the contact to the `customer` stage, so `exit_when: stage == \"customer\"` ends their journeys at once. `lost` records `Lead Lost`.",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [
                {"type": "object", "required": ["outcome", "revenue"], "properties": {"outcome": {"const": "won"}, "revenue": {"type": "number", "minimum": 0}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
                {"type": "object", "required": ["outcome", "reason"], "properties": {"outcome": {"const": "lost"}, "reason": {"type": "string", "maxLength": 500}}}
            ]}}}},
            "responses": denied(json!({"400": error_response("Bad `outcome`, `revenue`, `currency` or `reason`; `field` names it")}))}},
        "/v1/contacts/{id}/stage": {"post": {"summary": "Set a contact's stage to opportunity or customer", "tags": ["contacts"], "security": admin, "parameters": [id],
            "description": "Moving forward starts the journeys triggered by the stage; either way, journeys whose `exit_when` now holds end at once. Earlier stages follow the lead score.",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["stage"], "properties": {"stage": {"type": "string", "enum": ["opportunity", "customer"]}}}}}},
            "responses": {"200": {"description": "`{\"contact\": ID, \"stage\": ...}`"}, "400": error_response("Not opportunity or customer"), "401": error_response("No or unknown token"), "403": error_response("Not an admin token"), "404": error_response("No such contact")}}}
    });
    match paths {
        Value::Object(paths) => paths,
        _ => serde_json::Map::new(),
    }
}

fn responses() -> Value {
    json!({
        "200": {"description": "Stored: `{\"success\": true}` (with `accepted` and `rejected` when some batch items were refused)"},
        "400": error_response("Invalid JSON, too large, or no valid message; `field` names the problem"),
        "401": error_response("Missing or unknown write key"),
        "413": error_response("Larger than 4 MB on the wire"),
        "429": error_response("This write key sent more than its rate limit; retry after `Retry-After` seconds"),
        "503": error_response("Not stored: overloaded, timed out or a dependency down; retry after `Retry-After` seconds")
    })
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn id_parameter() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}})
}
