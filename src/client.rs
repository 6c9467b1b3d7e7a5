//! A client of the pod API, for the ops verbs, the console and the chaos
//! runner. It retries only what can succeed on retry (connection errors and
//! 503), a bounded number of times; a 4xx, above all 409 `already_terminal`,
//! is an answer, never retried: no retry storms from Vigil's own clients.

use crate::engine::run::{RunState, TransitionRecord};
use crate::engine::store::SwitchAudit;
pub use crate::pod::stream::StreamPart;
use crate::pod::stream::{ChunkEvent, EndEvent, ResetEvent};
use crate::pod::wire::{
    ApiErrorBody, RunDetail, RunList, SetSwitchRequest, SubmitRequest, SubmitResponse, SwitchList,
};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad pod URL {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("pod at {url} answered {status}: {} ({})", body.message, body.error)]
    Api {
        url: String,
        status: StatusCode,
        body: ApiErrorBody,
    },
    #[error("pod at {url} unreachable: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("pod at {url} sent something unexpected: {problem}")]
    Protocol { url: String, problem: String },
}

impl ClientError {
    /// The run's state, when the pod answered that it is already terminal.
    pub fn already_terminal(&self) -> Option<RunState> {
        match self {
            ClientError::Api { body, .. } if body.error == "already_terminal" => body.state,
            _ => None,
        }
    }
}

/// One event of a run's stream, as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    Chunk {
        id: String,
        epoch: i64,
        seq: i64,
        /// The step whose attempt wrote the chunk.
        #[serde(default)]
        step: Option<String>,
        #[serde(default)]
        attempt: Option<i64>,
        data: String,
    },
    /// The stream continues at `epoch`: of the chunks held from older
    /// epochs keep only those whose `(epoch, step, attempt)` is in `keep`.
    Reset {
        epoch: i64,
        #[serde(default)]
        keep: Vec<StreamPart>,
    },
    End {
        state: RunState,
        error: Option<String>,
    },
}

/// Decode one SSE event of a run stream: `Ok(None)` for event names that
/// are not `chunk`, `reset` or `end`; an error for a body that does not parse.
pub fn decode_stream_event(
    event: &str,
    id: &str,
    data: &str,
) -> Result<Option<StreamEvent>, serde_json::Error> {
    Ok(Some(match event {
        "chunk" => {
            let c: ChunkEvent = serde_json::from_str(data)?;
            StreamEvent::Chunk {
                id: id.to_owned(),
                epoch: c.epoch,
                seq: c.seq,
                step: c.step,
                attempt: c.attempt,
                data: c.data,
            }
        }
        "reset" => {
            let r: ResetEvent = serde_json::from_str(data)?;
            StreamEvent::Reset {
                epoch: r.epoch,
                keep: r.keep,
            }
        }
        "end" => {
            let e: EndEvent = serde_json::from_str(data)?;
            StreamEvent::End {
                state: e.state,
                error: e.error,
            }
        }
        _ => return Ok(None),
    }))
}

impl StreamPart {
    /// Does this part hold the chunk of `epoch` written by `step`'s `attempt`?
    pub fn covers(&self, epoch: i64, step: Option<&str>, attempt: Option<i64>) -> bool {
        self.epoch == epoch && step == Some(self.step.as_str()) && attempt == Some(self.attempt)
    }
}

/// Would a client following the stream keep a chunk it holds of
/// `(epoch, step, attempt)` when a reset to `reset_epoch` with `keep` comes?
pub fn keeps(
    reset_epoch: i64,
    keep: &[StreamPart],
    epoch: i64,
    step: Option<&str>,
    attempt: Option<i64>,
) -> bool {
    epoch >= reset_epoch || keep.iter().any(|p| p.covers(epoch, step, attempt))
}

/// What a client holds after following `events` and honouring each reset:
/// the chunk events it kept, in the order received.
pub fn held_chunks(events: &[StreamEvent]) -> Vec<&StreamEvent> {
    let mut held: Vec<&StreamEvent> = Vec::new();
    for ev in events {
        match ev {
            StreamEvent::Chunk { .. } => held.push(ev),
            StreamEvent::Reset { epoch, keep } => held.retain(|c| match c {
                StreamEvent::Chunk {
                    epoch: e,
                    step,
                    attempt,
                    ..
                } => keeps(*epoch, keep, *e, step.as_deref(), *attempt),
                _ => false,
            }),
            StreamEvent::End { .. } => {}
        }
    }
    held
}

#[derive(Debug, Clone)]
pub struct PodClient {
    base: url::Url,
    http: reqwest::Client,
    token: Option<String>,
    /// Attempts for retryable failures (connection errors, 503).
    pub attempts: u32,
}

impl PodClient {
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: url.to_owned(),
                problem: e.to_string(),
            })?;
        Self::with_http(url, http)
    }

    /// A client that sends through `http`, with its timeouts and its
    /// connection pool (the console's scrapes share one).
    pub fn with_http(url: &str, http: reqwest::Client) -> Result<Self, ClientError> {
        let bad = |problem: &str| ClientError::BadUrl {
            url: url.to_owned(),
            problem: problem.into(),
        };
        // "127.0.0.1:7700" fails to parse and "localhost:7700" parses with
        // the scheme "localhost": both meant http://.
        let hint = || {
            if url.contains("://") {
                "expected a URL like http://127.0.0.1:7700".to_owned()
            } else {
                format!("expected a URL like http://{url}")
            }
        };
        let base = url::Url::parse(url).map_err(|e| bad(&format!("{e}; {}", hint())))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(&hint()));
        }
        if base.host().is_none() {
            return Err(bad("no host"));
        }
        Ok(PodClient {
            base,
            http,
            token: None,
            attempts: 3,
        })
    }

    /// Send `Authorization: Bearer <token>` (pods started with `--token-file`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, path: &str) -> Result<url::Url, ClientError> {
        self.base.join(path).map_err(|e| ClientError::BadUrl {
            url: format!("{}{path}", self.base),
            problem: e.to_string(),
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        let url = self.endpoint(path)?;
        let mut last = None;
        for attempt in 1..=self.attempts.max(1) {
            let mut req = self.authorize(
                self.http
                    .request(method.clone(), url.clone())
                    .timeout(Duration::from_secs(30)),
            );
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.map_err(|source| ClientError::Transport {
                        url: url.to_string(),
                        source,
                    })?;
                    if status.is_success() {
                        let v = serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
                            url: url.to_string(),
                            problem: format!("{e}: {text:.200}"),
                        })?;
                        return Ok((status, v));
                    }
                    let body: ApiErrorBody = serde_json::from_str(&text).unwrap_or(ApiErrorBody {
                        error: "http_error".into(),
                        message: text.chars().take(200).collect(),
                        state: None,
                    });
                    let err = ClientError::Api {
                        url: url.to_string(),
                        status,
                        body,
                    };
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(source) if source.is_connect() || source.is_timeout() => {
                    last = Some(ClientError::Transport {
                        url: url.to_string(),
                        source,
                    });
                }
                Err(source) => {
                    return Err(ClientError::Transport {
                        url: url.to_string(),
                        source,
                    });
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol {
            url: url.to_string(),
            problem: "no attempt made".into(),
        }))
    }

    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        Ok(self.call(Method::POST, "v1/runs", Some(req)).await?.1)
    }

    pub async fn runs(&self, query: &[(&str, String)]) -> Result<RunList, ClientError> {
        let mut url = self.endpoint("v1/runs")?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let path = format!("v1/runs?{}", url.query().unwrap_or(""));
        Ok(self.call::<(), _>(Method::GET, &path, None).await?.1)
    }

    pub async fn run(&self, id: &str) -> Result<RunDetail, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, &format!("v1/runs/{}", enc(id)), None)
            .await?
            .1)
    }

    pub async fn cancel(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<TransitionRecord, ClientError> {
        let body = crate::pod::wire::CancelRequest { reason };
        Ok(self
            .call(
                Method::POST,
                &format!("v1/runs/{}/cancel", enc(id)),
                Some(&body),
            )
            .await?
            .1)
    }

    pub async fn event(
        &self,
        id: &str,
        ev: &crate::pod::wire::RunEvent,
    ) -> Result<(), ClientError> {
        let _: crate::pod::wire::EventAccepted = self
            .call(
                Method::POST,
                &format!("v1/runs/{}/events", enc(id)),
                Some(ev),
            )
            .await?
            .1;
        Ok(())
    }

    pub async fn switches(&self) -> Result<SwitchList, ClientError> {
        Ok(self
            .call::<(), _>(Method::GET, "v1/switches", None)
            .await?
            .1)
    }

    pub async fn set_switch(
        &self,
        name: &str,
        req: &SetSwitchRequest,
    ) -> Result<SwitchAudit, ClientError> {
        Ok(self
            .call(
                Method::PUT,
                &format!("v1/switches/{}", enc(name)),
                Some(req),
            )
            .await?
            .1)
    }

    /// The pod's `/metrics` in the Prometheus text format 0.0.4 (what the
    /// console's parser reads); an answer other than 2xx is an error.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let url = self.endpoint("metrics")?;
        let transport = |source| ClientError::Transport {
            url: url.to_string(),
            source,
        };
        let resp = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/plain; version=0.0.4")
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ClientError::Api {
                url: url.to_string(),
                status,
                body: ApiErrorBody {
                    error: "http_error".into(),
                    message: text.chars().take(200).collect(),
                    state: None,
                },
            });
        }
        Ok(text)
    }

    /// Follow a run's stream to its `end` event, calling `on_event` for each
    /// event. A dropped connection is resumed from the last event id.
    pub async fn attach(
        &self,
        id: &str,
        mut on_event: impl FnMut(&StreamEvent),
    ) -> Result<EndEvent, ClientError> {
        let url = self.endpoint(&format!("v1/runs/{}/stream", enc(id)))?;
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let mut req = self.authorize(self.http.get(url.clone()));
            if let Some(l) = &last_id {
                req = req.header("Last-Event-ID", l);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(source) => {
                    failures += 1;
                    if failures > self.attempts {
                        return Err(ClientError::Transport {
                            url: url.to_string(),
                            source,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            if !resp.status().is_success() {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(ApiErrorBody {
                    error: "http_error".into(),
                    message: text,
                    state: None,
                });
                return Err(ClientError::Api {
                    url: url.to_string(),
                    status,
                    body,
                });
            }
            let mut events = resp.bytes_stream().eventsource();
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(_) => break, // connection dropped: resume below
                };
                let proto = |e: serde_json::Error| ClientError::Protocol {
                    url: url.to_string(),
                    problem: format!("bad {} event: {e}", ev.event),
                };
                let Some(parsed) =
                    decode_stream_event(&ev.event, &ev.id, &ev.data).map_err(proto)?
                else {
                    continue;
                };
                if matches!(parsed, StreamEvent::Chunk { .. }) {
                    last_id = Some(ev.id.clone());
                    failures = 0;
                }
                on_event(&parsed);
                if let StreamEvent::End { state, error } = parsed {
                    return Ok(EndEvent { state, error });
                }
            }
            failures += 1;
            if failures > self.attempts {
                return Err(ClientError::Protocol {
                    url: url.to_string(),
                    problem: "stream ended without an end event".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Percent-encode one path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(epoch: i64, seq: i64, step: Option<&str>, attempt: Option<i64>) -> StreamEvent {
        StreamEvent::Chunk {
            id: format!("{epoch}:{seq}"),
            epoch,
            seq,
            step: step.map(str::to_owned),
            attempt,
            data: format!("{epoch}.{seq}"),
        }
    }

    #[test]
    fn a_reset_keeps_exactly_the_listed_parts_of_older_epochs() {
        let events = vec![
            chunk(1, 0, Some("intro"), Some(1)),
            chunk(1, 1, Some("body"), Some(1)),
            chunk(1, 2, None, None),
            StreamEvent::Reset {
                epoch: 2,
                keep: vec![StreamPart {
                    epoch: 1,
                    step: "intro".into(),
                    attempt: 1,
                }],
            },
            chunk(2, 0, Some("body"), Some(2)),
            // A second takeover keeps intro and body's attempt 2 (succeeded).
            chunk(2, 1, Some("done"), Some(1)),
            StreamEvent::Reset {
                epoch: 3,
                keep: vec![
                    StreamPart {
                        epoch: 1,
                        step: "intro".into(),
                        attempt: 1,
                    },
                    StreamPart {
                        epoch: 2,
                        step: "body".into(),
                        attempt: 2,
                    },
                ],
            },
            chunk(3, 0, Some("done"), Some(2)),
        ];
        let held: Vec<&str> = held_chunks(&events)
            .into_iter()
            .filter_map(|e| match e {
                StreamEvent::Chunk { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(held, ["1:0", "2:0", "3:0"]);
    }

    #[test]
    fn stream_events_round_trip_and_old_resets_parse() {
        let ev = chunk(1, 0, Some("intro"), Some(1));
        let text = serde_json::to_string(&ev).unwrap_or_default();
        assert_eq!(serde_json::from_str::<StreamEvent>(&text).ok(), Some(ev));
        let old: Option<StreamEvent> = serde_json::from_str(r#"{"event":"reset","epoch":2}"#).ok();
        assert_eq!(
            old,
            Some(StreamEvent::Reset {
                epoch: 2,
                keep: vec![]
            })
        );
    }
}
