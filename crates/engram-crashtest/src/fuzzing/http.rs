//! The `http_request` fuzz target: one structure-aware HTTP request per input, through the real
//! axum router (`engram_server::router`) in-process with `tower::ServiceExt::oneshot`, on a
//! current-thread tokio runtime, against a seeded database opened once per process.
//!
//! The input bytes drive `arbitrary::Unstructured`: a route template (or a made-up path) with
//! fuzzed segments and query parameters, a method (usually one the route takes), headers
//! (content type, accept, an API key of the configured set or garbage) and a body that is either
//! raw bytes or JSON shaped like the route's request type (transactions with every operation
//! kind and preconditions included), mutated now and then (a field dropped, retyped or added,
//! the text truncated).
//!
//! Checked on every request: no panic; no 5xx (a 503 `index_timeout`, the documented "retry
//! later" of a search with `min_lsn`, is the one exception); every 4xx has a JSON body
//! `{code, message}`; a refused request commits nothing (the visible LSN is unchanged); a 2xx
//! write returns the LSN of its commit and that LSN is visible afterwards; JSON responses parse;
//! a change-feed stream ends (`follow=false` is forced: a following stream never ends by
//! design) and every line of it is an event, never an error line.
//!
//! `/mcp` is left to the `mcp_request` target (fuzz::mcp), which speaks JSON-RPC to the same
//! server over its stdio transport.

use super::seed::{seeded_database, CURSOR, DIMENSION, ENTITIES, KEYS, NAMESPACES, RELATION_TYPES};
use super::values::{any_value, as_of, list, number, optional, percent_encode, shaped, text, vector};
use arbitrary::{Result as Drawn, Unstructured};
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use engram_server::{router, ApiKeyConfig, AppState, Config, Limits, Role};
use serde_json::{json, Value};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tower::ServiceExt;

pub const ADMIN_KEY: &str = "fuzz-admin-key-0000000000";
pub const READ_ONLY_KEY: &str = "fuzz-read-only-key-000000";
/// A read-write key limited to namespace `alpha`.
pub const ALPHA_KEY: &str = "fuzz-alpha-writer-key-000";

/// Longest a request (response body included) may take: far above any real answer, so a
/// request that hits it is a hang, reported as such.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response body read back.
const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// After this many commits the harness starts again from a fresh seeded database, so that a
/// long run does not slow down (or fill the disk) as fuzzed writes accumulate.
const RESEED_AFTER_COMMITS: u64 = 20_000;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    state: AppState,
    words: Vec<&'static str>,
    memory_ids: Vec<&'static str>,
    seed_lsn: u64,
    _dir: tempfile::TempDir,
}

/// The server's configuration: three keys (admin; read-only; read-write on `alpha` only) and
/// limits small enough for fuzzed inputs to reach them.
pub fn fuzz_config() -> Config {
    let key = |key: &str, role, namespaces: Option<Vec<String>>| ApiKeyConfig {
        key: key.to_string(),
        role,
        namespaces,
        name: None,
    };
    let config = Config {
        keys: vec![
            key(ADMIN_KEY, Role::Admin, None),
            key(READ_ONLY_KEY, Role::ReadOnly, None),
            key(ALPHA_KEY, Role::ReadWrite, Some(vec!["alpha".to_string()])),
        ],
        limits: Limits {
            max_body_bytes: 64 * 1024,
            max_batch_items: 16,
            max_dimension: 8,
            max_scan_items: 32,
            ..Limits::default()
        },
        ..Config::default()
    };
    config.validate().expect("the fuzz configuration is valid");
    config
}

impl Harness {
    fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let seeded = seeded_database();
        let seed_lsn = seeded.db.visible_lsn();
        let memory_ids: Vec<&'static str> = seeded.memory_ids.into_iter().map(|id| &*Box::leak(id.into_boxed_str())).collect();
        let state = AppState::new(seeded.db, fuzz_config(), None);
        let app = runtime.block_on(async { router(state.clone()) });
        let mut words: Vec<&'static str> = Vec::new();
        words.extend(NAMESPACES);
        words.extend(ENTITIES);
        words.extend(RELATION_TYPES);
        words.extend(KEYS);
        words.extend(&memory_ids);
        words.extend([CURSOR, "person", "tea", "topic", "food", "mode", "absent"]);
        Harness {
            runtime,
            app,
            state,
            words,
            memory_ids,
            seed_lsn,
            _dir: seeded.dir,
        }
    }
}

fn harness() -> MutexGuard<'static, Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    let mut guard = HARNESS
        .get_or_init(|| Mutex::new(Harness::new()))
        .lock()
        // A panic (a finding) poisons the lock; the corpus test reports it, later inputs go on.
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.state.db.visible_lsn() > guard.seed_lsn + RESEED_AFTER_COMMITS {
        *guard = Harness::new();
    }
    guard
}

/// What a route's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    NewMemory,
    PatchMemory,
    Entities,
    Relations,
    Observations,
    EntityNames,
    ObservationDeletions,
    SearchNodes,
    OpenNodes,
    Search,
    SearchEntities,
    VectorSpace,
    KvValue,
    Transaction,
    CreateCursor,
    AdvanceCursor,
}

const ALL_BODY_KINDS: [BodyKind; 16] = [
    BodyKind::NewMemory,
    BodyKind::PatchMemory,
    BodyKind::Entities,
    BodyKind::Relations,
    BodyKind::Observations,
    BodyKind::EntityNames,
    BodyKind::ObservationDeletions,
    BodyKind::SearchNodes,
    BodyKind::OpenNodes,
    BodyKind::Search,
    BodyKind::SearchEntities,
    BodyKind::VectorSpace,
    BodyKind::KvValue,
    BodyKind::Transaction,
    BodyKind::CreateCursor,
    BodyKind::AdvanceCursor,
];

struct Route {
    template: &'static str,
    methods: &'static [Method],
    body: BodyKind,
    /// Methods of this route that commit, and the response field holding the commit's LSN.
    commits: &'static [(Method, &'static str)],
    /// A change-feed stream: `follow=false` is forced.
    stream: bool,
}

const fn route(template: &'static str, methods: &'static [Method], body: BodyKind, commits: &'static [(Method, &'static str)]) -> Route {
    Route {
        template,
        methods,
        body,
        commits,
        stream: false,
    }
}

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const PATCH: Method = Method::PATCH;
const DELETE: Method = Method::DELETE;
const POST_COMMITS: &[(Method, &str)] = &[(Method::POST, "lsn")];

const ROUTES: &[Route] = &[
    route("/v1/namespaces/{ns}/memories", &[POST, GET], BodyKind::NewMemory, POST_COMMITS),
    route(
        "/v1/namespaces/{ns}/memories/{id}",
        &[GET, PATCH, DELETE],
        BodyKind::PatchMemory,
        &[(Method::PATCH, "lsn"), (Method::DELETE, "lsn")],
    ),
    route("/v1/namespaces/{ns}/memories/{id}/history", &[GET], BodyKind::None, &[]),
    route(
        "/v1/namespaces/{ns}/graph/create_entities",
        &[POST],
        BodyKind::Entities,
        POST_COMMITS,
    ),
    route(
        "/v1/namespaces/{ns}/graph/create_relations",
        &[POST],
        BodyKind::Relations,
        POST_COMMITS,
    ),
    route(
        "/v1/namespaces/{ns}/graph/add_observations",
        &[POST],
        BodyKind::Observations,
        POST_COMMITS,
    ),
    route(
        "/v1/namespaces/{ns}/graph/delete_entities",
        &[POST],
        BodyKind::EntityNames,
        POST_COMMITS,
    ),
    route(
        "/v1/namespaces/{ns}/graph/delete_observations",
        &[POST],
        BodyKind::ObservationDeletions,
        POST_COMMITS,
    ),
    route(
        "/v1/namespaces/{ns}/graph/delete_relations",
        &[POST],
        BodyKind::Relations,
        POST_COMMITS,
    ),
    route("/v1/namespaces/{ns}/graph/read_graph", &[GET], BodyKind::None, &[]),
    route("/v1/namespaces/{ns}/graph/search_nodes", &[POST], BodyKind::SearchNodes, &[]),
    route("/v1/namespaces/{ns}/graph/open_nodes", &[POST], BodyKind::OpenNodes, &[]),
    route("/v1/namespaces/{ns}/graph/entity_history", &[GET], BodyKind::None, &[]),
    route("/v1/namespaces/{ns}/graph/relation_history", &[GET], BodyKind::None, &[]),
    route("/v1/namespaces/{ns}/search", &[POST], BodyKind::Search, &[]),
    route("/v1/namespaces/{ns}/graph/search_entities", &[POST], BodyKind::SearchEntities, &[]),
    route("/v1/namespaces/{ns}/graph/neighbours", &[GET], BodyKind::None, &[]),
    route(
        "/v1/namespaces/{ns}/vector_space",
        &[PUT],
        BodyKind::VectorSpace,
        &[(Method::PUT, "lsn")],
    ),
    route("/v1/namespaces/{ns}/kv", &[GET], BodyKind::None, &[]),
    route(
        "/v1/namespaces/{ns}/kv/{key}",
        &[GET, PUT, DELETE],
        BodyKind::KvValue,
        &[(Method::PUT, "lsn"), (Method::DELETE, "lsn")],
    ),
    route("/v1/namespaces/{ns}/kv_history/{key}", &[GET], BodyKind::None, &[]),
    route("/v1/transactions", &[POST], BodyKind::Transaction, POST_COMMITS),
    Route {
        stream: true,
        ..route("/v1/changes", &[GET], BodyKind::None, &[])
    },
    route("/v1/cursors", &[POST, GET], BodyKind::CreateCursor, &[(Method::POST, "commit_lsn")]),
    // DELETE answers with the cursor's last position, not a commit LSN: not checked as one.
    route("/v1/cursors/{name}", &[GET, DELETE], BodyKind::None, &[]),
    route(
        "/v1/cursors/{name}/advance",
        &[POST],
        BodyKind::AdvanceCursor,
        &[(Method::POST, "commit_lsn")],
    ),
    Route {
        stream: true,
        ..route("/v1/cursors/{name}/changes", &[GET], BodyKind::None, &[])
    },
    route("/v1/admin/checkpoint", &[POST], BodyKind::None, &[]),
    route("/v1/stats", &[GET], BodyKind::None, &[]),
    route("/metrics", &[GET], BodyKind::None, &[]),
    route("/healthz", &[GET], BodyKind::None, &[]),
    route("/openapi.json", &[GET], BodyKind::None, &[]),
];

const QUERY_PARAMS: &[&str] = &[
    "as_of",
    "durability",
    "prefix",
    "from",
    "to",
    "limit",
    "from_lsn",
    "namespace",
    "follow",
    "entity",
    "depth",
    "relation_types",
    "direction",
    "name",
    "relationType",
    "k",
];

/// Everything a request draws on besides the fuzzer's bytes.
struct Context<'a> {
    words: &'a [&'static str],
    memory_ids: &'a [&'static str],
    lsn: u64,
}

impl Context<'_> {
    fn word(&self, u: &mut Unstructured) -> Drawn<String> {
        text(u, self.words)
    }

    fn namespace(&self, u: &mut Unstructured) -> Drawn<String> {
        if u.ratio(7u8, 8)? {
            Ok(u.choose(&NAMESPACES)?.to_string())
        } else {
            self.word(u)
        }
    }

    fn entity(&self, u: &mut Unstructured) -> Drawn<String> {
        if u.ratio(3u8, 4)? {
            Ok(u.choose(&ENTITIES)?.to_string())
        } else {
            self.word(u)
        }
    }

    fn memory_id(&self, u: &mut Unstructured) -> Drawn<String> {
        if u.ratio(3u8, 4)? {
            Ok(u.choose(self.memory_ids)?.to_string())
        } else {
            self.word(u)
        }
    }

    fn key(&self, u: &mut Unstructured) -> Drawn<String> {
        if u.ratio(3u8, 4)? {
            Ok(u.choose(&KEYS)?.to_string())
        } else {
            self.word(u)
        }
    }

    fn strings(&self, u: &mut Unstructured, max: usize, one: fn(&Self, &mut Unstructured) -> Drawn<String>) -> Drawn<Value> {
        list(u, max, |u| Ok(Value::String(one(self, u)?)))
    }

    fn entity_json(&self, u: &mut Unstructured) -> Drawn<Value> {
        let fields = vec![
            ("name", Some(Value::String(self.entity(u)?))),
            ("entityType", Some(Value::String(self.word(u)?))),
            ("observations", optional(u, |u| self.strings(u, 3, Self::word))?),
        ];
        shaped(u, self.words, fields)
    }

    fn relation_json(&self, u: &mut Unstructured) -> Drawn<Value> {
        let fields = vec![
            ("from", Some(Value::String(self.entity(u)?))),
            ("to", Some(Value::String(self.entity(u)?))),
            ("relationType", Some(Value::String(self.relation_type(u)?))),
        ];
        shaped(u, self.words, fields)
    }

    fn relation_type(&self, u: &mut Unstructured) -> Drawn<String> {
        if u.ratio(3u8, 4)? {
            Ok(u.choose(&RELATION_TYPES)?.to_string())
        } else {
            self.word(u)
        }
    }

    fn observation_json(&self, u: &mut Unstructured, list_field: &'static str) -> Drawn<Value> {
        let fields = vec![
            ("entityName", Some(Value::String(self.entity(u)?))),
            (list_field, Some(self.strings(u, 3, Self::word)?)),
        ];
        shaped(u, self.words, fields)
    }

    fn metadata(&self, u: &mut Unstructured) -> Drawn<Value> {
        Ok(if u.ratio(7u8, 8)? {
            Value::Object(super::values::any_object(u, self.words, 1)?)
        } else {
            any_value(u, self.words, 1)?
        })
    }

    fn kv_value(&self, u: &mut Unstructured) -> Drawn<Value> {
        Ok(match u.int_in_range(0u8..=4)? {
            0..=2 => json!({ "json": any_value(u, self.words, 2)? }),
            3 => json!({ "hex": u.choose(&["00ff", "", "abc", "zz", "DEADBEEF"])? }),
            _ => any_value(u, self.words, 1)?,
        })
    }

    fn as_of(&self, u: &mut Unstructured) -> Drawn<Value> {
        as_of(u, self.words, self.lsn)
    }

    /// `as_of` as the HTTP API takes it in bodies: a string.
    fn as_of_text(&self, u: &mut Unstructured) -> Drawn<Value> {
        Ok(match self.as_of(u)? {
            Value::Number(n) => Value::String(n.to_string()),
            other => other,
        })
    }

    fn operation(&self, u: &mut Unstructured) -> Drawn<Value> {
        let namespace = Some(Value::String(self.namespace(u)?));
        let (op, mut fields): (&str, Vec<(&str, Option<Value>)>) = match u.int_in_range(0u8..=11)? {
            0 => (
                "insert_memory",
                vec![
                    ("text", Some(Value::String(self.word(u)?))),
                    ("embedding", optional(u, |u| vector(u, DIMENSION))?),
                    ("metadata", optional(u, |u| self.metadata(u))?),
                ],
            ),
            1 => (
                "update_memory",
                vec![
                    ("id", Some(Value::String(self.memory_id(u)?))),
                    ("text", optional(u, |u| Ok(Value::String(self.word(u)?)))?),
                    ("embedding", optional(u, |u| vector(u, DIMENSION))?),
                    ("metadata", optional(u, |u| self.metadata(u))?),
                ],
            ),
            2 => ("delete_memory", vec![("id", Some(Value::String(self.memory_id(u)?)))]),
            3 => ("create_entities", vec![("entities", Some(list(u, 3, |u| self.entity_json(u))?))]),
            4 => (
                "create_relations",
                vec![("relations", Some(list(u, 3, |u| self.relation_json(u))?))],
            ),
            5 => (
                "add_observations",
                vec![("observations", Some(list(u, 3, |u| self.observation_json(u, "contents"))?))],
            ),
            6 => ("delete_entities", vec![("entityNames", Some(self.strings(u, 3, Self::entity)?))]),
            7 => (
                "delete_observations",
                vec![("deletions", Some(list(u, 3, |u| self.observation_json(u, "observations"))?))],
            ),
            8 => (
                "delete_relations",
                vec![("relations", Some(list(u, 3, |u| self.relation_json(u))?))],
            ),
            9 => (
                "kv_put",
                vec![("key", Some(Value::String(self.key(u)?))), ("value", Some(self.kv_value(u)?))],
            ),
            10 => ("kv_delete", vec![("key", Some(Value::String(self.key(u)?)))]),
            _ => (
                "emit_event",
                vec![
                    ("topic", Some(Value::String(self.word(u)?))),
                    ("payload", Some(any_value(u, self.words, 2)?)),
                ],
            ),
        };
        fields.insert(0, ("op", Some(Value::String(op.to_string()))));
        fields.insert(1, ("namespace", namespace));
        shaped(u, self.words, fields)
    }

    fn precondition(&self, u: &mut Unstructured) -> Drawn<Value> {
        let version = if u.ratio(1u8, 3)? {
            Value::String("absent".into())
        } else {
            number(u, self.lsn)?
        };
        let (kind, field, name) = match u.int_in_range(0u8..=2)? {
            0 => ("memory", "id", self.memory_id(u)?),
            1 => ("entity", "name", self.entity(u)?),
            _ => ("kv", "key", self.key(u)?),
        };
        let fields = vec![
            ("kind", Some(Value::String(kind.into()))),
            ("namespace", Some(Value::String(self.namespace(u)?))),
            (field, Some(Value::String(name))),
            ("version", Some(version)),
        ];
        shaped(u, self.words, fields)
    }

    fn durability(&self, u: &mut Unstructured) -> Drawn<String> {
        Ok(match u.int_in_range(0u8..=5)? {
            0..=2 => "always".into(),
            3 | 4 => "buffered".into(),
            _ => self.word(u)?,
        })
    }

    fn body_json(&self, u: &mut Unstructured, kind: BodyKind) -> Drawn<Value> {
        let w = self.words;
        match kind {
            BodyKind::None => any_value(u, w, 2),
            BodyKind::NewMemory => {
                let fields = vec![
                    ("text", Some(Value::String(self.word(u)?))),
                    ("embedding", optional(u, |u| vector(u, DIMENSION))?),
                    ("metadata", optional(u, |u| self.metadata(u))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::PatchMemory => {
                let fields = vec![
                    ("text", optional(u, |u| Ok(Value::String(self.word(u)?)))?),
                    ("embedding", optional(u, |u| vector(u, DIMENSION))?),
                    ("metadata", optional(u, |u| self.metadata(u))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::Entities => {
                let fields = vec![("entities", Some(list(u, 4, |u| self.entity_json(u))?))];
                shaped(u, w, fields)
            }
            BodyKind::Relations => {
                let fields = vec![("relations", Some(list(u, 4, |u| self.relation_json(u))?))];
                shaped(u, w, fields)
            }
            BodyKind::Observations => {
                let fields = vec![("observations", Some(list(u, 4, |u| self.observation_json(u, "contents"))?))];
                shaped(u, w, fields)
            }
            BodyKind::EntityNames => {
                let fields = vec![("entityNames", Some(self.strings(u, 4, Self::entity)?))];
                shaped(u, w, fields)
            }
            BodyKind::ObservationDeletions => {
                let fields = vec![("deletions", Some(list(u, 4, |u| self.observation_json(u, "observations"))?))];
                shaped(u, w, fields)
            }
            BodyKind::SearchNodes => {
                let fields = vec![
                    ("query", Some(Value::String(self.word(u)?))),
                    ("as_of", optional(u, |u| self.as_of_text(u))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::OpenNodes => {
                let fields = vec![
                    ("names", Some(self.strings(u, 4, Self::entity)?)),
                    ("as_of", optional(u, |u| self.as_of_text(u))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::Search => {
                let fields = vec![
                    ("query", optional(u, |u| Ok(Value::String(self.word(u)?)))?),
                    ("vector", optional(u, |u| vector(u, DIMENSION))?),
                    ("k", optional(u, |u| number(u, 0))?),
                    ("filter", optional(u, |u| self.metadata(u))?),
                    (
                        "mode",
                        optional(u, |u| {
                            Ok(Value::String(u.choose(&["hybrid", "vector", "keyword", "fuzzy"])?.to_string()))
                        })?,
                    ),
                    ("ef_search", optional(u, |u| number(u, 0))?),
                    ("as_of", optional(u, |u| self.as_of_text(u))?),
                    ("min_lsn", optional(u, |u| number(u, self.lsn))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::SearchEntities => {
                let fields = vec![
                    ("query", Some(Value::String(self.word(u)?))),
                    ("k", optional(u, |u| number(u, 0))?),
                    ("as_of", optional(u, |u| self.as_of_text(u))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::VectorSpace => {
                let fields = vec![
                    ("dimension", Some(number(u, DIMENSION as u64)?)),
                    (
                        "metric",
                        Some(Value::String(u.choose(&["cosine", "dot", "l2", "hamming"])?.to_string())),
                    ),
                ];
                shaped(u, w, fields)
            }
            BodyKind::KvValue => self.kv_value(u),
            BodyKind::Transaction => {
                let fields = vec![
                    ("operations", Some(list(u, 5, |u| self.operation(u))?)),
                    ("preconditions", optional(u, |u| list(u, 2, |u| self.precondition(u)))?),
                    ("durability", optional(u, |u| Ok(Value::String(self.durability(u)?)))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::CreateCursor => {
                let fields = vec![
                    ("name", Some(Value::String(self.word(u)?))),
                    ("lsn", optional(u, |u| number(u, self.lsn))?),
                ];
                shaped(u, w, fields)
            }
            BodyKind::AdvanceCursor => {
                let fields = vec![("lsn", Some(number(u, self.lsn)?))];
                shaped(u, w, fields)
            }
        }
    }

    /// A path segment: usually percent-encoded (any bytes reach the router), sometimes raw.
    fn segment(&self, u: &mut Unstructured, value: String) -> Drawn<String> {
        Ok(if u.ratio(1u8, 6)? {
            value
        } else {
            percent_encode(value.as_bytes())
        })
    }

    fn query_value(&self, u: &mut Unstructured, name: &str) -> Drawn<String> {
        Ok(match name {
            "as_of" => match self.as_of(u)? {
                Value::String(s) => s,
                other => other.to_string(),
            },
            "durability" => self.durability(u)?,
            "prefix" | "from" | "to" if u.arbitrary()? => self.key(u)?,
            "from" | "to" | "entity" | "name" => self.entity(u)?,
            "limit" | "from_lsn" | "depth" | "k" => number(u, self.lsn)?.to_string(),
            "namespace" => self.namespace(u)?,
            "follow" => u.choose(&["true", "false", "1", "maybe"])?.to_string(),
            "relation_types" | "relationType" => self.relation_type(u)?,
            "direction" => u.choose(&["in", "out", "both", "sideways"])?.to_string(),
            _ => self.word(u)?,
        })
    }
}

/// A request drawn from the input, and what the checks need to know about it.
struct Drafted {
    request: Request<Body>,
    method: Method,
    /// The response field holding the commit LSN, if the route commits with this method.
    commit_field: Option<&'static str>,
    stream: bool,
    path: String,
}

fn draft(u: &mut Unstructured, cx: &Context) -> Drawn<Option<Drafted>> {
    let made_up = u.ratio(1u8, 24)?;
    let route = u.choose(ROUTES)?;
    let method = if u.ratio(1u8, 10)? {
        u.choose(&[
            GET,
            POST,
            PUT,
            PATCH,
            DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::from_bytes(b"PURGE").expect("a token"),
        ])?
        .clone()
    } else {
        u.choose(route.methods)?.clone()
    };
    let mut path = if made_up {
        format!("/v1/{}", percent_encode(cx.word(u)?.as_bytes()))
    } else {
        route.template.to_string()
    };
    if path.contains("{ns}") {
        let ns = cx.namespace(u)?;
        path = path.replace("{ns}", &cx.segment(u, ns)?);
    }
    if path.contains("{id}") {
        let id = cx.memory_id(u)?;
        path = path.replace("{id}", &cx.segment(u, id)?);
    }
    if path.contains("{key}") {
        // The key is a catch-all segment: a raw '/' inside stays part of the key.
        let key = cx.key(u)?;
        path = path.replace("{key}", &cx.segment(u, key)?);
    }
    if path.contains("{name}") {
        let name = if u.ratio(3u8, 4)? { CURSOR.to_string() } else { cx.word(u)? };
        path = path.replace("{name}", &cx.segment(u, name)?);
    }
    let stream = route.stream && !made_up;
    let mut query: Vec<String> = Vec::new();
    for _ in 0..u.int_in_range(0u8..=3)? {
        let name = *u.choose(QUERY_PARAMS)?;
        if stream && name == "follow" {
            continue;
        }
        let value = cx.query_value(u, name)?;
        query.push(format!("{name}={}", percent_encode(value.as_bytes())));
    }
    if u.ratio(1u8, 16)? {
        // A raw query string: whatever the URI parser lets through.
        query.push(cx.word(u)?);
    }
    if stream {
        query.push("follow=false".into());
    }
    let uri = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let mut builder = Request::builder().method(method.clone()).uri(&uri);

    let authorization: Option<Vec<u8>> = match u.int_in_range(0u8..=11)? {
        0..=4 => Some(format!("Bearer {ADMIN_KEY}").into_bytes()),
        5 => Some(format!("Bearer {READ_ONLY_KEY}").into_bytes()),
        6 | 7 => Some(format!("Bearer {ALPHA_KEY}").into_bytes()),
        8 => None,
        9 => Some(format!("Bearer {}", cx.word(u)?).into_bytes()),
        10 => Some(format!("Basic {ADMIN_KEY}").into_bytes()),
        _ => Some(u.arbitrary::<Vec<u8>>()?),
    };
    if let Some(value) = authorization.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    if u.ratio(1u8, 6)? {
        let accept = *u.choose(&[
            "text/event-stream",
            "application/json",
            "*/*",
            "application/x-ndjson, text/event-stream",
        ])?;
        builder = builder.header(header::ACCEPT, accept);
    }

    let wants_body = route.body != BodyKind::None && !made_up;
    let body: Vec<u8> = match u.int_in_range(0u8..=15)? {
        0..=10 if wants_body => serde_json::to_vec(&cx.body_json(u, route.body)?).expect("JSON serialises"),
        0..=10 => Vec::new(),
        11 => {
            let kind = *u.choose(&ALL_BODY_KINDS)?;
            serde_json::to_vec(&cx.body_json(u, kind)?).expect("JSON serialises")
        }
        12 => {
            let mut text = serde_json::to_vec(&cx.body_json(u, route.body)?).expect("JSON serialises");
            let cut = u.int_in_range(0..=text.len())?;
            text.truncate(cut);
            text
        }
        13 => u.arbitrary::<Vec<u8>>()?,
        14 => vec![b' '; u.int_in_range(0usize..=70_000)?],
        _ => Vec::new(),
    };
    let content_type = match u.int_in_range(0u8..=9)? {
        0..=6 if !body.is_empty() || wants_body => Some("application/json"),
        0..=6 => None,
        7 => Some("application/json; charset=utf-8"),
        8 => Some("text/plain"),
        _ => None,
    };
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let Ok(request) = builder.body(Body::from(body)) else {
        // The URI or method did not parse: no such request can reach the server.
        return Ok(None);
    };
    let commit_field = if made_up {
        None
    } else {
        route.commits.iter().find(|(m, _)| *m == method).map(|(_, field)| *field)
    };
    Ok(Some(Drafted {
        request,
        method,
        commit_field,
        stream,
        path,
    }))
}

/// Sends one fuzzed request to the server and checks the answer (module docs). Returns whether
/// the request was accepted (2xx); panics on a violated property.
pub fn http_request(data: &[u8]) -> bool {
    let mut guard = harness();
    let harness = &mut *guard;
    let db = harness.state.db.clone();
    let before = db.visible_lsn();
    let cx = Context {
        words: &harness.words,
        memory_ids: &harness.memory_ids,
        lsn: before,
    };
    let drafted = if data.starts_with(LITERAL_PREFIX) {
        literal(data)
    } else {
        draft(&mut Unstructured::new(data), &cx).ok().flatten()
    };
    let Some(drafted) = drafted else {
        return false;
    };
    let Drafted {
        request,
        method,
        commit_field,
        stream,
        path,
    } = drafted;
    let what = format!("{method} {}", request.uri());
    let app = harness.app.clone();
    let answer = harness.runtime.block_on(async move {
        tokio::time::timeout(REQUEST_TIMEOUT, async move {
            let response = match app.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await;
            (parts, body)
        })
        .await
    });
    let after = db.visible_lsn();
    let Ok((parts, body)) = answer else {
        panic!("{what}: no complete answer within {REQUEST_TIMEOUT:?}");
    };
    let body = body.unwrap_or_else(|e| panic!("{what}: the response body failed: {e}"));
    let status = parts.status;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let shown = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
    let code = json.as_ref().and_then(|j| j.get("code")).and_then(Value::as_str);

    if status.is_server_error() {
        // The one documented 5xx reachable by input: the search index did not catch up with
        // `min_lsn` within the bounded wait ("retry later").
        let index_behind = status == StatusCode::SERVICE_UNAVAILABLE && code == Some("index_timeout");
        assert!(index_behind, "{what}: server error {status}: {shown}");
    }
    if (status.is_client_error() || status.is_server_error()) && method != Method::HEAD {
        let message = json.as_ref().and_then(|j| j.get("message")).and_then(Value::as_str);
        assert!(
            code.is_some_and(|c| !c.is_empty()) && message.is_some(),
            "{what}: {status} without a JSON {{code, message}} body: {shown}"
        );
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {status} error as {content_type:?}"
        );
    }
    if !status.is_success() {
        assert_eq!(before, after, "{what}: refused with {status} ({shown}) but the visible LSN moved");
        return false;
    }
    if method == Method::HEAD {
        return true;
    }
    if content_type.starts_with("application/json") {
        assert!(json.is_some(), "{what}: {status} with a body that is not JSON: {shown}");
    }
    if stream && content_type.starts_with("application/x-ndjson") {
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let event: Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("{what}: a feed line is not JSON ({e}): {}", String::from_utf8_lossy(line)));
            assert!(event.get("code").is_none(), "{what}: the feed ended with an error: {event}");
            assert!(
                event.get("lsn").and_then(Value::as_u64).is_some(),
                "{what}: a feed event without an LSN: {event}"
            );
        }
    }
    if let Some(field) = commit_field {
        let lsn = json
            .as_ref()
            .and_then(|j| j.get(field))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{what}: a {status} write without `{field}`: {shown}"));
        assert!(
            lsn > 0 && lsn <= after,
            "{what} ({path}): acknowledged at LSN {lsn}, but the visible LSN is {after}"
        );
    }
    true
}

/// Inputs that start with this are a request written out (seeds taken from the integration
/// tests, which the fuzzer then mutates): `REQ <METHOD> <URI>`, header lines `name: value`, an
/// empty line, the body. Anything else is drawn structure-aware.
pub const LITERAL_PREFIX: &[u8] = b"REQ ";

/// The route a path belongs to: templates' `{..}` match one segment, `{key}` the rest.
fn route_of(path: &str) -> Option<&'static Route> {
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES.iter().find(|route| {
        let template: Vec<&str> = route.template.split('/').collect();
        if template.last() == Some(&"{key}") {
            segments.len() >= template.len()
                && template[..template.len() - 1]
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        } else {
            segments.len() == template.len() && template.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
        }
    })
}

fn literal(data: &[u8]) -> Option<Drafted> {
    let rest = data.strip_prefix(LITERAL_PREFIX)?;
    let head_end = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(rest.len());
    let head = std::str::from_utf8(&rest[..head_end]).ok()?;
    let body = rest.get(head_end + 2..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let route = route_of(path);
    let stream = route.is_some_and(|r| r.stream);
    let uri = if stream {
        let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("follow=")).collect();
        pairs.push("follow=false");
        format!("{path}?{}", pairs.join("&"))
    } else {
        uri.to_string()
    };
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(name.trim(), value.trim());
    }
    let request = builder.body(Body::from(body)).ok()?;
    let commit_field = route.and_then(|r| r.commits.iter().find(|(m, _)| *m == method).map(|(_, field)| *field));
    Some(Drafted {
        request,
        method,
        commit_field,
        stream,
        path: path.to_string(),
    })
}

/// A request written out in the literal input form, with the admin key unless `headers` holds
/// an Authorization header.
pub fn literal_input(method: &str, uri: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Vec<u8> {
    let mut text = format!("REQ {method} {uri}\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization")) {
        text.push_str(&format!("authorization: Bearer {ADMIN_KEY}\n"));
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\n"));
    }
    if body.is_some() {
        text.push_str("content-type: application/json\n");
    }
    text.push('\n');
    let mut bytes = text.into_bytes();
    if let Some(body) = body {
        bytes.extend(serde_json::to_vec(body).expect("JSON serialises"));
    }
    bytes
}

/// Seed inputs in the literal form, taken from the requests of engram-server's integration
/// tests (tests/integration/api.rs, bad_input.rs, search.rs, feed.rs, auth.rs), moved onto the seeded
/// namespaces; `{id}` is a seeded memory id (the fuzzer finds the others by mutation).
pub fn seed_inputs() -> Vec<Vec<u8>> {
    let id = {
        let guard = harness();
        guard.memory_ids[0]
    };
    let m = "/v1/namespaces/alpha/memories";
    let g = "/v1/namespaces/alpha/graph";
    let kv = "/v1/namespaces/alpha/kv";
    let raw = |method: &str, uri: &str, body: &str| {
        let mut input = literal_input(method, uri, &[("content-type", "application/json")], None);
        input.extend_from_slice(body.as_bytes());
        input
    };
    let j = |method: &str, uri: &str, body: Value| literal_input(method, uri, &[], Some(&body));
    let get = |uri: &str| literal_input("GET", uri, &[], None);
    vec![
        j(
            "POST",
            m,
            json!({"text": "the user prefers tea", "metadata": {"source": "chat"}, "embedding": [0.5, -1.0, 2.0]}),
        ),
        j("POST", m, json!({"text": "x", "embedding": [1.0, 0.0]})),
        get(m),
        get(&format!("{m}/{id}")),
        get(&format!("{m}/{id}?as_of=2026-11-25T14:00:00Z")),
        get(&format!("{m}/{id}/history")),
        j(
            "PATCH",
            &format!("{m}/{id}?durability=buffered"),
            json!({"text": "updated", "metadata": {"v": 2}}),
        ),
        literal_input("DELETE", &format!("{m}/{id}"), &[], None),
        j(
            "POST",
            &format!("{g}/create_entities"),
            json!({"entities": [{"name": "E", "entityType": "t", "observations": ["o"]}]}),
        ),
        j(
            "POST",
            &format!("{g}/create_relations"),
            json!({"relations": [{"from": "Alice", "to": "Carol", "relationType": "knows"}]}),
        ),
        j(
            "POST",
            &format!("{g}/add_observations"),
            json!({"observations": [{"entityName": "Alice", "contents": ["likes rust"]}]}),
        ),
        j(
            "POST",
            &format!("{g}/delete_observations"),
            json!({"deletions": [{"entityName": "Alice", "observations": ["likes tea"]}]}),
        ),
        j(
            "POST",
            &format!("{g}/delete_relations"),
            json!({"relations": [{"from": "Alice", "to": "Bob", "relationType": "knows"}]}),
        ),
        j("POST", &format!("{g}/delete_entities"), json!({"entityNames": ["Carol"]})),
        get(&format!("{g}/read_graph?as_of=3")),
        j("POST", &format!("{g}/search_nodes"), json!({"query": "tea"})),
        j("POST", &format!("{g}/open_nodes"), json!({"names": ["Alice", "Nobody"]})),
        get(&format!("{g}/entity_history?name=Alice")),
        get(&format!("{g}/relation_history?from=Alice&to=Bob&relationType=knows")),
        get(&format!("{g}/neighbours?entity=Alice&direction=out&depth=2")),
        j("POST", &format!("{g}/search_entities"), json!({"query": "Alice", "k": 3})),
        j("POST", "/v1/namespaces/alpha/search", json!({"query": "tea", "k": 5})),
        j(
            "POST",
            "/v1/namespaces/alpha/search",
            json!({"vector": [1.0, 0.0, 0.0], "k": 5, "ef_search": 0}),
        ),
        j(
            "POST",
            "/v1/namespaces/alpha/search",
            json!({"vector": [1e39, 0.0, 0.0], "k": 5, "mode": "hybrid", "query": "tea", "filter": {"topic": "food"}, "min_lsn": 1}),
        ),
        j(
            "PUT",
            "/v1/namespaces/gamma/vector_space",
            json!({"dimension": 3, "metric": "cosine"}),
        ),
        j("PUT", &format!("{kv}/threads/1/step"), json!({"json": {"step": 1}})),
        j("PUT", &format!("{kv}/blob"), json!({"hex": "00ff"})),
        get(&format!("{kv}?prefix=config/")),
        get(&format!("{kv}?from=blob&to=zzz&limit=2")),
        get(&format!("{kv}/counter?as_of=2")),
        get("/v1/namespaces/alpha/kv_history/config/mode"),
        literal_input("DELETE", &format!("{kv}/counter"), &[], None),
        j(
            "POST",
            "/v1/transactions",
            json!({"operations": [
                {"op": "insert_memory", "namespace": "alpha", "text": "hello"},
                {"op": "create_entities", "namespace": "beta", "entities": [{"name": "E", "entityType": "t", "observations": []}]},
                {"op": "kv_put", "namespace": "beta", "key": "counter", "value": {"json": 1}},
                {"op": "emit_event", "namespace": "beta", "topic": "counted", "payload": {"n": 1}}
            ]}),
        ),
        j(
            "POST",
            "/v1/transactions",
            json!({"operations": [{"op": "kv_put", "namespace": "beta", "key": "fresh", "value": {"json": true}}],
                   "preconditions": [{"kind": "kv", "namespace": "beta", "key": "fresh", "version": "absent"}]}),
        ),
        j(
            "POST",
            "/v1/transactions",
            json!({"operations": [
                {"op": "kv_put", "namespace": "alpha", "key": "counter", "value": {"json": 100}},
                {"op": "update_memory", "namespace": "alpha", "id": id, "text": "x", "embedding": [1.0, 2.0]},
                {"op": "delete_memory", "namespace": "alpha", "id": id},
                {"op": "add_observations", "namespace": "alpha", "observations": [{"entityName": "Bob", "contents": ["x"]}]},
                {"op": "delete_entities", "namespace": "alpha", "entityNames": ["Bob"]},
                {"op": "delete_observations", "namespace": "alpha", "deletions": [{"entityName": "Alice", "observations": ["x"]}]},
                {"op": "create_relations", "namespace": "alpha", "relations": [{"from": "Alice", "to": "Bob", "relationType": "r"}]},
                {"op": "delete_relations", "namespace": "alpha", "relations": [{"from": "Alice", "to": "Bob", "relationType": "r"}]},
                {"op": "kv_delete", "namespace": "alpha", "key": "blob"}
            ], "preconditions": [{"kind": "memory", "namespace": "alpha", "id": id, "version": 2}], "durability": "buffered"}),
        ),
        get("/v1/changes?from_lsn=0"),
        literal_input("GET", "/v1/changes?namespace=alpha", &[("accept", "text/event-stream")], None),
        j("POST", "/v1/cursors", json!({"name": "consumer", "lsn": 1})),
        get("/v1/cursors"),
        get("/v1/cursors/seed-cursor"),
        j("POST", "/v1/cursors/seed-cursor/advance", json!({"lsn": 2})),
        get("/v1/cursors/seed-cursor/changes"),
        literal_input("DELETE", "/v1/cursors/consumer", &[], None),
        literal_input("POST", "/v1/admin/checkpoint", &[], None),
        get("/v1/stats"),
        get("/metrics"),
        get("/healthz"),
        get("/openapi.json"),
        // Refusals (bad_input.rs, auth.rs).
        raw("POST", m, "{\"text\": "),
        raw("POST", m, "{\"text\": \"x\", \"embedding\": [NaN, 1.0]}"),
        raw("POST", m, "{\"txt\": \"typo\"}"),
        raw("POST", "/v1/namespaces/a%2Fb/memories", "{\"text\": \"x\"}"),
        raw("POST", "/v1/transactions", "{\"operations\": [{\"op\": \"drop_table\"}]}"),
        get("/v1/namespaces/alpha/kv?prefix=a&from=b"),
        get("/v1/changes?from_lsn=abc"),
        literal_input("DELETE", "/v1/transactions", &[], None),
        literal_input(
            "PUT",
            &format!("{kv}/k"),
            &[("authorization", &format!("Bearer {READ_ONLY_KEY}"))],
            Some(&json!({"json": 1})),
        ),
        literal_input(
            "PUT",
            "/v1/namespaces/beta/kv/k",
            &[("authorization", &format!("Bearer {ALPHA_KEY}"))],
            Some(&json!({"json": 1})),
        ),
        literal_input("GET", "/v1/changes", &[("authorization", &format!("Bearer {ALPHA_KEY}"))], None),
        literal_input("POST", "/v1/admin/checkpoint", &[("authorization", "Bearer not-a-key")], None),
    ]
}
