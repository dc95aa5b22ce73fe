//! The HTTP/JSON API: routing, bodies, errors. Every answer is JSON; every
//! error is `{"error": "..."}` with a 4xx status for a bad request and a
//! 5xx status when sproutd or the engine failed. `API.md` has the table.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc};

use crate::daemon::{Daemon, forked, open_stdio};
use crate::engine::ForkRequest;
use crate::error::ApiError;
use crate::events::Filter;
use crate::proto::{
    BudgetBody, ClaimBody, DrainBody, ErrorBody, ExecBody, ForkBody, FunctionView, KillBody,
    PolicyBody, PrewarmBody, TemplateView,
};
use crate::registry::FunctionSpec;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

type Query = HashMap<String, String>;

/// Answers one request.
pub async fn handle(d: Arc<Daemon>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // On a task of its own: a client that hangs up must not cancel a fork
    // or delete halfway (hyper drops the request's future then).
    let result = match tokio::spawn(async move { route(&d, req).await }).await {
        Ok(r) => r,
        Err(e) => Err(ApiError::internal(format!("request handler failed: {e}"))),
    };
    match result {
        Ok(resp) => {
            tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
            resp
        }
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%method, %path, status = e.status, "{}", e.message);
            } else {
                tracing::debug!(%method, %path, status = e.status, "{}", e.message);
            }
            let mut resp = json(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &ErrorBody { error: e.message },
            );
            if let Some(allow) = e.allow {
                resp.headers_mut()
                    .insert(ALLOW, allow.parse().expect("static header"));
            }
            resp
        }
    }
}

fn not_allowed(method: &Method, path: &str, allow: &'static str) -> ApiError {
    ApiError {
        allow: Some(allow),
        ..ApiError::new(
            405,
            format!("method {method} is not allowed on {path} (allowed: {allow})"),
        )
    }
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_vec(value).expect("serializable");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("valid response")
}

fn ok<T: Serialize>(value: &T) -> Result<Response<Body>, ApiError> {
    Ok(json(StatusCode::OK, value))
}

fn no_content() -> Result<Response<Body>, ApiError> {
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()).boxed_unsync())
        .expect("valid response"))
}

async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            format!("request body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// The body as JSON, which must be there.
async fn read_json_required<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = body_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

/// The body as JSON; an empty body is `T::default()`.
async fn read_json_or_default<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

fn parse_query(q: Option<&str>) -> Query {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn flag(q: &Query, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "query parameter {name}={v:?}: expected true or false"
        ))),
    }
}

fn function_view(d: &Daemon, f: FunctionSpec) -> FunctionView {
    FunctionView {
        template: d.template(&f.name).as_ref().map(TemplateView::from),
        instances: d.instances_of(&f.name),
        function: f,
    }
}

async fn route(d: &Arc<Daemon>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let m = &method;
    match segs.as_slice() {
        [] => match *m {
            Method::GET => ok(&d.info()),
            _ => Err(not_allowed(m, &path, "GET")),
        },
        ["functions"] => match *m {
            Method::GET => {
                let fs: Vec<FunctionView> = d
                    .functions()
                    .into_iter()
                    .map(|f| function_view(d, f))
                    .collect();
                ok(&fs)
            }
            Method::POST => {
                let f: FunctionSpec = read_json_required(req).await?;
                let f = d.add_function(f).await?;
                Ok(json(StatusCode::CREATED, &function_view(d, f)))
            }
            _ => Err(not_allowed(m, &path, "GET, POST")),
        },
        ["functions", name] => match *m {
            Method::GET => ok(&function_view(d, d.function(name)?)),
            Method::DELETE => {
                d.remove_function(name).await?;
                no_content()
            }
            _ => Err(not_allowed(m, &path, "GET, DELETE")),
        },
        ["functions", name, "template"] => match *m {
            Method::GET => {
                d.function(name)?;
                match d.template(name) {
                    Some(t) => ok(&TemplateView::from(&t)),
                    None => Err(ApiError::not_found(format!(
                        "function {name:?} has no loaded template"
                    ))),
                }
            }
            Method::POST | Method::PUT => ok(&TemplateView::from(&d.load_template(name).await?)),
            Method::DELETE => {
                d.drop_template(name).await?;
                no_content()
            }
            _ => Err(not_allowed(m, &path, "GET, POST, DELETE")),
        },
        ["functions", name, "instances"] => match *m {
            Method::GET => {
                d.function(name)?;
                ok(&d.list(Some(name)).await?)
            }
            Method::POST => {
                let name = name.to_string();
                let body: ForkBody = read_json_required(req).await?;
                fork(d, &name, body).await
            }
            _ => Err(not_allowed(m, &path, "GET, POST")),
        },
        ["instances"] => match *m {
            Method::GET => ok(&d.list(query.get("function").map(String::as_str)).await?),
            _ => Err(not_allowed(m, &path, "GET")),
        },
        ["instances", id] => match *m {
            Method::GET => ok(&d.view(id).await?),
            Method::DELETE => {
                d.delete(id, flag(&query, "force")?).await?;
                no_content()
            }
            _ => Err(not_allowed(m, &path, "GET, DELETE")),
        },
        ["instances", id, action] => {
            let id = id.to_string();
            match (*action, m) {
                ("pause", &Method::POST) => {
                    d.pause(&id).await?;
                    no_content()
                }
                ("resume", &Method::POST) => {
                    d.resume(&id).await?;
                    no_content()
                }
                ("kill", &Method::POST) => {
                    let body: KillBody = read_json_or_default(req).await?;
                    let sig = body.signal.to_number().map_err(ApiError::bad_request)?;
                    d.kill(&id, sig, body.all).await?;
                    no_content()
                }
                ("exec", &Method::POST) => {
                    let body: ExecBody = read_json_required(req).await?;
                    ok(&d.exec(&id, body).await?)
                }
                ("stats", &Method::GET) => ok(&d.stats(&id).await?),
                ("release", &Method::POST) => ok(&d.release(&id).await?),
                ("pause" | "resume" | "kill" | "exec" | "release", _) => {
                    Err(not_allowed(m, &path, "POST"))
                }
                ("stats", _) => Err(not_allowed(m, &path, "GET")),
                _ => Err(unknown_endpoint(m, &path)),
            }
        }
        ["pool"] => match *m {
            Method::GET => ok(&d.pool_overview()),
            _ => Err(not_allowed(m, &path, "GET")),
        },
        ["pool", "budget"] => match *m {
            Method::PUT | Method::POST => {
                let body: BudgetBody = read_json_required(req).await?;
                ok(&d.set_budget(body.limit_bytes).await?)
            }
            _ => Err(not_allowed(m, &path, "PUT")),
        },
        ["functions", name, "pool"] => match *m {
            Method::GET => ok(&d.pool_view(name)?),
            _ => Err(not_allowed(m, &path, "GET")),
        },
        ["functions", name, "pool", action] => {
            let name = name.to_string();
            match (*action, m) {
                ("policy", &Method::PUT) | ("policy", &Method::POST) => {
                    let body: PolicyBody = read_json_required(req).await?;
                    ok(&d.set_policy(&name, body).await?)
                }
                ("prewarm", &Method::POST) => {
                    let body: PrewarmBody = read_json_required(req).await?;
                    ok(&d.prewarm(&name, body.count).await?)
                }
                ("drain", &Method::POST) => {
                    let body: DrainBody = read_json_or_default(req).await?;
                    ok(&d.drain_pool(&name, body.force).await?)
                }
                ("policy", _) => Err(not_allowed(m, &path, "PUT")),
                ("prewarm" | "drain", _) => Err(not_allowed(m, &path, "POST")),
                _ => Err(unknown_endpoint(m, &path)),
            }
        }
        ["functions", name, "claim"] => match *m {
            Method::POST => {
                let name = name.to_string();
                let body: ClaimBody = read_json_or_default(req).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &d.claim(&name, body, None).await?,
                ))
            }
            _ => Err(not_allowed(m, &path, "POST")),
        },
        ["functions", name, "leases"] => match *m {
            Method::POST => {
                let name = name.to_string();
                Ok(json(StatusCode::CREATED, &d.acquire_lease(&name).await?))
            }
            _ => Err(not_allowed(m, &path, "POST")),
        },
        ["leases", lease] => match *m {
            Method::DELETE => {
                d.release_lease(lease).await?;
                no_content()
            }
            _ => Err(not_allowed(m, &path, "DELETE")),
        },
        ["metrics"] => match *m {
            Method::GET => {
                let text = d.metrics_text().await?;
                Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(text)).boxed_unsync())
                    .expect("valid response"))
            }
            _ => Err(not_allowed(m, &path, "GET")),
        },
        ["events"] => match *m {
            Method::GET => Ok(events(
                d,
                Filter {
                    id: query.get("id").cloned(),
                    function: query.get("function").cloned(),
                },
            )),
            _ => Err(not_allowed(m, &path, "GET")),
        },
        _ => Err(unknown_endpoint(m, &path)),
    }
}

fn unknown_endpoint(m: &Method, path: &str) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {m} {path}"))
}

async fn fork(d: &Arc<Daemon>, function: &str, body: ForkBody) -> Result<Response<Body>, ApiError> {
    for p in [&body.stdin, &body.stdout, &body.stderr, &body.bundle]
        .into_iter()
        .flatten()
    {
        if !p.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "{} must be an absolute path",
                p.display()
            )));
        }
    }
    // Validated before any file is created for it.
    sprout_runtime::spec::validate_id(&body.id)
        .map_err(|r| ApiError::bad_request(format!("invalid instance id {:?}: {r}", body.id)))?;
    d.function(function)?;
    let (stdin, stdout, stderr) = (body.stdin.clone(), body.stdout.clone(), body.stderr.clone());
    let stdio = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        Ok([
            Some(open_stdio(stdin.as_deref(), false)?),
            Some(open_stdio(stdout.as_deref(), true)?),
            Some(open_stdio(stderr.as_deref(), true)?),
        ])
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::bad_request(format!("stdio: {e}")))?;
    let req = ForkRequest {
        id: body.id,
        bundle: body.bundle,
        stdio,
        console_socket: None,
        netns: None,
        annotations: body.annotations,
        resources: body.resources,
        cgroups_path: None,
        populate: None,
    };
    let inst = d.fork(function, req, body.vpc).await?;
    Ok(json(StatusCode::CREATED, &forked(&inst)))
}

/// A body fed from a channel: the event stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// `GET /events`: JSON lines, one per event, until the client leaves.
/// The subscription is live when the response head arrives.
fn events(d: &Arc<Daemon>, filter: Filter) -> Response<Body> {
    let mut rx = d.events().subscribe();
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) if filter.matches(&ev) => {
                        let mut v = serde_json::to_vec(&ev).expect("serializable");
                        v.push(b'\n');
                        v
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        format!("{{\"type\":\"lagged\",\"missed\":{n}}}\n").into_bytes()
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tx.closed() => break,
            };
            if tx.send(Bytes::from(line)).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(ChannelBody(body_rx).boxed_unsync())
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query(Some("force=true&id=a%2Db&x"));
        assert_eq!(q["force"], "true");
        assert_eq!(q["id"], "a-b");
        assert!(flag(&q, "force").unwrap());
        assert!(flag(&q, "x").unwrap());
        assert!(!flag(&q, "missing").unwrap());
        let q = parse_query(Some("force=maybe"));
        assert!(flag(&q, "force").is_err());
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
