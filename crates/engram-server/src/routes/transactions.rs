//! `POST /v1/transactions`: operations on memories, the graph, key/value and events, in any
//! namespaces, committed atomically (all or none), with optional preconditions for optimistic
//! concurrency.
//!
//! A precondition is checked on the transaction's snapshot. For an item the transaction also
//! writes (the usual compare-and-set), first-committer-wins makes it exact: if anyone changed the
//! item after the snapshot, the commit conflicts. For an item it only checks, a change committed
//! between the snapshot and the commit is not seen (snapshot isolation, not serializability).

use super::memories::embedding_for;
use super::{check_batch, check_dimension};
use crate::auth::Caller;
use crate::dto::{EmbeddingSource, EntityBody, KvValueBody, RelationBody};
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::state::{AppState, Durability};
use axum::extract::State;
use axum::http::StatusCode;
use engram_core::{Entity, GraphReads, KvReads, KvValue, Lsn, MemoryPatch, MemoryReads, NewMemory, Relation, Transaction};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    InsertMemory {
        namespace: String,
        text: String,
        embedding: Option<Vec<f32>>,
        #[schema(value_type = Object)]
        metadata: Option<serde_json::Value>,
    },
    UpdateMemory {
        namespace: String,
        id: String,
        text: Option<String>,
        embedding: Option<Vec<f32>>,
        #[schema(value_type = Object)]
        metadata: Option<serde_json::Value>,
    },
    DeleteMemory {
        namespace: String,
        id: String,
    },
    CreateEntities {
        namespace: String,
        entities: Vec<EntityBody>,
    },
    CreateRelations {
        namespace: String,
        relations: Vec<RelationBody>,
    },
    AddObservations {
        namespace: String,
        observations: Vec<super::graph::ObservationAddition>,
    },
    DeleteEntities {
        namespace: String,
        #[serde(rename = "entityNames")]
        entity_names: Vec<String>,
    },
    DeleteObservations {
        namespace: String,
        deletions: Vec<super::graph::ObservationDeletion>,
    },
    DeleteRelations {
        namespace: String,
        relations: Vec<RelationBody>,
    },
    KvPut {
        namespace: String,
        key: String,
        value: KvValueBody,
    },
    KvDelete {
        namespace: String,
        key: String,
    },
    /// An application event: in the change feed if and only if the transaction commits.
    EmitEvent {
        namespace: String,
        topic: String,
        #[schema(value_type = Object)]
        payload: serde_json::Value,
    },
}

impl Operation {
    fn namespace(&self) -> &str {
        match self {
            Operation::InsertMemory { namespace, .. }
            | Operation::UpdateMemory { namespace, .. }
            | Operation::DeleteMemory { namespace, .. }
            | Operation::CreateEntities { namespace, .. }
            | Operation::CreateRelations { namespace, .. }
            | Operation::AddObservations { namespace, .. }
            | Operation::DeleteEntities { namespace, .. }
            | Operation::DeleteObservations { namespace, .. }
            | Operation::DeleteRelations { namespace, .. }
            | Operation::KvPut { namespace, .. }
            | Operation::KvDelete { namespace, .. }
            | Operation::EmitEvent { namespace, .. } => namespace,
        }
    }

    /// Items inside one operation, counted against the batch limit.
    fn items(&self) -> usize {
        match self {
            Operation::CreateEntities { entities, .. } => entities.len(),
            Operation::CreateRelations { relations, .. } | Operation::DeleteRelations { relations, .. } => relations.len(),
            Operation::AddObservations { observations, .. } => observations.len(),
            Operation::DeleteEntities { entity_names, .. } => entity_names.len(),
            Operation::DeleteObservations { deletions, .. } => deletions.len(),
            _ => 1,
        }
    }
}

/// The item a precondition is about.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PreconditionTarget {
    Memory {
        namespace: String,
        id: String,
        version: Expected,
    },
    Entity {
        namespace: String,
        name: String,
        version: Expected,
    },
    Kv {
        namespace: String,
        key: String,
        version: Expected,
    },
}

/// The version an item must be at: an LSN (the `version` reads return), or `"absent"`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum Expected {
    Lsn(Lsn),
    Absent(AbsentTag),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AbsentTag {
    Absent,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub preconditions: Vec<PreconditionTarget>,
    #[serde(default)]
    pub durability: Durability,
}

/// What one operation produced, in request order.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OperationResult {
    InsertMemory {
        id: String,
        embedding: EmbeddingSource,
    },
    CreateEntities {
        created: Vec<EntityBody>,
    },
    CreateRelations {
        created: Vec<RelationBody>,
    },
    AddObservations {
        results: Vec<super::graph::AddedObservationsBody>,
    },
    KvDelete {
        existed: bool,
    },
    /// Operations that return nothing but success.
    Done,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TransactionResult {
    pub lsn: Lsn,
    pub results: Vec<OperationResult>,
}

fn precondition_failed(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "precondition_failed", message)
}

fn check_precondition(txn: &Transaction, p: &PreconditionTarget) -> ApiResult<()> {
    let (what, history, expected) = match p {
        PreconditionTarget::Memory { namespace, id, version } => (format!("memory {id:?}"), txn.memory_history(namespace, id)?, *version),
        PreconditionTarget::Entity { namespace, name, version } => {
            (format!("entity {name:?}"), txn.entity_history(namespace, name)?, *version)
        }
        PreconditionTarget::Kv { namespace, key, version } => {
            (format!("key {key:?}"), txn.kv_history(namespace, key.as_bytes())?, *version)
        }
    };
    // The transaction's own earlier writes are not in history (it reads the snapshot): the
    // precondition is about the state before this transaction.
    let current = history.last().filter(|v| v.value.is_some()).map(|v| v.lsn);
    match (expected, current) {
        (Expected::Absent(_), None) => Ok(()),
        (Expected::Absent(_), Some(lsn)) => Err(precondition_failed(format!("{what} exists (version {lsn}); expected absent"))),
        (Expected::Lsn(want), Some(lsn)) if want == lsn => Ok(()),
        (Expected::Lsn(want), Some(lsn)) => Err(precondition_failed(format!("{what} is at version {lsn}; expected {want}"))),
        (Expected::Lsn(want), None) => Err(precondition_failed(format!("{what} is absent; expected version {want}"))),
    }
}

fn precondition_namespace(p: &PreconditionTarget) -> &str {
    match p {
        PreconditionTarget::Memory { namespace, .. }
        | PreconditionTarget::Entity { namespace, .. }
        | PreconditionTarget::Kv { namespace, .. } => namespace,
    }
}

/// Applies one operation; embeddings were resolved beforehand (`embeddings[i]`).
fn apply(txn: &mut Transaction, op: &Operation, embedding: Option<(Option<Vec<f32>>, EmbeddingSource)>) -> ApiResult<OperationResult> {
    Ok(match op {
        Operation::InsertMemory {
            namespace, text, metadata, ..
        } => {
            let (embedding, source) = embedding.unwrap_or((None, EmbeddingSource::None));
            let id = txn.insert_memory(
                namespace,
                NewMemory {
                    text: text.clone(),
                    embedding,
                    metadata: metadata.clone().unwrap_or(serde_json::Value::Null),
                },
            )?;
            OperationResult::InsertMemory { id, embedding: source }
        }
        Operation::UpdateMemory {
            namespace,
            id,
            text,
            metadata,
            ..
        } => {
            let embedding = embedding.and_then(|(e, _)| e);
            txn.update_memory(
                namespace,
                id,
                MemoryPatch {
                    text: text.clone(),
                    embedding,
                    metadata: metadata.clone(),
                },
            )?;
            OperationResult::Done
        }
        Operation::DeleteMemory { namespace, id } => {
            txn.delete_memory(namespace, id)?;
            OperationResult::Done
        }
        Operation::CreateEntities { namespace, entities } => {
            let entities: Vec<Entity> = entities.iter().cloned().map(Into::into).collect();
            OperationResult::CreateEntities {
                created: txn.create_entities(namespace, &entities)?.into_iter().map(Into::into).collect(),
            }
        }
        Operation::CreateRelations { namespace, relations } => {
            let relations: Vec<Relation> = relations.iter().cloned().map(Into::into).collect();
            OperationResult::CreateRelations {
                created: txn.create_relations(namespace, &relations)?.into_iter().map(Into::into).collect(),
            }
        }
        Operation::AddObservations { namespace, observations } => {
            let additions: Vec<(String, Vec<String>)> = observations.iter().map(|o| (o.entity_name.clone(), o.contents.clone())).collect();
            OperationResult::AddObservations {
                results: txn
                    .add_observations(namespace, &additions)?
                    .into_iter()
                    .map(|r| super::graph::AddedObservationsBody {
                        entity_name: r.entity_name,
                        added_observations: r.added_observations,
                    })
                    .collect(),
            }
        }
        Operation::DeleteEntities { namespace, entity_names } => {
            txn.delete_entities(namespace, entity_names)?;
            OperationResult::Done
        }
        Operation::DeleteObservations { namespace, deletions } => {
            let deletions: Vec<(String, Vec<String>)> = deletions.iter().map(|d| (d.entity_name.clone(), d.observations.clone())).collect();
            txn.delete_observations(namespace, &deletions)?;
            OperationResult::Done
        }
        Operation::DeleteRelations { namespace, relations } => {
            let relations: Vec<Relation> = relations.iter().cloned().map(Into::into).collect();
            txn.delete_relations(namespace, &relations)?;
            OperationResult::Done
        }
        Operation::KvPut { namespace, key, value } => {
            let value: KvValue = value.clone().into_value()?;
            txn.kv_put(namespace, key.as_bytes(), value)?;
            OperationResult::Done
        }
        Operation::KvDelete { namespace, key } => OperationResult::KvDelete {
            existed: txn.kv_delete(namespace, key.as_bytes())?,
        },
        Operation::EmitEvent { namespace, topic, payload } => {
            txn.emit_event(namespace, topic, payload.clone())?;
            OperationResult::Done
        }
    })
}

/// Names the operation that failed, so a client can tell which of many was refused.
fn at_operation(index: usize, mut e: ApiError) -> ApiError {
    e.message = format!("operations[{index}]: {}", e.message);
    e
}

#[utoipa::path(post, path = "/v1/transactions", tag = "transactions",
    request_body = TransactionBody,
    responses(
        (status = 200, body = TransactionResult, description = "every operation committed at `lsn`"),
        (status = 400, body = ErrorBody, description = "an operation was refused: nothing committed"),
        (status = 409, body = ErrorBody, description = "a precondition failed, or a write-write conflict persisted: nothing committed")))]
pub async fn transaction(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TransactionBody>,
) -> ApiResult<ApiJson<TransactionResult>> {
    let limits = &state.config.limits;
    if body.operations.is_empty() {
        return Err(ApiError::bad_request(
            "empty_transaction",
            "a transaction needs at least one operation",
        ));
    }
    check_batch(limits, "operations", body.operations.len())?;
    check_batch(limits, "preconditions", body.preconditions.len())?;
    for (i, op) in body.operations.iter().enumerate() {
        caller.write(op.namespace()).map_err(|e| at_operation(i, e))?;
        check_batch(limits, "items", op.items()).map_err(|e| at_operation(i, e))?;
    }
    for p in &body.preconditions {
        caller.read(precondition_namespace(p))?;
    }
    // Embeddings are computed before the transaction starts: a network call must not hold a
    // snapshot open, and a failure of the embedder commits nothing.
    let mut embeddings = Vec::with_capacity(body.operations.len());
    for (i, op) in body.operations.iter().enumerate() {
        let resolved = match op {
            Operation::InsertMemory { text, embedding, .. } => {
                check_dimension(limits, embedding.as_ref()).map_err(|e| at_operation(i, e))?;
                Some(embedding_for(&state, text, embedding.clone()).await?)
            }
            Operation::UpdateMemory { text, embedding, .. } => {
                check_dimension(limits, embedding.as_ref()).map_err(|e| at_operation(i, e))?;
                match (text, embedding) {
                    (Some(text), None) => Some(embedding_for(&state, text, None).await?),
                    (_, given) => Some((given.clone(), EmbeddingSource::Given)),
                }
            }
            _ => None,
        };
        embeddings.push(resolved);
    }
    let operations = body.operations;
    let preconditions = body.preconditions;
    let (results, info) = state
        .commit(body.durability, move |txn| {
            for p in &preconditions {
                check_precondition(txn, p)?;
            }
            operations
                .iter()
                .zip(&embeddings)
                .enumerate()
                .map(|(i, (op, embedding))| apply(txn, op, embedding.clone()).map_err(|e| at_operation(i, e)))
                .collect::<ApiResult<Vec<_>>>()
        })
        .await?;
    Ok(ApiJson(TransactionResult { lsn: info.lsn, results }))
}
