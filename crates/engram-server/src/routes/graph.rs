//! The knowledge graph: one endpoint per tool of the MCP reference memory server, with the same
//! names, input shapes and semantics, plus as-of reads and per-item history.

use super::check_batch;
use crate::auth::Caller;
use crate::dto::{EntityBody, GraphBody, HistoryBody, RelationBody};
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::state::{AppState, AsOf, ReadParams, WriteParams};
use axum::extract::State;
use engram_core::{Entity, GraphReads, Lsn, Relation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEntitiesBody {
    pub entities: Vec<EntityBody>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CreatedEntities {
    /// The entities created (names that existed already are skipped).
    pub created: Vec<EntityBody>,
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelationsBody {
    pub relations: Vec<RelationBody>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CreatedRelations {
    /// The relations created (triples that existed already are skipped).
    pub created: Vec<RelationBody>,
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObservationAddition {
    pub entity_name: String,
    pub contents: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddObservationsBody {
    pub observations: Vec<ObservationAddition>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddedObservationsBody {
    pub entity_name: String,
    pub added_observations: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AddObservationsResult {
    pub results: Vec<AddedObservationsBody>,
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteEntitiesBody {
    pub entity_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObservationDeletion {
    pub entity_name: String,
    pub observations: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteObservationsBody {
    pub deletions: Vec<ObservationDeletion>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchNodesBody {
    pub query: String,
    /// An LSN (digits) or RFC 3339 time.
    pub as_of: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenNodesBody {
    pub names: Vec<String>,
    pub as_of: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct GraphWriteResult {
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntityHistoryParams {
    pub name: String,
    pub as_of: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct RelationHistoryParams {
    pub from: String,
    pub to: String,
    pub relation_type: String,
    pub as_of: Option<String>,
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/create_entities", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = CreateEntitiesBody,
    responses((status = 200, body = CreatedEntities), (status = 400, body = ErrorBody)))]
pub async fn create_entities(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<CreateEntitiesBody>,
) -> ApiResult<ApiJson<CreatedEntities>> {
    caller.write(&ns)?;
    check_batch(&state.config.limits, "entities", body.entities.len())?;
    let entities: Vec<Entity> = body.entities.into_iter().map(Into::into).collect();
    let (created, info) = state
        .commit(write.durability, move |txn| Ok(txn.create_entities(&ns, &entities)?))
        .await?;
    Ok(ApiJson(CreatedEntities {
        created: created.into_iter().map(Into::into).collect(),
        lsn: info.lsn,
    }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/create_relations", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = RelationsBody,
    responses((status = 200, body = CreatedRelations), (status = 400, body = ErrorBody)))]
pub async fn create_relations(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<RelationsBody>,
) -> ApiResult<ApiJson<CreatedRelations>> {
    caller.write(&ns)?;
    check_batch(&state.config.limits, "relations", body.relations.len())?;
    let relations: Vec<Relation> = body.relations.into_iter().map(Into::into).collect();
    let (created, info) = state
        .commit(write.durability, move |txn| Ok(txn.create_relations(&ns, &relations)?))
        .await?;
    Ok(ApiJson(CreatedRelations {
        created: created.into_iter().map(Into::into).collect(),
        lsn: info.lsn,
    }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/add_observations", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = AddObservationsBody,
    responses((status = 200, body = AddObservationsResult), (status = 404, body = ErrorBody, description = "an entity is missing: nothing changed")))]
pub async fn add_observations(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<AddObservationsBody>,
) -> ApiResult<ApiJson<AddObservationsResult>> {
    caller.write(&ns)?;
    check_batch(&state.config.limits, "observation groups", body.observations.len())?;
    let additions: Vec<(String, Vec<String>)> = body.observations.into_iter().map(|o| (o.entity_name, o.contents)).collect();
    let (results, info) = state
        .commit(write.durability, move |txn| Ok(txn.add_observations(&ns, &additions)?))
        .await?;
    Ok(ApiJson(AddObservationsResult {
        results: results
            .into_iter()
            .map(|r| AddedObservationsBody {
                entity_name: r.entity_name,
                added_observations: r.added_observations,
            })
            .collect(),
        lsn: info.lsn,
    }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/delete_entities", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = DeleteEntitiesBody,
    responses((status = 200, body = GraphWriteResult), (status = 400, body = ErrorBody)))]
pub async fn delete_entities(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<DeleteEntitiesBody>,
) -> ApiResult<ApiJson<GraphWriteResult>> {
    caller.write(&ns)?;
    check_batch(&state.config.limits, "entity names", body.entity_names.len())?;
    let names = body.entity_names;
    let (_, info) = state
        .commit(write.durability, move |txn| Ok(txn.delete_entities(&ns, &names)?))
        .await?;
    Ok(ApiJson(GraphWriteResult { lsn: info.lsn }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/delete_observations", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = DeleteObservationsBody,
    responses((status = 200, body = GraphWriteResult), (status = 400, body = ErrorBody)))]
pub async fn delete_observations(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<DeleteObservationsBody>,
) -> ApiResult<ApiJson<GraphWriteResult>> {
    caller.write(&ns)?;
    check_batch(&state.config.limits, "observation groups", body.deletions.len())?;
    let deletions: Vec<(String, Vec<String>)> = body.deletions.into_iter().map(|d| (d.entity_name, d.observations)).collect();
    let (_, info) = state
        .commit(write.durability, move |txn| Ok(txn.delete_observations(&ns, &deletions)?))
        .await?;
    Ok(ApiJson(GraphWriteResult { lsn: info.lsn }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/delete_relations", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = RelationsBody,
    responses((status = 200, body = GraphWriteResult), (status = 400, body = ErrorBody)))]
pub async fn delete_relations(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<RelationsBody>,
) -> ApiResult<ApiJson<GraphWriteResult>> {
    caller.write(&ns)?;
    check_batch(&state.config.limits, "relations", body.relations.len())?;
    let relations: Vec<Relation> = body.relations.into_iter().map(Into::into).collect();
    let (_, info) = state
        .commit(write.durability, move |txn| Ok(txn.delete_relations(&ns, &relations)?))
        .await?;
    Ok(ApiJson(GraphWriteResult { lsn: info.lsn }))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/graph/read_graph", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), ReadParams),
    responses((status = 200, body = GraphBody), (status = 410, body = ErrorBody)))]
pub async fn read_graph(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult<ApiJson<GraphBody>> {
    caller.read(&ns)?;
    let as_of = params.as_of()?;
    state.read(as_of, move |s| Ok(ApiJson(s.read_graph(&ns)?.into()))).await
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/search_nodes", tag = "graph",
    params(("ns" = String, Path, description = "Namespace")), request_body = SearchNodesBody,
    responses((status = 200, body = GraphBody), (status = 400, body = ErrorBody)))]
pub async fn search_nodes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiJson(body): ApiJson<SearchNodesBody>,
) -> ApiResult<ApiJson<GraphBody>> {
    caller.read(&ns)?;
    let as_of = AsOf::parse_opt(body.as_of.as_deref())?;
    let query = body.query;
    state.read(as_of, move |s| Ok(ApiJson(s.search_nodes(&ns, &query)?.into()))).await
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/open_nodes", tag = "graph",
    params(("ns" = String, Path, description = "Namespace")), request_body = OpenNodesBody,
    responses((status = 200, body = GraphBody), (status = 400, body = ErrorBody)))]
pub async fn open_nodes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiJson(body): ApiJson<OpenNodesBody>,
) -> ApiResult<ApiJson<GraphBody>> {
    caller.read(&ns)?;
    check_batch(&state.config.limits, "names", body.names.len())?;
    let as_of = AsOf::parse_opt(body.as_of.as_deref())?;
    let names = body.names;
    state.read(as_of, move |s| Ok(ApiJson(s.open_nodes(&ns, &names)?.into()))).await
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/graph/entity_history", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), EntityHistoryParams),
    responses((status = 200, body = HistoryBody), (status = 400, body = ErrorBody)))]
pub async fn entity_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(params): ApiQuery<EntityHistoryParams>,
) -> ApiResult<ApiJson<HistoryBody>> {
    caller.read(&ns)?;
    let as_of = AsOf::parse_opt(params.as_of.as_deref())?;
    let name = params.name;
    state
        .read(as_of, move |s| {
            Ok(ApiJson(HistoryBody::from_versions(s.entity_history(&ns, &name)?)))
        })
        .await
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/graph/relation_history", tag = "graph",
    params(("ns" = String, Path, description = "Namespace"), RelationHistoryParams),
    responses((status = 200, body = HistoryBody), (status = 400, body = ErrorBody)))]
pub async fn relation_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(params): ApiQuery<RelationHistoryParams>,
) -> ApiResult<ApiJson<HistoryBody>> {
    caller.read(&ns)?;
    let as_of = AsOf::parse_opt(params.as_of.as_deref())?;
    let relation = Relation {
        from: params.from,
        to: params.to,
        relation_type: params.relation_type,
    };
    state
        .read(as_of, move |s| {
            Ok(ApiJson(HistoryBody::from_versions(s.relation_history(&ns, &relation)?)))
        })
        .await
}
